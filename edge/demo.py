"""`edge demo`: the box on its embedded default, with a local police hub — both parties in one process.

The box records three synthetic cameras. A reference hub (:mod:`edge.hub`, its own CA, TLS 1.3) listens on
127.0.0.1 next to it, and the box is enrolled with it exactly as `edge pair` does it (the demo stands in for
the owner's confirmation of the fingerprint). Camera 1 is *integrated* at a demo position, camera 2
*registered*, camera 3 stays *private*. Once the box's control channel is up, the hub sends three signed
requests:

1. live, camera 1: accepted; the hub receives and decrypts a few seconds and saves them;
2. recorded, camera 1, the last seconds: accepted, saved;
3. live, camera 3 (private): refused ``no_such_camera``, as a camera that does not exist would be.

Everything is in the box's audit log (`edge --data-dir DIR audit show`) and the hub's session directory.

Wiring, like :mod:`edge.cli`: the only module besides the hub's command registration that names both the box
and the hub, because a demo is both parties.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import __version__
from edge.hub import server as hub_server
from edge.hub.requests import RequestResult, make_request
from edge.hub.state import DB_FILE, HubState
from edge.identity import load_or_create
from edge.store import Store
from edge.uplink import pairing
from edge.uplink.enroll import enroll, make_code, parse_code

DEMO_POSITION = (51.50135, -0.14189)
LIVE_S = 3.0
RECORDED_S = 4


@dataclass(frozen=True)
class DemoCamera:
    name: str
    url: str
    consent: str


CAMERAS = (
    DemoCamera("Front door (synthetic)", "synthetic:?w=1280&h=720&fps=15&gop=2&color=2060c0", "integrated"),
    DemoCamera("Yard (synthetic)", "synthetic:?w=640&h=360&fps=25&gop=1&color=30a040", "registered"),
    DemoCamera("Till (synthetic)", "synthetic:?w=320&h=240&fps=10&gop=4&color=c04030", "private"),
)


def prepare_box(data_dir: Path) -> None:
    """The demo cameras (once), at the demo position, each at its consent level."""
    store = Store.open(data_dir)
    try:
        if not store.cameras():
            now = time.time_ns()
            for cam in CAMERAS:
                added = store.add_camera(name=cam.name, url=cam.url, username=None, password_blob=None,
                                         max_age_s=None, now_utc_ns=now)  # fmt: skip
                store.update_camera(added.id, lat=DEMO_POSITION[0], lon=DEMO_POSITION[1], consent=cam.consent)
    finally:
        store.close()


async def start_hub(hub_dir: Path) -> tuple[HubState, hub_server.RunningHub]:
    if (hub_dir / DB_FILE).exists():
        state = HubState(hub_dir)
    else:
        state = await asyncio.to_thread(
            HubState.create, hub_dir, hub_id="demo-hub", agency="Demo Police Hub", now_utc_ns=time.time_ns()
        )
    cert, key = await asyncio.to_thread(state.write_server_cert, ["127.0.0.1"], now_utc_ns=time.time_ns())
    ctx = hub_server.server_context(cert, key, state.root_pem)
    return state, await hub_server.start(state, host="127.0.0.1", port=0, ssl_context=ctx)


async def pair_box(data_dir: Path, state: HubState, url: str) -> str:
    """Enroll and pin, as `edge pair CODE --confirm-fingerprint … --replace` would; the device id."""
    token = await asyncio.to_thread(state.issue_token, ttl_s=600, now_utc_ns=time.time_ns())
    code = parse_code(make_code(url, token, state.root_fingerprint))
    identity = await asyncio.to_thread(load_or_create, data_dir)
    enrollment = await enroll(code, identity, box_version=__version__, now_s=int(time.time()))

    def pin() -> None:
        store = Store.open(data_dir)
        try:
            pairing.pin(store, data_dir, enrollment, actor="demo", now_utc_ns=time.time_ns(), replace=True)
        finally:
            store.close()

    await asyncio.to_thread(pin)
    return identity.public.device_id


async def requests(
    state: HubState, hub: hub_server.RunningHub, device_id: str, say: Callable[[str], None]
) -> None:
    """The hub's three requests, each reported as it goes."""
    try:
        await _requests(state, hub, device_id, say)
    except Exception as e:  # a demo reports and goes on recording
        say(f"hub: the demo requests stopped: {type(e).__name__}: {e}")


async def _requests(
    state: HubState, hub: hub_server.RunningHub, device_id: str, say: Callable[[str], None]
) -> None:
    await hub.control.wait_connected(device_id, timeout=30)
    say(f"hub: {device_id} is connected over its outbound control channel")
    await asyncio.sleep(RECORDED_S + 1)  # some footage to ask for
    incident = {"lat": DEMO_POSITION[0], "lon": DEMO_POSITION[1], "kind": "demo"}
    common: dict[str, Any] = {
        "case": "DEMO-1",
        "reason": "public_safety",
        "sub": "PC Demo",
        "incident": incident,
    }
    now = int(time.time())
    asks: Sequence[tuple[str, list[int], str, dict[str, Any]]] = (
        ("live view of camera 1", [1], "live", {"max_dur": 60}),
        ("camera 1, the last seconds", [1], "recorded",
         {"max_dur": 60, "from_s": now - RECORDED_S, "to_s": now - 1}),
        ("live view of camera 3 (private)", [3], "live", {"max_dur": 60}),
    )  # fmt: skip
    for what, cameras, mode, extra in asks:
        result = await make_request(state, hub.control, hub.media, device_id=device_id, cameras=cameras,
                                    mode=mode, **common, **extra)  # fmt: skip
        await _report(hub, result, what, say)


async def _report(
    hub: hub_server.RunningHub, result: RequestResult, what: str, say: Callable[[str], None]
) -> None:
    if not result.accepted or result.expected is None:
        say(f"hub: {what}: refused ({result.code}) — signed decision saved in {result.directory}")
        return
    say(f"hub: {what}: accepted, session {result.session}")
    for camera, stream in result.expected.streams.items():
        first = await asyncio.wait_for(asyncio.shield(stream.first_fragment), 30)
        if first is not None and result.claims["scope"]["mode"] == "live":
            await asyncio.sleep(LIVE_S)
            await hub.media.stop(result.session, camera)
        record = await asyncio.wait_for(asyncio.shield(stream.ended), 60)
        say(f"hub:   camera {camera}: {record.bytes} bytes decrypted ({record.reason}) → {stream.video_path}")


@contextlib.asynccontextmanager
async def local_hub(data_dir: Path, hub_dir: Path, say: Callable[[str], None]) -> AsyncIterator[None]:
    """Around the box's daemon: the hub is up and the box paired before it starts; the hub asks its three
    requests while it runs, and stops after it."""
    state, hub = await start_hub(hub_dir)
    say(f"hub: {state.agency} on {hub.url} ({hub_dir})")
    device_id = await pair_box(data_dir, state, hub.url)
    say(f"box: paired with {state.agency} as {device_id}\n")
    asking = asyncio.create_task(requests(state, hub, device_id, say))
    try:
        yield
    finally:
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking
        await hub.close()
