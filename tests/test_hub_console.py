"""The reference hub's console (edge/hub/console.py): its API over real HTTP and WebSocket on 127.0.0.1, and
its page in a real headless Chromium playing a live session from a real box through MSE.

The box is a real `edge run` daemon recording the real GStreamer RTSP server (tests/uplinkworld.py); camera 1
is ``h264_720p``, whose background colour names it in every decoded frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from edge.errors import Malformed
from edge.hub.console import (
    ConsoleError,
    ConsoleServer,
    check_loopback,
    codecs_string,
    start_console,
)
from tests.fmp4_samples import _mux
from tests.peers.media import dominant_colour, nearest_clip
from tests.peers.rtsp_server import RtspPeer
from tests.uplinkworld import Box, HubThread, make_box

MOUNT = "h264_720p"
TOKEN = "console-test-token-0123456789"
CHROMIUM = "/usr/bin/chromium"
SOMEWHERE = {"kind": "robbery", "lat": 51.5, "lon": -0.1}
H264_PROFILES = {"Baseline": 0x42, "Constrained Baseline": 0x42, "Main": 0x4D, "High": 0x64}


@pytest.fixture(scope="module")
def world(
    rtsp_server: RtspPeer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[HubThread, Box, ConsoleServer]]:
    root = tmp_path_factory.mktemp("console")
    hub = HubThread(root / "hub")
    box = console = None
    try:
        box = make_box(root / "box", hub, rtsp_server, [MOUNT])
        box.cli("consent", "set", "1", "--quota", "100")
        console = hub.call(start_console(hub.state, hub.hub.control, hub.hub.media, token=TOKEN))
        yield hub, box, console
    finally:
        if console is not None:
            hub.call(console.close())
        if box is not None:
            box.daemon.stop()
        hub.close()


def base(console: ConsoleServer) -> str:
    return f"http://127.0.0.1:{console.port}"


def request_body(device_id: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "device": device_id, "cameras": [1], "mode": "live", "max_dur": 60, "case": "2026/0042",
        "reason": "crime_in_progress", "sub": "PC 4512", "incident": {"kind": "robbery"},
    }  # fmt: skip
    return body | kw


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers={"X-Console-Token": TOKEN}, timeout=aiohttp.ClientTimeout(total=20)
    ) as s:
        yield s


def decode(video: bytes) -> list[tuple[float, str | None]]:
    out = []
    with av.open(io.BytesIO(video), "r") as c:
        for f in c.decode(video=0):
            img = f.to_ndarray(format="bgr24").astype(np.uint8)
            out.append((float(f.time or 0.0), nearest_clip(dominant_colour(img))))
    return out


# --- the MSE type -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Init segments (and the first fragments) muxed by libav, as the box muxes them."""
    root = tmp_path_factory.mktemp("inits")
    return {
        "h264": _mux(root / "h264.mp4", codec="libx264", seconds=1, gop=25).data,
        "hevc": _mux(root / "hevc.mp4", codec="libx265", seconds=1, gop=25).data,
        "h264_aac": _mux(root / "aac.mp4", codec="libx264", seconds=1, gop=25, audio=True).data,
    }


def test_codecs_are_read_from_the_init_segment(inits: dict[str, bytes]) -> None:
    assert codecs_string(inits["h264"]) == "avc1.64000a"  # High profile, level 1.0 (64x48)
    assert codecs_string(inits["hevc"]) == "hvc1.1.6.L30.90"  # Main, compatible with Main/Main10, L1.0
    assert codecs_string(inits["h264_aac"]) == "avc1.64000a,mp4a.40.2"  # and AAC-LC
    data = inits["h264"]
    for bad in (b"", data[:20], b"\0\0\0\x10moov" + b"\xff" * 8, b"garbage!" * 4):
        with pytest.raises(Malformed):
            codecs_string(bad)
    with pytest.raises(Malformed):  # a moov cut inside: no stsd
        codecs_string(data[: data.index(b"moov") + 60])


# --- the API ------------------------------------------------------------------------------------------------


