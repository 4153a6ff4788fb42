"""`edge hub request` and what is under it (edge/hub/requests.py, edge/hub/admin.py), against a really paired
box answering through its real control client and gate, over real TLS 1.3 on 127.0.0.1.

The box's media side is played by the test (the session engine is tested on its own): on an accepted
decision it wraps a fresh key to the request's viewer key and streams a small PyAV-made fMP4 per camera.
The last tests run `edge hub serve` and `edge hub request` as real subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from edge import jws
from edge.hub import admin as hubadmin
from edge.hub import requests as hubrequests
from edge.hub.control import ControlError
from edge.hub.requests import RequestError, make_request
from edge.hub.server import RunningHub
from edge.hub.state import HubState
from edge.uplink import media
from edge.uplink.control import Backoff, ControlClient, control_url
from edge.uplink.gate import Outcome
from tests.hubworld import SHOP, PairedBox, pair, start_hub
from tests.test_hub_media import red_fmp4

PIECES = red_fmp4()
EDGE = [sys.executable, "-m", "edge"]


class BoxMedia:
    """The box's media side, by hand: streams ``pieces`` for each camera of an accepted request."""

    def __init__(self, box: PairedBox, hub_url: str, *, hold: bool = False) -> None:
        self.box, self.hub_url, self.hold = box, hub_url, hold
        self.tasks: list[asyncio.Task[int | None]] = []

    def on_accepted(self, outcome: Outcome) -> None:
        assert outcome.request is not None
        for camera in outcome.request.scope.cameras:
            self.tasks.append(asyncio.create_task(self._send(outcome, camera)))

    async def _send(self, outcome: Outcome, camera: int) -> int | None:
        req = outcome.request
        assert req is not None
        key = media.new_session_key()
        sealer = media.FrameSealer(key, media.stream_id(req.jti, camera))
        url = f"{self.hub_url.replace('https://', 'wss://')}/v1/media/{outcome.message['session']}/{camera}"
        header = {
            "type": "media", "session": outcome.message["session"], "jti": req.jti, "device_id": req.aud,
            "camera": camera, "mode": req.scope.mode, "start_ms": int(time.time() * 1000),
        }  # fmt: skip
        wrapped = media.wrap_key(key, req.viewer_key, device_id=req.aud, jti=req.jti)
        header["wrapped_key"] = jws.b64url_encode(wrapped)
        async with aiohttp.ClientSession() as s, s.ws_connect(url, ssl=self.box.ssl_context()) as ws:
            await ws.send_str(json.dumps(header))
            for piece in PIECES[: 2 if self.hold else None]:
                await ws.send_bytes(sealer.seal(piece))
            if self.hold:  # a live stream that goes on until the hub closes it
                msg = await ws.receive()
                return ws.close_code if msg.type == aiohttp.WSMsgType.CLOSE else None
            await ws.send_bytes(sealer.seal(b"", final=True))
            end = {
                "type": "end",
                "reason": "max_dur",
                "frames": len(PIECES) + 1,
                "bytes": sum(map(len, PIECES)),
            }
            await ws.send_str(json.dumps(end))
            await ws.receive()
            return ws.close_code


@asynccontextmanager
async def answering_box(
    state: HubState, hub_url: str, data: Path, *, hold: bool = False, registry: bool = False
) -> AsyncIterator[tuple[PairedBox, ControlClient, BoxMedia]]:
    """A box paired with the hub at ``hub_url``, its control client connected, its media side ready."""
    box = await pair(state, hub_url, data)
    await box.open()
    assert box.gate is not None
    player = BoxMedia(box, hub_url, hold=hold)
    client = ControlClient(
        control_url(hub_url), box.ssl_context(), device_id=box.device_id, gate=box.gate, executor=box.db,
        on_accepted=player.on_accepted, backoff=Backoff(initial_s=0.05, max_s=0.2), rng=random.Random(3),
    )  # fmt: skip
    if registry:
        from edge.uplink import registry as box_registry

        store = box.store
        assert store is not None
        doc = await box.run_db(lambda: box_registry.build(store, box.identity, now_utc_ns=time.time_ns()))
        await client.send_registry(doc)
    client.start()
    try:
        yield box, client, player
    finally:
        await client.close()
        for task in player.tasks:
            task.cancel()
        box.close()


@pytest.fixture
def hub_state(tmp_path: Path) -> HubState:
    return HubState.create(tmp_path / "hub", hub_id="met-hub-1", agency="Met", now_utc_ns=time.time_ns())


def run(state: HubState, scenario: Callable[[RunningHub], Awaitable[None]]) -> None:
    async def main() -> None:
        hub = await start_hub(state)
        try:
            await asyncio.wait_for(scenario(hub), 20)
        finally:
            await hub.close()

    asyncio.run(main())


REQUEST: dict[str, Any] = {
    "cameras": [1], "mode": "live", "max_dur": 600, "case": "2026/0042", "reason": "crime_in_progress",
    "sub": "PC 4512", "incident": {"lat": SHOP[0], "lon": SHOP[1], "kind": "robbery"},
}  # fmt: skip


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --- make_request in process --------------------------------------------------------------------------------


