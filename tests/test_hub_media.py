"""The reference hub's media endpoint (edge/hub/media.py, docs/protocol.md §8.1), real TLS 1.3 on 127.0.0.1.

The box's side is played here by hand — `media.wrap_key` and `FrameSealer` over a real aiohttp client
WebSocket with the really paired box's client certificate — on a small fMP4 made with PyAV (10 frames of
solid red, split into init segment and fragments by the recorder's FragmentTracker).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from edge import jws
from edge.hub import ca, server
from edge.hub.media import END_FILE, HEADER_FILE, EndRecord, Expected, MediaHub, ViewerDropped
from edge.hub.state import HubState
from edge.recorder.fmp4stream import FragmentComplete, FragmentTracker, InitComplete
from edge.uplink import media
from edge.uplink.enroll import make_csr, trust_context
from tests.hubworld import PairedBox, pair, server_context

# --- the sample and the world -------------------------------------------------------------------------------


class _Writer(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


def red_fmp4(frames: int = 10) -> list[bytes]:
    """An fMP4 of ``frames`` solid red 64x48 frames, 10 fps, a keyframe every 4: [init, fragment, ...]."""
    writer = _Writer()
    out = av.open(
        writer, "w", format="mp4", options={"movflags": "empty_moov+default_base_moof+frag_keyframe"}
    )
    video = out.add_stream("libx264", rate=10)
    assert isinstance(video, av.VideoStream)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    video.codec_context.options = {"g": "4", "sc_threshold": "0"}
    image = np.zeros((48, 64, 3), np.uint8)
    image[..., 0] = 220
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 10)
        for packet in video.encode(frame):
            out.mux(packet)
    for packet in video.encode():
        out.mux(packet)
    out.close()
    data = bytes(writer.data)
    pieces = []
    for event in FragmentTracker().feed(data):
        if isinstance(event, InitComplete):
            pieces.append(data[: event.end_offset])
        elif isinstance(event, FragmentComplete):
            pieces.append(data[event.start_offset : event.end_offset])
    assert len(pieces) == 4  # the mfra libav writes at close is left out, as a live sender would
    return pieces


def decoded_frames(path: Path) -> list[np.ndarray[Any, Any]]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@dataclass
class Hubworld:
    state: HubState
    box: PairedBox
    other: PairedBox  # a second enrolled box
    pieces: list[bytes]
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hubworld]:
    tmp = tmp_path_factory.mktemp("hubmedia")
    state = HubState.create(tmp / "hub", hub_id="met-hub-1", agency="Met", now_utc_ns=time.time_ns())

    async def setup() -> tuple[PairedBox, PairedBox]:
        hub = await server.start(state, host="127.0.0.1", port=0, ssl_context=server_context(state))
        try:
            return await pair(state, hub.url, tmp / "box"), await pair(state, hub.url, tmp / "other")
        finally:
            await hub.close()

    box, other = asyncio.run(setup())
    yield Hubworld(state, box, other, red_fmp4(), tmp)
    box.close()
    other.close()


class Run:
    """One running hub in the test's loop, with a MediaHub whose timeouts the test chose."""

    def __init__(self, w: Hubworld, hub: server.RunningHub) -> None:
        self.w, self.hub = w, hub
        self.media = hub.media
        self.viewer = X25519PrivateKey.generate()

    def expect(self, cameras: tuple[int, ...] = (1,), *, device: PairedBox | None = None) -> Expected:
        jti = jws.b64url_encode(os.urandom(16))
        device_id = (device or self.w.box).device_id
        return self.media.expect(device_id, jti, cameras, self.viewer, {"mode": "live"})

    def url(self, session: str, camera: int | str) -> str:
        return f"wss://127.0.0.1:{self.hub.port}/v1/media/{session}/{camera}"

    def header(
        self, e: Expected, camera: int = 1, *, key: bytes | None = None, **over: Any
    ) -> dict[str, Any]:
        viewer_pub = self.viewer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        wrapped = media.wrap_key(key or media.new_session_key(), viewer_pub, device_id=e.device_id, jti=e.jti)
        head: dict[str, Any] = {
            "type": "media", "session": e.session, "jti": e.jti, "device_id": e.device_id, "camera": camera,
            "mode": "live", "wrapped_key": jws.b64url_encode(wrapped), "start_ms": 1795253706123,
        }  # fmt: skip
        head.update(over)
        return head