async def test_the_page_is_served_with_a_strict_policy_and_the_api_wants_the_token(
    world: tuple[HubThread, Box, ConsoleServer],
) -> None:
    _, _, console = world
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.get(base(console) + "/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self';" in csp and "default-src 'none'" in csp and "unsafe" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            page = await r.text()
        assert '<script src="/console.js"' in page and not re.search(r"<script>|\son\w+=", page)
        async with s.get(base(console) + "/console.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
            assert "window.consoleState" in await r.text()
        async with s.get(base(console) + "/api/devices") as r:
            assert r.status == 403 and (await r.json())["error"] == "forbidden"
        async with s.get(base(console) + "/api/devices", headers={"X-Console-Token": "x" + TOKEN}) as r:
            assert r.status == 403
        hostile = {"X-Console-Token": TOKEN, "Origin": "http://evil.example"}
        async with s.get(base(console) + "/api/devices", headers=hostile) as r:
            assert r.status == 403, "a request from another origin is refused even with the token"
        async with s.post(base(console) + "/api/request", data="{}", headers={"X-Console-Token": TOKEN}) as r:
            assert r.status == 415, "a form post (CSRF's kind) is refused"
        async with s.get(base(console) + "/../edge.toml") as r:
            assert r.status == 404
    for host in ("0.0.0.0", "10.231.0.1", "::", "example.org"):
        with pytest.raises(ConsoleError, match="loopback"):
            check_loopback(host)
    assert check_loopback("127.0.0.1") == "127.0.0.1" and check_loopback("::1") == "::1"


async def test_devices_lists_the_box_and_its_registry(world: tuple[HubThread, Box, ConsoleServer]) -> None:
    _, box, console = world
    async with client() as s, s.get(base(console) + "/api/devices") as r:
        assert r.status == 200
        reply = await r.json()
    (device,) = reply["devices"]
    assert device["device_id"] == box.device_id and device["connected"] is True
    assert [c["id"] for c in device["cameras"]] == [1]
    assert device["cameras"][0]["name"] == MOUNT
    assert "crime_in_progress" in reply["reasons"]


async def test_a_bad_request_is_a_clear_error(world: tuple[HubThread, Box, ConsoleServer]) -> None:
    _, box, console = world
    async with client() as s:
        async with s.post(base(console) + "/api/request", json=request_body(box.device_id, reason="x")) as r:
            assert r.status == 400 and "reason is one of" in (await r.json())["detail"]
        async with s.post(
            base(console) + "/api/request", json=request_body("edge-nobody", incident=SOMEWHERE)
        ) as r:
            assert r.status == 409 and (await r.json())["error"] == "not_connected"
        body = request_body(box.device_id, stop_after_s=5)
        async with s.post(base(console) + "/api/request", json=body) as r:
            assert r.status == 400 and "stop button" in (await r.json())["detail"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(base(console) + f"/api/live/nope/1?token={TOKEN}")
        assert refused.value.status == 404


async def test_a_live_request_streams_the_decrypted_video_over_the_websocket(
    world: tuple[HubThread, Box, ConsoleServer],
) -> None:
    hub, box, console = world
    async with client() as s:
        async with s.post(base(console) + "/api/request", json=request_body(box.device_id)) as r:
            assert r.status == 200
            reply = await r.json()
        assert reply["accepted"] is True, reply
        assert reply["decision"]["session"] == reply["session"]
        (cam,) = reply["cameras"]
        assert cam["camera"] == 1 and cam["from_start"] is True
        pieces: list[bytes] = []
        t0 = time.monotonic()
        async with s.ws_connect(base(console) + cam["live"] + f"?token={TOKEN}", max_msg_size=0) as ws:
            first = await ws.receive(timeout=10)
            assert first.type == aiohttp.WSMsgType.TEXT
            meta = json.loads(first.data)
            assert re.fullmatch(r"avc1\.[0-9a-f]{6}", meta["codecs"]), meta
            assert meta["mime"] == f'video/mp4; codecs="{meta["codecs"]}"' and meta["from_start"] is True
            while time.monotonic() - t0 < 2.0:
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.BINARY
                pieces.append(msg.data)
            async with s.post(base(console) + f"/api/stop/{reply['session']}/1") as r:
                assert (await r.json()) == {"stopped": True}
            tail = []
            async for msg in ws:
                tail.append(msg)
            assert tail and tail[-1].type == aiohttp.WSMsgType.TEXT
            assert json.loads(tail[-1].data) == {"end": "hub_closed"}
            pieces += [m.data for m in tail if m.type == aiohttp.WSMsgType.BINARY]
    assert codecs_string(pieces[0]) == meta["codecs"]
    frames = decode(b"".join(pieces))
    assert len(frames) >= 30, len(frames)  # ~2 s at 30 fps, from the keyframe on
    assert frames[0][0] == 0.0, "the first fragment, the keyframe, came through"
    assert {clip for _, clip in frames} == {MOUNT}
    with av.open(io.BytesIO(b"".join(pieces)), "r") as c:
        ctx = c.streams.video[0].codec_context
        assert int(meta["codecs"][5:7], 16) == H264_PROFILES[str(ctx.profile)]
    saved = (hub.state.data_dir / "sessions" / reply["session"] / "1" / "video.mp4").read_bytes()
    assert saved.startswith(b"".join(pieces)[:4096]), "what the page got is what the hub saved"


# --- a real Chromium ----------------------------------------------------------------------------------------


class Cdp:
    """Just enough of the DevTools protocol: commands on one page target, events ignored."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=20)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg["result"]
                return result

    async def eval(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Cdp]:
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    args = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
        "--autoplay-policy=no-user-gesture-required",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no name resolves: loopback only
        f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def read_stderr() -> None:  # drained to the end: a full pipe would stall Chromium
        assert proc.stderr is not None
        async for raw in proc.stderr:
            m = re.search(r"DevTools listening on (ws://127\.0\.0\.1:\d+)/", raw.decode(errors="replace"))
            if m and not found.done():
                found.set_result(m.group(1))
        if not found.done():
            found.set_exception(AssertionError("Chromium exited without a DevTools endpoint"))

    reader = asyncio.create_task(read_stderr())
    try:
        endpoint = await asyncio.wait_for(found, 20)
        http = "http" + endpoint.removeprefix("ws")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            async with s.get(http + "/json/list") as r:
                page = next(t for t in await r.json() if t["type"] == "page")
            async with s.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield Cdp(ws)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        reader.cancel()
        shutil.rmtree(profile, ignore_errors=True)


async def poll(cdp: Cdp, expression: str, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await cdp.eval(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            state = await cdp.eval("JSON.stringify(window.consoleState)")
            raise AssertionError(f"{what}: not within {timeout} s; consoleState {state}")
        await asyncio.sleep(0.2)


# The page's video, drawn to a canvas: the median colour of the top and bottom quarters, as BGR.
FRAME_COLOUR = """(() => {
  const v = document.getElementById("video");
  const c = document.createElement("canvas");
  c.width = 64; c.height = 36;
  const g = c.getContext("2d");
  g.drawImage(v, 0, 0, 64, 36);
  const d = g.getImageData(0, 0, 64, 36).data;
  const px = [];
  for (let y = 0; y < 36; y++) {
    if (y >= 9 && y < 27) continue;
    for (let x = 0; x < 64; x++) { const i = 4 * (y * 64 + x); px.push([d[i + 2], d[i + 1], d[i]]); }
  }
  const med = (k) => px.map((p) => p[k]).sort((a, b) => a - b)[px.length >> 1];
  return [med(0), med(1), med(2)];
})()"""


async def test_chromium_plays_a_live_session_through_mse(world: tuple[HubThread, Box, ConsoleServer]) -> None:
    hub, box, console = world
    t0 = time.monotonic()
    async with chromium() as cdp:
        assert await cdp.eval("""MediaSource.isTypeSupported('video/mp4; codecs="avc1.64001f"')""") is True, (
            "Debian's Chromium cannot play H.264 through MSE"
        )
        # The strings codecs_string makes are ones Chromium understands (it has no H.265 here).
        for codecs, playable in (("avc1.64000a,mp4a.40.2", True), ("avc1.640028", True), ("avc1.zz", False)):
            supported = f"MediaSource.isTypeSupported('video/mp4; codecs=\"{codecs}\"')"
            assert await cdp.eval(supported) is playable, codecs
        await cdp.call("Page.navigate", url=console.url)
        await poll(
            cdp, "window.consoleState && window.consoleState.devicesLoaded === 1", 10, "devices listed"
        )
        listed = await cdp.eval("document.getElementById('devices').textContent")
        assert box.device_id in listed and MOUNT in listed
        fill = f"""(() => {{
          const set = (id, v) => {{ document.getElementById(id).value = v; }};
          set("device", {json.dumps(box.device_id)}); set("camera", "1"); set("reason", "threat_to_life");
          set("case", "2026/0099"); set("officer", "PC 7"); set("max-dur", "60");
          document.getElementById("send").click();
          return true;
        }})()"""
        assert await cdp.eval(fill) is True
        state = await poll(
            cdp, "window.consoleState.frames > 30 && window.consoleState.playing && window.consoleState",
            15, "30 frames played",
        )  # fmt: skip
        assert state["error"] is None and re.fullmatch(r"avc1\.[0-9a-f]{6}", state["codecs"])
        size = await cdp.eval(
            "(v => [v.videoWidth, v.videoHeight, v.currentTime])(document.getElementById('video'))"
        )
        assert size[:2] == [1280, 720] and size[2] > 0.5
        bgr = tuple(await cdp.eval(FRAME_COLOUR))
        assert nearest_clip(bgr) == MOUNT, bgr
        await cdp.eval("document.getElementById('stop').click(), true")
        # The stop's reply and the stream's end message race; either is the last word.
        settled = "/^(stopped|ended: hub_closed)$/.test(consoleState.status) && consoleState.status"
        status = await poll(cdp, settled, 10, "stopped")
        assert status in ("stopped", "ended: hub_closed")
        frames = await cdp.eval("window.consoleState.frames")
    took = time.monotonic() - t0
    assert frames > 30 and took < 30, (frames, took)
    (session,) = [
        p.name for p in (hub.state.data_dir / "sessions").iterdir()
        if json.loads((p / "request.json").read_text())["case"] == "2026/0099"
    ]  # fmt: skip
    end = json.loads((hub.state.data_dir / "sessions" / session / "1" / "end.json").read_text())
    assert end["reason"] == "hub_closed" and end["failed"] is None


# --- edge hub serve --console -------------------------------------------------------------------------------


def test_serve_refuses_a_console_off_loopback(tmp_path: Path) -> None:
    hub = [sys.executable, "-m", "edge", "hub"]
    subprocess.run([*hub, "keygen", "--data", str(tmp_path / "hub")], check=True, capture_output=True)
    serve = [*hub, "serve", "--data", str(tmp_path / "hub"), "--listen", "127.0.0.1:0"]
    for bad in ("0.0.0.0:8080", "10.231.0.1:8080", "[::]:8080"):
        out = subprocess.run([*serve, "--console", bad], capture_output=True, text=True, timeout=20)
        assert out.returncode != 0 and "loopback address only" in out.stderr, out.stderr
        assert not (tmp_path / "hub" / "hub.sock").exists(), "refused before anything listens"


async def test_serve_with_a_console_serves_the_page(tmp_path: Path) -> None:
    hub = [sys.executable, "-m", "edge", "hub"]
    subprocess.run([*hub, "keygen", "--data", str(tmp_path / "hub")], check=True, capture_output=True)
    proc = await asyncio.create_subprocess_exec(
        *hub, "serve", "--data", str(tmp_path / "hub"), "--listen", "127.0.0.1:0", "--console", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "edge hub serve exited"
            if line.startswith("console"):
                url = line.split()[1]
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/#token=([\w-]{32})", url)
        assert m, url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(url.split("#")[0]) as r:
                assert r.status == 200 and "Content-Security-Policy" in r.headers
            async with s.get(f"http://127.0.0.1:{m[1]}/api/devices", headers={"X-Console-Token": m[2]}) as r:
                assert r.status == 200 and (await r.json())["devices"] == []
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
