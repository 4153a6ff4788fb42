"""The reference hub's media endpoint ``GET /v1/media/{session}/{camera}`` (docs/protocol.md §8.1).

Hub code first says what it waits for (:meth:`MediaHub.expect`, before it sends the request: the box
connects right after its decision); anything else is refused 404 ``no_such_session`` before the upgrade, as is
an expectation that saw no connection within ``expect_s``. The client certificate is checked as on the control
channel (401 ``no_client_cert``, 403 ``not_enrolled``).

On the connection: the session header (strict JSON, every field checked against the URL, the expected request
and the certificate), the stream key unwrapped with the viewer's private key (held in this process only), then
each sealed frame opened in order (:class:`edge.uplink.media.FrameOpener`) and its payload appended to
``<hub data>/sessions/<session>/<camera>/video.mp4`` — the fMP4 stream as sent, playable as is. Any
:class:`MediaError` closes the connection (1008) and fails the stream with its kind; what was received stays.
Each stream's outcome goes to ``end.json`` next to the video, and to the :attr:`CameraStream.ended` future.

Live viewers (:meth:`CameraStream.subscribe`) get the decrypted pieces through a small bounded queue: a viewer
that falls behind is dropped (:class:`ViewerDropped`), never the box's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge import jws, keyfiles
from edge.errors import Error
from edge.fsutil import makedirs_durable
from edge.hub.peer import enrolled_device, refuse
from edge.hub.state import HubState
from edge.uplink import controlwire as wire
from edge.uplink import media

log = logging.getLogger(__name__)

PATH: Final = "/v1/media/{session}/{camera}"
SESSIONS_DIR: Final = "sessions"
VIDEO_FILE: Final = "video.mp4"
HEADER_FILE: Final = "header.json"
SEALED_FILE: Final = "sealed.bin"  # keep_sealed: what a relay sees (header text, then the frames as sent)
END_FILE: Final = "end.json"
EXPECT_S: Final = 60.0  # an expectation with no connection by then is dropped (404 afterwards)
HEADER_TIMEOUT_S: Final = 10.0
IDLE_TIMEOUT_S: Final = 30.0  # nothing from the box for this long: the stream is over (truncated)
LIVE_QUEUE: Final = 64  # pieces a live viewer may lag behind before it is dropped
TRANSPORT_MAX_BYTES: Final = media.HEADER_BYTES + media.MAX_PAYLOAD_BYTES + media.TAG_BYTES
MODES: Final = frozenset({"live", "recorded", "share"})
SHARE_WAIT_S: Final = 24 * 3600.0  # how long a notice's viewer key waits for the owner's answer (edge share)
MAX_CAMERA_DIGITS: Final = 10

WAITING, CONNECTED, ENDED = "waiting", "connected", "ended"


class ViewerDropped(Error):
    """A live viewer fell more than its queue behind and was dropped; the box's stream went on."""

    kind = "viewer_dropped"


class _Failed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True)
class EndRecord:
    """How one camera's stream ended (also ``end.json``).

    ``reason``: the box's ``end`` reason when the stream was complete; else ``truncated`` (no final frame),
    ``failed: <kind>`` (a :class:`MediaError` kind, ``bad_header`` or ``no_header``), ``hub_closed``
    (:meth:`MediaHub.stop`), ``expired`` (never connected), ``cancelled`` (the request was refused or got no
    decision), ``hub_stopping``, or ``no_end_message`` (final frame, then closed without ``end``).
    ``frames``/``bytes`` count what was opened here (init, fragments and the final frame; payload bytes);
    ``box_end`` is the box's ``end`` message as sent, if one came.
    """

    reason: str
    frames: int
    bytes: int
    complete: bool
    failed: str | None
    box_end: dict[str, Any] | None
    start_ms: int | None
    first_frame_mono_ns: int | None
    video: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Viewer:
    """One live viewer's bounded queue of decrypted pieces (init segment first, then fragments); an async
    iterator. Ends when the stream ends; raises :class:`ViewerDropped` if it fell too far behind."""

    def __init__(self, stream: CameraStream, max_queued: int) -> None:
        self._stream = stream
        self._items: deque[bytes] = deque()
        self._max = max_queued
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = False

    def push(self, piece: bytes) -> None:
        """Called on the loop by the stream; never waits."""
        if self._closed:
            return
        if len(self._items) >= self._max:
            self.dropped = True
            self._items.clear()
            self.close()
            return
        self._items.append(piece)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._stream.unsubscribe(self)

    def __aiter__(self) -> Viewer:
        return self

    async def __anext__(self) -> bytes:
        while not self._items:
            if self.dropped:
                raise ViewerDropped(
                    f"a live viewer of camera {self._stream.camera} fell behind and was dropped"
                )
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()


