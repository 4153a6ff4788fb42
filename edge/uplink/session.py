"""One camera's media stream to the hub for an accepted request (docs/protocol.md §8, §8.1).

The box opens ``wss://<hub>/v1/media/<session>/<camera>`` (its own connection: outbound only), sends the
session header with the stream key wrapped to the request's viewer key, then the fMP4 pieces as sealed frames,
the final frame, and an ``end`` message. Where the pieces come from is a :class:`PieceSource`:
:class:`LiveSource` (the camera's fan-out, starting from its GOP cache) or :class:`RecordedSource` (the range,
cut as `edge export` cuts it and muxed straight into fragments on a worker thread).

A stream ends at the first of: the source is done (``complete``) or silent (``camera_lost``), ``max_dur``
elapsed, the owner's stop (:meth:`MediaStream.stop` with ``killswitch`` or ``withdrawn``), the hub closing
(``hub_closed``), or a failure (``error``). Every one of them is noticed within a second: the pump only ever
waits on the source, and that wait is cancelled. A sealed frame is always sent whole before the final one, so
the viewer never sees a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
import av
import av.error
import yarl

from edge import jws
from edge.clock import NS_PER_MS, Clock
from edge.errors import Error, NotFound
from edge.recorder.export import stream_clip
from edge.recorder.fanout import Fanout, MediaPacket, Subscription
from edge.recorder.fmp4out import Fmp4Writer
from edge.store import Store
from edge.uplink import controlwire as wire
from edge.uplink import media
from edge.uplink.claims import AccessRequest

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final = 10.0
REASONS: Final = (
    "complete",
    "max_dur",
    "killswitch",
    "withdrawn",
    "camera_lost",
    "hub_closed",
    "box_stopping",
    "error",
)
_DONE: Final = object()


class SessionError(Error):
    kind = "session"


def media_url(hub_url: str, session: str, camera_id: int) -> str:
    """``https://host:port`` (the pinned hub URL) → ``wss://host:port/v1/media/<session>/<camera>``."""
    url = yarl.URL(hub_url)
    if url.scheme != "https" or not url.host:
        raise SessionError(f"the hub URL must be https://, not {hub_url!r}")
    return str(url.with_scheme("wss").with_path(f"/v1/media/{session}/{camera_id}").with_query(None))


class PieceSource(Protocol):
    async def open(self) -> int:
        """Get ready; the wall time (Unix ms) of the stream's first video frame."""
        ...

    async def next(self) -> bytes | None:
        """The next fMP4 piece (init segment first); None when the source is complete. Raises
        :class:`SessionError` (``camera_lost``) when it went silent or away."""
        ...

    def close(self) -> None: ...


class LiveSource:
    """The camera as it is now: the cached GOP first (so the first fragment decodes at once), then live."""

    def __init__(self, fanout: Fanout, clock: Clock, *, idle_s: float) -> None:
        self._fanout = fanout
        self._clock = clock
        self._idle_s = idle_s
        self._sub: Subscription | None = None
        self._writer: Fmp4Writer | None = None
        self._pieces: list[bytes] = []
        self.first_mono_ns = 0

    async def open(self) -> int:
        sub = self._sub = self._fanout.subscribe()
        if sub.description is None:
            raise SessionError("the camera is not connected", kind="camera_lost")
        self._writer = Fmp4Writer(sub.description.video, sub.description.audio, every_frame=True)
        while True:  # the cache starts at a keyframe; without one, wait for the next
            pkt = await self._packet()
            if pkt.kind == "video" and pkt.keyframe:
                break
        self.first_mono_ns = pkt.received_mono_ns
        self._push(pkt)
        age_ns = self._clock.monotonic_ns() - pkt.received_mono_ns
        return (self._clock.now_utc_ns() - age_ns) // NS_PER_MS

    async def _packet(self) -> MediaPacket:
        assert self._sub is not None
        try:
            pkt = await self._sub.next(self._idle_s)
        except TimeoutError:
            raise SessionError(
                f"the camera sent nothing for {self._idle_s:g} s", kind="camera_lost"
            ) from None
        if pkt is None:
            raise SessionError(f"the camera stream ended: {self._sub.closed_reason}", kind="camera_lost")
        return pkt

    def _push(self, pkt: MediaPacket) -> None:
        assert self._writer is not None
        self._writer.push(pkt)
        self._pieces += self._writer.take()

    async def next(self) -> bytes | None:
        while not self._pieces:
            self._push(await self._packet())
        return self._pieces.pop(0)

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
        if self._writer is not None:
            with contextlib.suppress(Error):
                self._writer.close()