def test_an_accepted_request_saves_request_decision_and_video(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(hub: RunningHub) -> None:
        async with answering_box(hub_state, hub.url, tmp_path / "box") as (box, _client, player):
            await hub.control.wait_connected(box.device_id, timeout=5)
            t0 = time.monotonic_ns()
            result = await make_request(hub_state, hub.control, hub.media, device_id=box.device_id, **REQUEST)
            assert result.accepted and result.code is None and result.expected is not None
            assert result.session == media.session_handle(result.jti) == result.decision["session"]
            records = await result.expected.wait_ended(10)
            first = result.expected.streams[1].first_fragment.result()
            assert first is not None and first > t0
            print(f"request → first fragment at the hub: {(first - t0) / 1e6:.1f} ms")
            assert [await t for t in player.tasks] == [1000]
        d = result.directory
        assert d == hub_state.data_dir / "sessions" / result.session
        claims = read_json(d / hubrequests.REQUEST_JSON)
        assert claims == result.claims and claims["aud"] == box.device_id and claims["jti"] == result.jti
        assert claims["exp"] - claims["iat"] == 120 and claims["scope"] == {"cameras": [1], "mode": "live"}
        assert jws.parse((d / hubrequests.REQUEST_JWT).read_text(), max_bytes=8192).payload == claims
        assert read_json(d / hubrequests.DECISION_JSON) == result.decision
        assert records[1].reason == "max_dur" and records[1].complete
        assert (d / "1" / "video.mp4").read_bytes() == b"".join(PIECES)
        with av.open(str(d / "1" / "video.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 10
        assert result.expected.viewer_private is None  # gone with the session
        assert not list(d.glob("**/*viewer*")) and "viewer_key" in claims  # only the public half on disk

    run(hub_state, scenario)


def test_a_refused_request_saves_the_decision_and_expects_no_media(
    hub_state: HubState, tmp_path: Path
) -> None:
    async def scenario(hub: RunningHub) -> None:
        async with answering_box(hub_state, hub.url, tmp_path / "box") as (box, _client, player):
            await hub.control.wait_connected(box.device_id, timeout=5)
            # Camera 2 is private: refused exactly like a camera that does not exist.
            req = REQUEST | {"cameras": [2]}
            result = await make_request(hub_state, hub.control, hub.media, device_id=box.device_id, **req)
            assert not result.accepted and result.code == "no_such_camera" and result.expected is None
            assert read_json(result.directory / hubrequests.DECISION_JSON)["code"] == "no_such_camera"
            assert hub.media.stream(result.session, 2) is None
            # The box (or anyone) connecting anyway is refused before the upgrade.
            url = f"{hub.url.replace('https', 'wss')}/v1/media/{result.session}/2"
            async with aiohttp.ClientSession() as s:
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await s.ws_connect(url, ssl=box.ssl_context())
            assert e.value.status == 404 and player.tasks == []

            # Bad arguments fail before a nonce is asked for; an unconnected device is a ControlError.
            with pytest.raises(RequestError, match="from and to"):
                await make_request(
                    hub_state,
                    hub.control,
                    hub.media,
                    device_id=box.device_id,
                    **(REQUEST | {"mode": "recorded"}),
                )
            with pytest.raises(RequestError, match="reason"):
                await make_request(
                    hub_state,
                    hub.control,
                    hub.media,
                    device_id=box.device_id,
                    **(REQUEST | {"reason": "curious"}),
                )
            with pytest.raises(ControlError) as ce:
                await make_request(hub_state, hub.control, hub.media, device_id="edge-" + "0" * 32, **REQUEST)
            assert ce.value.kind == "not_connected"

    run(hub_state, scenario)


# --- the admin API in process -------------------------------------------------------------------------------


def test_admin_api_devices_and_a_streamed_request(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(hub: RunningHub) -> None:
        server = await hubadmin.start_admin(hub_state, hub.control, hub.media)
        try:
            sock = hub_state.data_dir / hubadmin.SOCKET_FILE
            assert server.path == sock and (sock.stat().st_mode & 0o777) == 0o600
            with pytest.raises(hubadmin.AdminError, match="another hub"):
                await hubadmin.start_admin(hub_state, hub.control, hub.media)
            async with answering_box(hub_state, hub.url, tmp_path / "box", registry=True) as (
                box,
                client,
                _p,
            ):
                await hub.control.wait_connected(box.device_id, timeout=5)
                for _ in range(50):  # the registry goes up right after hello
                    if client.registry_acked is not None:
                        break
                    await asyncio.sleep(0.05)
                connector = aiohttp.UnixConnector(path=str(sock))
                async with aiohttp.ClientSession(connector=connector) as s:
                    async with s.get("http://hub/v1/admin/devices") as resp:
                        devices = (await resp.json())["devices"]
                    assert [(d["device_id"], d["connected"]) for d in devices] == [(box.device_id, True)]
                    assert [c["id"] for c in devices[0]["cameras"]] == [1]  # the door; the till is private

                    # No lat/lon: the incident is placed at the camera, from the registry.
                    body = REQUEST | {"device": box.device_id, "incident": {"kind": "robbery"}}
                    async with s.post("http://hub/v1/admin/request", json=body) as resp:
                        assert resp.status == 200
                        events = [json.loads(line) async for line in resp.content]
                    assert [e["event"] for e in events] == ["decision", "first_fragment", "end"]
                    assert events[0]["decision"]["decision"] == "accepted"
                    assert events[1]["camera"] == 1 and events[1]["after_decision_ms"] >= 0
                    record = events[2]["record"]
                    assert record["reason"] == "max_dur" and record["complete"]
                    assert Path(record["video"]).read_bytes() == b"".join(PIECES)
                    claims = read_json(Path(events[0]["directory"]) / hubrequests.REQUEST_JSON)
                    assert claims["incident"] == {"lat": SHOP[0], "lon": SHOP[1], "kind": "robbery"}

                    for bad, status, code in (
                        (body | {"extra": 1}, 400, "bad_request"),
                        (body | {"max_dur": "600"}, 400, "bad_request"),
                        (body | {"cameras": [7]}, 400, "bad_request"),  # no such camera in the registry
                        (
                            body | {"device": "edge-" + "0" * 32, "incident": REQUEST["incident"]},
                            409,
                            "not_connected",
                        ),
                    ):
                        async with s.post("http://hub/v1/admin/request", json=bad) as resp:
                            assert (resp.status, (await resp.json())["error"]) == (status, code)
        finally:
            await server.close()
        assert not sock.exists()

    run(hub_state, scenario)


# --- `edge hub serve` + `edge hub request`, real processes --------------------------------------------------


async def _serve(data: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *EDGE, "hub", "serve", "--data", str(data), "--listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    url = ""
    while not (line := (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()).startswith(
        "admin socket"
    ):
        assert line, "edge hub serve exited"
        if line.startswith("listening on "):
            url = line.split()[-1]
    assert url.startswith("https://127.0.0.1:")
    return proc, url


async def _request(data: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *EDGE, "hub", "request", "--data", str(data), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_edge_hub_request_against_edge_hub_serve(hub_state: HubState, tmp_path: Path) -> None:
    data = hub_state.data_dir

    async def main() -> None:
        serve, url = await _serve(data)
        try:
            async with answering_box(hub_state, url, tmp_path / "box", hold=True) as (box, client, player):
                for _ in range(100):
                    if client.connected:
                        break
                    await asyncio.sleep(0.05)
                where = ["--lat", str(SHOP[0]), "--lon", str(SHOP[1]), "--kind", "robbery"]
                common = [
                    "--device",
                    box.device_id,
                    "--case",
                    "2026/0042",
                    "--reason",
                    "crime_in_progress",
                    *where,
                ]

                t0 = time.perf_counter()
                code, out, err = await _request(
                    data, *common, "--camera", "1", "--live", "--stop-after", "0.5"
                )
                elapsed = time.perf_counter() - t0
                assert code == 0, (out, err)
                lines = out.splitlines()
                assert lines[0].startswith("decision   accepted, session ")
                assert "first fragment" in lines[2]
                saved = lines[3].split()
                assert saved[:3] == ["camera", "1", "saved"] and "(hub_closed," in lines[3]
                assert Path(saved[3]).read_bytes() == b"".join(PIECES[:2])
                assert [await t for t in player.tasks] == [1000]  # the hub closed the stream: "viewer done"
                print(f"edge hub request, live, --stop-after 0.5: {elapsed:.2f} s")

                # Recorded, with the box CLI's time forms; the claims say exactly the range asked.
                span = ["--from", "2026-11-21T10:00:00Z", "--to", str(int(time.time()) - 60)]
                code, out, err = await _request(data, *common, "--camera", "1", "--recorded", *span,
                                                "--stop-after", "0.2", "--max-dur", "90s")  # fmt: skip
                assert code == 0, (out, err)
                claims = read_json(Path(out.splitlines()[1].split()[1]) / hubrequests.REQUEST_JSON)
                assert claims["scope"] == {"cameras": [1], "mode": "recorded", "from": 1795255200,
                                           "to": int(span[3])}  # fmt: skip
                assert claims["max_dur"] == 90

                code, out, err = await _request(data, *common, "--camera", "2", "--live")
                assert (code, out.strip()) == (1, "decision   refused: no_such_camera"), err

                code, out, err = await _request(data, *common, "--camera", "1", "--recorded", "--from", "-5m")
                assert code == 2 and "--recorded needs --from and --to" in err

                stranger = ["--device", "edge-" + "0" * 32, *common[2:]]
                code, out, err = await _request(data, *stranger, "--camera", "1", "--live")
                assert code == 2 and "not_connected" in err
        finally:
            serve.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(serve.wait(), 10) == 0
        assert not (data / hubadmin.SOCKET_FILE).exists()
        args = ["--device", "x", "--camera", "1", "--live", "--case", "c", "--reason", "crime_in_progress"]
        code, out, err = await _request(data, *args, "--lat", "0", "--lon", "0")
        assert code == 2 and "cannot reach the hub" in err

    asyncio.run(asyncio.wait_for(main(), 60))