class CameraStream:
    """One camera's stream of an expected session. Its events are for hub code: :attr:`connected`,
    :attr:`first_fragment` (the monotonic ns when the first fragment was opened; None if the stream ended
    without one) and :attr:`ended` (the :class:`EndRecord`)."""

    def __init__(self, expected: Expected, camera: int) -> None:
        loop = asyncio.get_running_loop()
        self.expected = expected
        self.camera = camera
        self.directory = expected.directory / str(camera)
        self.state = WAITING
        self.connected = asyncio.Event()
        self.first_fragment: asyncio.Future[int | None] = loop.create_future()
        self.ended: asyncio.Future[EndRecord] = loop.create_future()
        self.dropped_viewers = 0
        self._viewers: set[Viewer] = set()
        self._init: bytes | None = None
        # Set by stop()/close_all(): the receiving task closes the connection itself, because aiohttp's
        # close() from another task cuts the TCP connection without waiting for the box's close frame.
        self._stop_requested: tuple[int, str] | None = None
        self._stop = asyncio.Event()

    @property
    def video_path(self) -> Path:
        return self.directory / VIDEO_FILE

    def subscribe(self, *, max_queued: int = LIVE_QUEUE) -> Viewer:
        """A live viewer from now on; it gets the init segment first if it already came."""
        viewer = Viewer(self, max_queued)
        if self.state == ENDED:
            viewer.close()
            return viewer
        self._viewers.add(viewer)
        if self._init is not None:
            viewer.push(self._init)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        if viewer in self._viewers:
            self._viewers.discard(viewer)
            if viewer.dropped:
                self.dropped_viewers += 1
                log.info("media: a slow live viewer of camera %d was dropped", self.camera)

    def _request_stop(self, code: int, reason: str) -> None:
        if self._stop_requested is None:
            self._stop_requested = (code, reason)
            self._stop.set()

    def _publish(self, piece: bytes, *, init: bool) -> None:
        if init:
            self._init = piece
        for viewer in list(self._viewers):
            viewer.push(piece)

    def _end(self, record: EndRecord) -> None:
        self.state = ENDED
        if not self.first_fragment.done():
            self.first_fragment.set_result(None)
        if not self.ended.done():
            self.ended.set_result(record)
        for viewer in list(self._viewers):
            viewer.close()


class Expected:
    """A session the hub waits for: one :class:`CameraStream` per camera, in request order. The viewer's
    private key lives here, in memory only, until every stream has ended."""

    def __init__(
        self,
        root: Path,
        *,
        device_id: str,
        jti: str,
        cameras: Iterable[int],
        viewer_private: X25519PrivateKey,
        meta: Mapping[str, Any],
    ) -> None:
        self.device_id = device_id
        self.jti = jti
        self.session = media.session_handle(jti)
        self.directory = root / self.session
        self.meta = dict(meta)
        self.viewer_private: X25519PrivateKey | None = viewer_private
        self.streams: dict[int, CameraStream] = {}
        for camera in cameras:
            self.streams[camera] = CameraStream(self, camera)
        self.timer: asyncio.TimerHandle | None = None

    async def wait_ended(self, timeout: float | None = None) -> dict[int, EndRecord]:
        """Every camera's end record, once all have ended."""
        records = await asyncio.wait_for(
            asyncio.gather(*(asyncio.shield(s.ended) for s in self.streams.values())), timeout
        )
        return dict(zip(self.streams, records, strict=True))