class RecordedSource:
    """A recorded range, cut as `edge export` cuts it (keyframe at or before ``from``, the open segment up to
    its indexed bytes) and muxed straight into fragments (:func:`edge.recorder.export.stream_clip`) on a
    worker thread, a few pieces ahead of the network: no temporary file on the box's disk."""

    def __init__(self, data_dir: Path, *, camera_id: int, from_utc_ns: int, to_utc_ns: int) -> None:
        self._data_dir = data_dir
        self._camera_id = camera_id
        self._from, self._to = from_utc_ns, to_utc_ns
        self._queue: queue.Queue[object] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def open(self) -> int:
        self._thread = threading.Thread(target=self._produce, name=f"uplink-{self._camera_id}", daemon=True)
        self._thread.start()
        first = await asyncio.to_thread(self._queue.get)  # the clip's start, or why there is none
        if isinstance(first, SessionError):
            raise first
        assert isinstance(first, _Start)
        return first.utc_ns // NS_PER_MS

    def _produce(self) -> None:
        store = Store.open(self._data_dir)  # a Store belongs to one thread: this one has its own
        try:
            stream_clip(
                store, self._data_dir, camera_id=self._camera_id, from_utc_ns=self._from, to_utc_ns=self._to,
                on_start=self._started, on_piece=self._put,
            )  # fmt: skip
            self._put(_DONE)
        except NotFound as e:
            self._put(SessionError(e.message, kind="camera_lost"))
        except (Error, av.error.FFmpegError, OSError) as e:
            self._put(SessionError(f"reading the recording failed: {e}", kind="error"))
        finally:
            store.close()

    def _started(self, clip_start_utc_ns: int) -> None:
        self._put(_Start(clip_start_utc_ns))

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.2)
                return True
        return False

    async def next(self) -> bytes | None:
        item = await asyncio.to_thread(self._queue.get)
        if item is _DONE:
            return None
        if isinstance(item, SessionError):
            raise item
        assert isinstance(item, bytes)
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class _Start:
    utc_ns: int


@dataclass(frozen=True)
class StreamResult:
    camera_id: int
    reason: str
    detail: str
    frames: int
    bytes: int
    duration_s: float
    start_ms: int | None


class _RateCap:
    """Token bucket: at most ``bytes_per_s`` on average, never more than one second's worth at once; it
    starts empty, so even a short range keeps to the cap."""

    def __init__(self, bytes_per_s: float | None) -> None:
        self.rate = bytes_per_s
        self._allowance = 0.0
        self._last = time.monotonic()

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
        self._last = now
        self._allowance -= n
        if self._allowance < 0:
            await asyncio.sleep(-self._allowance / self.rate)