def run(w: Hubworld, scenario: Callable[[Run], Awaitable[None]], **media_kw: Any) -> None:
    async def main() -> None:
        hub = await server.start(
            w.state,
            host="127.0.0.1",
            port=0,
            ssl_context=server_context(w.state),
            media=MediaHub(w.state, **media_kw),
        )
        try:
            await asyncio.wait_for(scenario(Run(w, hub)), 20)
        finally:
            await hub.close()

    asyncio.run(main())


class Sender:
    """The box's end of one media connection, by hand."""

    def __init__(self, r: Run, e: Expected, camera: int = 1, *, ctx: ssl.SSLContext | None = None) -> None:
        self.r, self.e, self.camera = r, e, camera
        self.ctx = ctx or r.w.box.ssl_context()
        self.key = media.new_session_key()
        self.sealer = media.FrameSealer(self.key, media.stream_id(e.jti, camera))
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> Sender:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.r.url(self.e.session, self.camera), ssl=self.ctx)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()

    async def header(self, **over: Any) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(self.r.header(self.e, self.camera, key=self.key, **over)))

    async def frame(self, payload: bytes, *, final: bool = False) -> bytes:
        assert self.ws is not None
        sealed = self.sealer.seal(payload, final=final)
        await self.ws.send_bytes(sealed)
        return sealed

    async def stream(self, pieces: list[bytes], *, end: bool = True) -> None:
        for piece in pieces:
            await self.frame(piece)
        if end:
            await self.frame(b"", final=True)
            assert self.ws is not None
            total = sum(map(len, pieces))
            await self.ws.send_str(json.dumps({"type": "end", "reason": "max_dur", "frames": len(pieces) + 1,
                                               "bytes": total}))  # fmt: skip

    async def closed(self) -> int | None:
        """Wait for the hub to close; its close code."""
        assert self.ws is not None
        msg = await asyncio.wait_for(self.ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE, msg
        assert self.ws.close_code == msg.data  # the close handshake completed
        return self.ws.close_code


async def refused(r: Run, url: str, ctx: ssl.SSLContext) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            async with s.ws_connect(url, ssl=ctx):
                pass
        async with s.get(url.replace("wss://", "https://"), ssl=ctx) as resp:
            body = await resp.json()
            assert resp.status == e.value.status
            return e.value.status, body["error"]


def end_json(e: Expected, camera: int = 1) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((e.directory / str(camera) / END_FILE).read_text())
    return data


# --- a whole stream -----------------------------------------------------------------------------------------


def test_a_whole_stream_is_saved_playable_and_fed_to_live_viewers(world: Hubworld) -> None:
    async def scenario(r: Run) -> None:
        e = r.expect()
        stream = e.streams[1]
        viewer = stream.subscribe()
        slow = stream.subscribe(max_queued=2)  # never read: dropped, the stream goes on
        got: list[bytes] = []

        async def watch() -> None:
            async for piece in viewer:
                got.append(piece)

        watcher = asyncio.create_task(watch())
        async with Sender(r, e) as box:
            t0 = time.monotonic_ns()
            await box.header()
            await box.stream(world.pieces)
            assert await box.closed() == 1000
        record = await asyncio.wait_for(stream.ended, 5)
        await asyncio.wait_for(watcher, 5)
        assert stream.connected.is_set()
        first = stream.first_fragment.result()
        assert first is not None and t0 < first == record.first_frame_mono_ns

        n = len(world.pieces)
        assert record == EndRecord(
            reason="max_dur", frames=n + 1, bytes=sum(map(len, world.pieces)), complete=True, failed=None,
            box_end={"reason": "max_dur", "frames": n + 1, "bytes": sum(map(len, world.pieces))},
            start_ms=1795253706123, first_frame_mono_ns=first, video=str(stream.video_path),
        )  # fmt: skip
        assert stream.video_path.read_bytes() == b"".join(world.pieces)
        assert end_json(e) == record.as_json()
        header = json.loads((stream.directory / HEADER_FILE).read_text())
        assert "wrapped_key" not in header and header["jti"] == e.jti and header["camera"] == 1
        assert got == world.pieces
        with pytest.raises(ViewerDropped):
            async for _ in slow:
                pass
        assert stream.dropped_viewers == 1
        assert e.viewer_private is None  # wiped with the last stream
        # Finished: the same stream again is refused.
        assert await refused(r, r.url(e.session, 1), world.box.ssl_context()) == (404, "no_such_session")

    run(world, scenario)
    frames = decoded_frames(next((world.state.data_dir / "sessions").glob("*/1/video.mp4")))
    assert len(frames) == 10
    assert all(abs(int(f[..., 0].mean()) - 220) < 8 and f[..., 1].mean() < 20 for f in frames)


def test_two_cameras_of_one_session_and_a_late_viewer(world: Hubworld) -> None:
    async def scenario(r: Run) -> None:
        e = r.expect((4, 9))
        async with Sender(r, e, 4) as a, Sender(r, e, 9) as b:
            await a.header()
            await b.header()
            await a.stream(world.pieces[:2], end=False)
            await asyncio.wait_for(e.streams[4].first_fragment, 5)
            late = e.streams[4].subscribe()  # joins after the init segment: gets it first
            await a.stream(world.pieces[2:])
            await b.stream(world.pieces)
            records = await e.wait_ended(5)
            assert [late_piece async for late_piece in late] == world.pieces[:1] + world.pieces[2:]
        assert records[4].complete and records[9].complete
        for camera in (4, 9):
            assert e.streams[camera].video_path.read_bytes() == b"".join(world.pieces)

    run(world, scenario)


# --- who may connect ----------------------------------------------------------------------------------------


def test_refused_before_the_upgrade(world: Hubworld) -> None:
    async def scenario(r: Run) -> None:
        e = r.expect((1,))
        ctx = world.box.ssl_context()
        assert await refused(r, r.url("AAAAAAAAAAAAAAAAAAAAAA", 1), ctx) == (404, "no_such_session")
        assert await refused(r, r.url(e.session, 2), ctx) == (404, "no_such_session")  # another camera
        assert await refused(r, r.url(e.session, "01"), ctx) == (404, "no_such_session")  # not canonical
        assert await refused(r, r.url(e.session, "-1"), ctx) == (404, "no_such_session")
        # Another enrolled device's certificate.
        assert await refused(r, r.url(e.session, 1), world.other.ssl_context()) == (404, "no_such_session")
        # No client certificate.
        assert await refused(r, r.url(e.session, 1), trust_context(world.state.root_pem)) == (
            401, "no_client_cert",
        )  # fmt: skip
        # A certificate from the hub's own root, for a device that never enrolled.
        key = ec.generate_private_key(ec.SECP256R1())
        stranger = "edge-" + "0" * 32
        cert = ca.issue_client(
            world.state.root_key(), world.state.root, make_csr(key, stranger), device_id=stranger,
            now=datetime.now(UTC),
        )  # fmt: skip
        bad = trust_context(world.state.root_pem)
        (world.tmp / "c.pem").write_text(ca.pem(cert))
        (world.tmp / "k.pem").write_bytes(
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        bad.load_cert_chain(world.tmp / "c.pem", world.tmp / "k.pem")
        assert await refused(r, r.url(e.session, 1), bad) == (403, "not_enrolled")
        assert r.media.refused == 2 * 5  # each refused() tries twice; 401/403 never reach the media hub
        # Still waiting: the right device connects; a second connection to the same stream is refused.
        async with Sender(r, e) as box:
            await asyncio.wait_for(e.streams[1].connected.wait(), 5)
            assert await refused(r, r.url(e.session, 1), ctx) == (404, "no_such_session")
            await box.header()
            await box.stream(world.pieces)
        assert (await asyncio.wait_for(e.streams[1].ended, 5)).complete

    run(world, scenario)


def test_an_expectation_expires(world: Hubworld) -> None:
    async def scenario(r: Run) -> None:
        e = r.expect((1, 2))
        async with Sender(r, e, 2) as box:  # camera 2 connects in time; camera 1 never does
            await box.header()
            await box.stream(world.pieces[:2], end=False)
            record = await asyncio.wait_for(e.streams[1].ended, 2)
            assert record.reason == "expired" and record.frames == 0
            assert await e.streams[1].first_fragment is None
            assert await refused(r, r.url(e.session, 1), world.box.ssl_context()) == (404, "no_such_session")
            assert e.viewer_private is not None  # camera 2 still streams
            await box.stream(world.pieces[2:])
        assert (await asyncio.wait_for(e.streams[2].ended, 5)).complete
        assert e.viewer_private is None

    run(world, scenario, expect_s=0.4)


def test_cancel_refuses_the_streams(world: Hubworld) -> None:
    async def scenario(r: Run) -> None:
        e = r.expect()
        r.media.cancel(e, "refused")
        assert (await e.streams[1].ended).reason == "refused"
        assert await refused(r, r.url(e.session, 1), world.box.ssl_context()) == (404, "no_such_session")

    run(world, scenario)


# --- bad headers and frames ---------------------------------------------------------------------------------


BAD_HEADERS: list[tuple[str, dict[str, Any] | str]] = [
    ("session", {"session": "AAAAAAAAAAAAAAAAAAAAAA"}),
    ("camera as text", {"camera": "1"}),
    ("camera true", {"camera": True}),
    ("another camera", {"camera": 2}),
    ("jti", {"jti": "another-jti-another-jti"}),
    ("device_id", {"device_id": "edge-" + "0" * 32}),
    ("mode", {"mode": "recorded"}),
    ("mode unknown", {"mode": "both"}),
    ("wrapped_key padded", {"wrapped_key": jws.b64url_encode(bytes(80)) + "=="}),
    ("wrapped_key short", {"wrapped_key": jws.b64url_encode(bytes(79))}),
    ("start_ms negative", {"start_ms": -1}),
    ("start_ms float", {"start_ms": 1.5}),
    ("missing", {"start_ms": None}),
    ("type", {"type": "end"}),
    ("duplicate keys", '{"type":"media","type":"media"}'),
    ("not JSON", "hello"),
]


def test_bad_session_headers_fail_the_stream(world: Hubworld) -> None:
    async def scenario(r: Run) -> None:
        for name, bad in BAD_HEADERS:
            e = r.expect()
            async with Sender(r, e) as box:
                assert box.ws is not None
                if isinstance(bad, str):
                    await box.ws.send_str(bad)
                else:
                    head = r.header(e, key=box.key, **bad)
                    head = {k: v for k, v in head.items() if v is not None}
                    await box.ws.send_str(json.dumps(head))
                assert await box.closed() == 1008, name
            record = await asyncio.wait_for(e.streams[1].ended, 5)
            assert (record.reason, record.failed, record.video) == (
                "failed: bad_header",
                "bad_header",
                None,
            ), name
            assert end_json(e)["failed"] == "bad_header"
            assert not e.streams[1].video_path.exists()

        # Binary before the header; then a key wrapped to another viewer.
        e = r.expect()
        async with Sender(r, e) as box:
            await box.frame(world.pieces[0])
            assert await box.closed() == 1008
        assert (await e.streams[1].ended).failed == "no_header"
        e = r.expect()
        async with Sender(r, e) as box:
            other = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            wrapped = media.wrap_key(box.key, other, device_id=e.device_id, jti=e.jti)
            await box.header(wrapped_key=jws.b64url_encode(wrapped))
            assert await box.closed() == 1008
        assert (await e.streams[1].ended).reason == "failed: key"

    run(world, scenario)


def test_no_header_in_time(world: Hubworld) -> None:
    async def scenario(r: Run) -> None:
        e = r.expect()
        async with Sender(r, e) as box:
            assert await box.closed() == 1008
        assert (await e.streams[1].ended).failed == "no_header"

    run(world, scenario, header_timeout_s=0.3)


def _flip(frame: bytes, at: int) -> bytes:
    return frame[:at] + bytes([frame[at] ^ 0x01]) + frame[at + 1 :]


@pytest.mark.parametrize("fault", ["tampered", "out_of_order", "replayed", "wrong_session", "after_final"])
def test_a_bad_frame_fails_the_stream_and_keeps_what_came(world: Hubworld, fault: str) -> None:
    async def scenario(r: Run) -> None:
        e = r.expect()
        pieces = world.pieces
        async with Sender(r, e) as box:
            await box.header()
            first = await box.frame(pieces[0])
            await box.frame(pieces[1])
            assert box.ws is not None
            if fault == "tampered":
                await box.ws.send_bytes(_flip(box.sealer.seal(pieces[2]), media.HEADER_BYTES + 5))
            elif fault == "out_of_order":
                box.sealer.seal(pieces[2])  # sealed, never sent: frame 3 comes next
                await box.frame(pieces[3])
            elif fault == "replayed":
                await box.ws.send_bytes(first)
            elif fault == "wrong_session":  # camera 2's stream on camera 1's connection
                other = media.FrameSealer(box.key, media.stream_id(e.jti, 2))
                for piece in pieces[:3]:
                    sealed = other.seal(piece)
                await box.ws.send_bytes(sealed)
            else:  # the box's sealer refuses to seal after the final frame: a second sealer makes frame 3
                await box.frame(b"", final=True)
                rogue = media.FrameSealer(box.key, media.stream_id(e.jti, 1))
                for piece in pieces[:4]:
                    sealed = rogue.seal(piece)
                await box.ws.send_bytes(sealed)
            assert await box.closed() == 1008
        record = await asyncio.wait_for(e.streams[1].ended, 5)
        want = 3 if fault == "after_final" else 2
        assert (record.reason, record.failed, record.frames) == (f"failed: {fault}", fault, want)
        assert record.complete is (fault == "after_final")
        assert e.streams[1].video_path.read_bytes() == pieces[0] + pieces[1]
        assert end_json(e)["reason"] == f"failed: {fault}"

    run(world, scenario)


def test_a_truncated_stream(world: Hubworld) -> None:
    async def scenario(r: Run) -> None:
        e = r.expect()
        async with Sender(r, e) as box:
            await box.header()
            await box.stream(world.pieces[:3], end=False)
        record = await asyncio.wait_for(e.streams[1].ended, 5)
        assert (record.reason, record.complete, record.failed, record.frames) == ("truncated", False, None, 3)
        assert e.streams[1].video_path.read_bytes() == b"".join(world.pieces[:3])
        assert len(decoded_frames(e.streams[1].video_path)) == 8  # two whole fragments of 4 frames

        # A box that goes quiet is cut off after idle_timeout_s, also truncated.
        e = r.expect()
        async with Sender(r, e) as box:
            await box.header()
            await box.stream(world.pieces[:2], end=False)
            assert await box.closed() == 1000
        assert (await e.streams[1].ended).reason == "truncated"

    run(world, scenario, idle_timeout_s=0.5)


def test_the_hub_closes_a_stream(world: Hubworld) -> None:
    async def scenario(r: Run) -> None:
        e = r.expect()
        async with Sender(r, e) as box:
            await box.header()
            await box.stream(world.pieces[:2], end=False)
            await asyncio.wait_for(e.streams[1].first_fragment, 5)
            assert not await r.media.stop(e.session, 2)
            t0 = time.perf_counter()
            stopping = asyncio.create_task(r.media.stop(e.session, 1))  # returns once the box answered
            assert await box.closed() == 1000
            assert await stopping
            assert time.perf_counter() - t0 < 1
        record = await asyncio.wait_for(e.streams[1].ended, 5)
        assert (record.reason, record.frames, record.complete, record.failed) == (
            "hub_closed",
            2,
            False,
            None,
        )
        assert e.streams[1].video_path.read_bytes() == b"".join(world.pieces[:2])

    run(world, scenario)