class MediaHub:
    """The sessions this hub expects, and the ``/v1/media/{session}/{camera}`` handler that receives them."""

    def __init__(
        self,
        state: HubState,
        *,
        expect_s: float = EXPECT_S,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        clock_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        keep_sealed: bool = False,
    ) -> None:
        self.state = state
        self.root = state.data_dir / SESSIONS_DIR
        self.expect_s = expect_s
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        # Also keep each stream exactly as it crossed the wire, as a relay between box and viewer would see it
        # (each record: u32 big-endian length, then the bytes; the first is the session header's text).
        self.keep_sealed = keep_sealed
        self._clock_ns = clock_ns
        self._mono_ns = mono_ns
        self._streams: dict[tuple[str, int], CameraStream] = {}
        self.refused = 0  # connections refused 404, for tests and status

    # --- what hub code calls (on the loop) -----------------------------------------------------------------

    def expect(
        self,
        device_id: str,
        jti: str,
        cameras: Iterable[int],
        viewer_private: X25519PrivateKey,
        meta: Mapping[str, Any],
    ) -> Expected:
        """Wait for ``device_id``'s streams of request ``jti``, one per camera. ``meta`` describes the request
        (a ``mode`` in it must match the header's). Expires after ``expect_s`` without a connection."""
        expected = Expected(
            self.root, device_id=device_id, jti=jti, cameras=cameras, viewer_private=viewer_private, meta=meta
        )
        if not expected.streams:
            raise Error("a session has at least one camera")
        if any((expected.session, c) in self._streams for c in expected.streams):
            raise Error(f"session {expected.session} is already expected")
        for camera, stream in expected.streams.items():
            self._streams[(expected.session, camera)] = stream
        expected.timer = asyncio.get_running_loop().call_later(self.expect_s, self._expire, expected)
        return expected

    def await_share(self, expected: Expected, wait_s: float = SHARE_WAIT_S) -> None:
        """The box refused the request ``not_integrated``: its owner may still answer with a clip they choose
        (mode ``share``, docs/protocol.md §8.1). Keep the viewer key and wait that long for it."""
        expected.meta["mode"] = "share"
        if expected.timer is not None:
            expected.timer.cancel()
        expected.timer = asyncio.get_running_loop().call_later(wait_s, self._expire, expected)

    def cancel(self, expected: Expected, reason: str = "cancelled") -> None:
        """Stop waiting for the streams not connected yet (a refused request, or no decision)."""
        for stream in expected.streams.values():
            if stream.state == WAITING:
                self._finish(stream, _record(reason, video=None))

    def stream(self, session: str, camera: int) -> CameraStream | None:
        return self._streams.get((session, camera))

    async def stop(self, session: str, camera: int) -> bool:
        """Close a connected stream with 1000 (the viewer is done) and return once it has ended (the box's
        close frame came, or aiohttp's close timeout); the box ends its session. False if not connected."""
        stream = self._streams.get((session, camera))
        if stream is None or stream.state != CONNECTED:
            return False
        stream._request_stop(wire.CLOSE_NORMAL, "hub_closed")
        await asyncio.shield(stream.ended)
        return True

    async def close_all(self) -> None:
        """At shutdown: close connected streams (1001) and drop the expectations."""
        connected = []
        for stream in list(self._streams.values()):
            if stream.state == CONNECTED:
                stream._request_stop(wire.CLOSE_GOING_AWAY, "hub_stopping")
                connected.append(stream.ended)
            elif stream.state == WAITING:
                self._finish(stream, _record("hub_stopping", video=None))
        if connected:
            await asyncio.wait(connected, timeout=HEADER_TIMEOUT_S)

    def _expire(self, expected: Expected) -> None:
        expected.timer = None
        for stream in expected.streams.values():
            if stream.state == WAITING:
                log.info("media: session %s camera %d expired unconnected", expected.session, stream.camera)
                self._finish(stream, _record("expired", video=None))

    def _finish(self, stream: CameraStream, record: EndRecord) -> None:
        self._streams.pop((stream.expected.session, stream.camera), None)
        stream._end(record)
        expected = stream.expected
        if all(s.state == ENDED for s in expected.streams.values()):
            expected.viewer_private = None  # the key goes with the last stream
            if expected.timer is not None:
                expected.timer.cancel()
                expected.timer = None

    # --- the endpoint --------------------------------------------------------------------------------------

    async def handler(self, request: web.Request) -> web.StreamResponse:
        device = await enrolled_device(request, self.state)
        if isinstance(device, web.Response):
            return device
        session, camera_text = request.match_info["session"], request.match_info["camera"]
        camera = _camera_id(camera_text)
        stream = self._streams.get((session, camera)) if camera is not None else None
        if stream is None or stream.state != WAITING or stream.expected.device_id != device.device_id:
            self.refused += 1
            return refuse(
                404, "no_such_session", "this hub is not waiting for that session and camera from this device"
            )
        stream.state = CONNECTED  # before any await: a second connection for the same stream gets 404
        ws = web.WebSocketResponse(max_msg_size=TRANSPORT_MAX_BYTES, autoping=True)
        record = _record("failed: connection", video=None)
        try:
            await ws.prepare(request)
            stream.connected.set()
            log.info("media: %s connected session %s camera %d", device.device_id, session, stream.camera)
            record = await _Receiver(self, stream, ws).run()
        finally:
            self._finish(stream, record)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        log.info(
            "media: session %s camera %d ended: %s (%d frames, %d bytes)",
            session, stream.camera, record.reason, record.frames, record.bytes,
        )  # fmt: skip
        return ws