class MediaStream:
    """One camera's stream for one accepted request. ``await run()``; ``stop(reason)`` from anywhere on the
    loop ends it within a second."""

    def __init__(
        self,
        request: AccessRequest,
        camera_id: int,
        source: PieceSource,
        *,
        hub_url: str,
        ssl_context: ssl.SSLContext,
        device_id: str,
        session: aiohttp.ClientSession,
        rate_bytes_per_s: float | None = None,
        on_started: Callable[[MediaStream, int], Any] | None = None,
        mode: str | None = None,
    ) -> None:
        """``mode``: the header's, by default the request's (``share``: the owner's answer to a notice)."""
        self.request = request
        self.mode = mode or request.scope.mode
        self.camera_id = camera_id
        self.source = source
        self.url = media_url(hub_url, media.session_handle(request.jti), camera_id)
        self._ssl = ssl_context
        self._device_id = device_id
        self._http = session
        self._rate = _RateCap(rate_bytes_per_s)
        self._on_started = on_started
        self._stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._lock = asyncio.Lock()
        self._sealer: media.FrameSealer | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.frames = 0
        self.bytes = 0
        self.started_mono: float | None = None

    def stop(self, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(reason)
        if not self._stop.done():
            self._stop.set_result(reason)

    async def run(self) -> StreamResult:
        t0 = time.monotonic()
        reason, detail, start_ms = "error", "", None
        key = bytearray(media.new_session_key())
        try:
            try:
                start_ms = await self._race(self.source.open(), deadline=t0 + self.request.max_dur)
                if isinstance(start_ms, str):
                    reason = start_ms
                else:
                    reason, detail = await self._stream(key, start_ms, t0)
            except SessionError as e:
                reason, detail = (e.kind if e.kind in REASONS else "error"), e.message
            except (aiohttp.ClientError, OSError, TimeoutError, media.MediaError, Error) as e:
                # A send that fails because the hub closed meanwhile is the hub's close, not a fault.
                hub_gone = self._ws is not None and self._ws.closed and not isinstance(e, media.MediaError)
                reason, detail = ("hub_closed", "") if hub_gone else ("error", _describe(e))
            await self._finish(reason)
        finally:
            self.source.close()
            key[:] = bytes(len(key))  # the sealer's copy goes with it; nothing keeps the key after this
            self._sealer = None
        duration = time.monotonic() - (self.started_mono or t0)
        return StreamResult(self.camera_id, reason, detail, self.frames, self.bytes, duration, start_ms)

    async def _race(self, coro: Any, *, deadline: float) -> Any:
        """``coro``'s result, or the stop reason (a str) if the owner stops it or the deadline comes first."""
        task = asyncio.ensure_future(coro)
        waits: set[asyncio.Future[Any]] = {task, self._stop}
        try:
            remaining = max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            return self._stop.result() if self._stop.done() else "max_dur"
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _stream(self, key: bytearray, start_ms: int, t0: float) -> tuple[str, str]:
        jti = self.request.jti
        wrapped = media.wrap_key(bytes(key), self.request.viewer_key, device_id=self._device_id, jti=jti)
        self._sealer = media.FrameSealer(bytes(key), media.stream_id(jti, self.camera_id))
        self._ws = await self._http.ws_connect(
            self.url, ssl=self._ssl, max_msg_size=wire.TRANSPORT_MAX_BYTES, autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
        )  # fmt: skip
        header = {
            "type": "media", "session": media.session_handle(jti), "jti": jti, "device_id": self._device_id,
            "camera": self.camera_id, "mode": self.mode,
            "wrapped_key": jws.b64url_encode(wrapped), "start_ms": start_ms,
        }  # fmt: skip
        await self._ws.send_str(wire.encode(header))
        self.started_mono = time.monotonic()
        if self._on_started is not None:
            self._on_started(self, start_ms)
        hub_closed = asyncio.ensure_future(self._watch_hub(self._ws))
        pump = asyncio.ensure_future(self._pump())
        waits: set[asyncio.Future[Any]] = {pump, hub_closed, self._stop}
        try:
            remaining = max(0.0, t0 + self.request.max_dur - time.monotonic())
            done, _ = await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if pump in done:
                pump.result()  # raises SessionError (camera_lost/error)
                return "complete", ""
            if hub_closed in done:
                return "hub_closed", ""
            return (self._stop.result(), "") if self._stop.done() else ("max_dur", "")
        finally:
            for task in (pump, hub_closed):
                task.cancel()
            # Bounded: the session must end within a second whatever a task does with its cancellation; a
            # pump still running would fail at its next frame (the final frame closes the sealer).
            await asyncio.wait({pump, hub_closed}, timeout=0.5)

    async def _pump(self) -> None:
        while True:
            piece = await self.source.next()
            if piece is None:
                return
            await self._rate.take(len(piece))
            # Shielded: a frame sealed is a frame sent whole, so the final frame's seq follows it.
            await asyncio.shield(self._send(piece))

    async def _send(self, payload: bytes, *, final: bool = False) -> None:
        async with self._lock:
            ws, sealer = self._ws, self._sealer
            if ws is None or sealer is None or ws.closed:
                raise SessionError("the hub closed the media connection", kind="hub_closed")
            frame = sealer.seal(payload, final=final)
            await ws.send_bytes(frame)
            self.frames += 1
            self.bytes += len(payload)

    async def _watch_hub(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:  # the hub sends nothing the box needs; it ends when the hub closes
            if msg.type == aiohttp.WSMsgType.ERROR:
                return

    async def _finish(self, reason: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        try:
            async with asyncio.timeout(1.0):  # the session must be over within a second
                if reason != "hub_closed" and self._sealer is not None and not self._sealer.done:
                    await self._send(b"", final=True)
                    end = {"type": "end", "reason": reason, "frames": self.frames, "bytes": self.bytes}
                    await ws.send_str(wire.encode(end))
                await ws.close(code=wire.CLOSE_NORMAL, message=reason.encode())
        except (TimeoutError, aiohttp.ClientError, OSError, SessionError, media.MediaError) as e:
            log.info("media stream %d: closing uncleanly: %s", self.camera_id, _describe(e))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 0.2)


def _describe(e: BaseException) -> str:
    if isinstance(e, Error):
        return e.message
    return f"{type(e).__name__}: {str(e)[:200]}"