class _Receiver:
    """One connection: header, key, frames, end; writes the video and the end record."""

    def __init__(self, hub: MediaHub, stream: CameraStream, ws: web.WebSocketResponse) -> None:
        self.hub, self.stream, self.ws = hub, stream, ws
        self.frames = 0
        self.bytes = 0
        self.start_ms: int | None = None
        self.first_ns: int | None = None
        self.box_end: dict[str, Any] | None = None
        self.file: IO[bytes] | None = None
        self.sealed: IO[bytes] | None = None

    async def run(self) -> EndRecord:
        stream = self.stream
        failed: str | None = None
        complete = False
        try:
            await asyncio.to_thread(makedirs_durable, stream.directory, mode=0o700)
            opener = await self._open_header()
            try:
                await self._frames(opener)
            finally:
                complete = opener.done
            if stream._stop_requested is None:
                opener.finish()
        except media.MediaError as e:
            failed = e.kind
            log.warning("media: session %s camera %d: %s", stream.expected.session, stream.camera, e.message)
        except _Failed as e:
            failed = e.kind
            log.warning("media: session %s camera %d: %s", stream.expected.session, stream.camera, e)
        except OSError as e:
            failed = "storage"
            log.error("media: cannot write %s: %s", stream.directory, e.strerror)
        finally:
            await self._close_file()
        stop = stream._stop_requested
        if stop is not None:
            with contextlib.suppress(Exception):
                await self.ws.close(code=stop[0], message=b"the viewer is done")
        elif failed is not None and failed != "truncated":
            with contextlib.suppress(Exception):
                await self.ws.close(code=wire.CLOSE_POLICY, message=failed.encode())
        if stop is not None:
            reason = stop[1]
        elif failed == "truncated":
            reason = "truncated"
        elif failed is not None:
            reason = f"failed: {failed}"
        elif self.box_end is not None:
            reason = str(self.box_end["reason"])
        else:
            reason = "no_end_message"
        record = EndRecord(
            reason=reason,
            frames=self.frames,
            bytes=self.bytes,
            complete=complete,
            failed=None if failed in (None, "truncated") else failed,
            box_end=self.box_end,
            start_ms=self.start_ms,
            first_frame_mono_ns=self.first_ns,
            video=str(stream.video_path) if self.frames else None,
        )
        await _write_json(stream.directory / END_FILE, record.as_json())
        return record

    async def _open_header(self) -> media.FrameOpener:
        stream, expected = self.stream, self.stream.expected
        try:
            msg = await self.ws.receive(timeout=self.hub.header_timeout_s)
        except TimeoutError:
            raise _Failed("no_header", f"no session header in {self.hub.header_timeout_s:g} s") from None
        if msg.type != WSMsgType.TEXT:
            raise _Failed("no_header", "the connection did not start with the session header")
        try:
            header = wire.decode(msg.data, frozenset({"media"}))
            wrapped, self.start_ms = _check_header(header, stream)
        except wire.WireError as e:
            raise _Failed("bad_header", e.message) from None
        viewer = expected.viewer_private
        if viewer is None:  # cannot happen while a stream is connected; keeps the types honest
            raise _Failed("key", "the viewer key is gone")
        key = media.unwrap_key(wrapped, viewer, device_id=expected.device_id, jti=expected.jti)
        opener = media.FrameOpener(key, media.stream_id(expected.jti, stream.camera))
        del key
        if self.hub.keep_sealed:
            self.sealed = await asyncio.to_thread(open, stream.directory / SEALED_FILE, "xb")
            await self._keep(msg.data.encode())
        saved = {k: v for k, v in header.items() if k != "wrapped_key"}
        saved["connected_utc_ns"] = self.hub._clock_ns()
        await _write_json(stream.directory / HEADER_FILE, saved)
        self.file = await asyncio.to_thread(open, stream.video_path, "xb")
        return opener

    async def _frames(self, opener: media.FrameOpener) -> None:
        stopping = asyncio.ensure_future(self.stream._stop.wait())
        try:
            await self._receive_frames(opener, stopping)
        finally:
            stopping.cancel()

    async def _receive_frames(self, opener: media.FrameOpener, stopping: asyncio.Future[Any]) -> None:
        stream = self.stream
        while True:
            receiving = asyncio.ensure_future(self.ws.receive(timeout=self.hub.idle_timeout_s))
            try:
                await asyncio.wait((receiving, stopping), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                receiving.cancel()
                raise
            if not receiving.done():  # stop requested: the caller closes the connection
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiving
                return
            try:
                msg = receiving.result()
            except TimeoutError:
                log.warning("media: camera %d sent nothing for %g s", stream.camera, self.hub.idle_timeout_s)
                return
            if msg.type == WSMsgType.BINARY:
                await self._keep(msg.data)
                seq = opener.seq
                payload = opener.open(msg.data)
                self.frames += 1
                self.bytes += len(payload)
                if seq == 1 and self.first_ns is None:
                    self.first_ns = self.hub._mono_ns()
                    if not stream.first_fragment.done():
                        stream.first_fragment.set_result(self.first_ns)
                if payload:
                    stream._publish(payload, init=seq == 0)
                    assert self.file is not None
                    await asyncio.to_thread(self.file.write, payload)
            elif msg.type == WSMsgType.TEXT:
                if self._take_end(msg.data):
                    return
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return

    def _take_end(self, text: str) -> bool:
        try:
            message = wire.decode(text, frozenset({"end"}))
            end = {
                "reason": wire.field(message, "reason", str, max_chars=64),
                "frames": wire.field(message, "frames", int),
                "bytes": wire.field(message, "bytes", int),
            }
        except wire.WireError as e:
            log.info("media: ignored from camera %d: %s", self.stream.camera, e.message)
            return False
        self.box_end = end
        if (end["frames"], end["bytes"]) != (self.frames, self.bytes):
            log.warning(
                "media: camera %d: the box says %d frames / %d bytes, %d / %d opened",
                self.stream.camera, end["frames"], end["bytes"], self.frames, self.bytes,
            )  # fmt: skip
        return True

    async def _keep(self, data: bytes) -> None:
        if self.sealed is not None:
            await asyncio.to_thread(self.sealed.write, len(data).to_bytes(4, "big") + data)

    async def _close_file(self) -> None:
        sealed, self.sealed = self.sealed, None
        if sealed is not None:
            await asyncio.to_thread(sealed.close)
        f, self.file = self.file, None
        if f is not None:

            def close() -> None:
                with f:
                    f.flush()
                    os.fsync(f.fileno())

            await asyncio.to_thread(close)


def _check_header(header: dict[str, Any], stream: CameraStream) -> tuple[bytes, int]:
    """The session header's fields against the URL, the expected request and the certificate (§8.1)."""
    expected = stream.expected
    if wire.field(header, "session", str) != expected.session:
        raise wire.WireError("media: session is not the URL's")
    camera = header.get("camera")
    if type(camera) is not int or camera != stream.camera:
        raise wire.WireError("media: camera is not the URL's")
    if wire.field(header, "jti", str) != expected.jti:
        raise wire.WireError("media: jti is not the request's")
    if wire.field(header, "device_id", str) != expected.device_id:
        raise wire.WireError("media: device_id is not the client certificate's")
    mode = wire.field(header, "mode", str)
    if mode not in MODES or mode != expected.meta.get("mode", mode):
        raise wire.WireError("media: mode is not the request's")
    wrapped = jws.b64url_decode(wire.field(header, "wrapped_key", str))
    if wrapped is None or len(wrapped) != media.WRAPPED_KEY_BYTES:
        raise wire.WireError(f"media: wrapped_key is not base64url of {media.WRAPPED_KEY_BYTES} bytes")
    start_ms: int = wire.field(header, "start_ms", int)
    return wrapped, start_ms


def _camera_id(text: str) -> int | None:
    """The URL's camera: decimal, canonical (no sign, no leading zero)."""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_CAMERA_DIGITS or str(int(text)) != text:
        return None
    return int(text)


def _record(reason: str, *, video: str | None) -> EndRecord:
    return EndRecord(
        reason=reason, frames=0, bytes=0, complete=False, failed=None, box_end=None, start_ms=None,
        first_frame_mono_ns=None, video=video,
    )  # fmt: skip


async def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    data = wire.encode(dict(value)).encode()
    await asyncio.to_thread(keyfiles.write_atomically, path, data + b"\n", keyfiles.PUBLIC_MODE)
