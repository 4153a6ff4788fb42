"""A reference hub and a box paired with it, in the test's own event loop, over real TLS 1.3 on 127.0.0.1.

The box enrolls with the real code path (:func:`edge.uplink.enroll.enroll` and :func:`pairing.pin`); its
store and gate live on one database thread, as in the daemon.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge import __version__, jws
from edge.hub import server
from edge.hub.media import MediaHub
from edge.hub.state import HubState
from edge.identity import DeviceIdentity, load_or_create
from edge.store import Store
from edge.uplink import pairing
from edge.uplink.enroll import enroll, make_code, parse_code
from edge.uplink.gate import Gate
from edge.uplink.request import sign_token

SHOP = (51.5014, -0.1419)


def server_context(state: HubState, *, issuer: HubState | None = None) -> ssl.SSLContext:
    """The hub's TLS context; ``issuer``: another CA signs the server certificate (an impostor)."""
    cert, key = (issuer or state).write_server_cert(["127.0.0.1"], now_utc_ns=time.time_ns())
    return server.server_context(cert, key, state.root_pem)


async def start_hub(
    state: HubState,
    *,
    port: int = 0,
    heartbeat_s: float = 20.0,
    issuer: HubState | None = None,
    media: MediaHub | None = None,
) -> server.RunningHub:
    return await server.start(
        state,
        host="127.0.0.1",
        port=port,
        ssl_context=server_context(state, issuer=issuer),
        heartbeat_s=heartbeat_s,
        media=media,
    )


@dataclass
class PairedBox:
    data: Path
    identity: DeviceIdentity
    pairing: pairing.Pairing
    db: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="box-db"))
    store: Store | None = None
    gate: Gate | None = None

    @property
    def device_id(self) -> str:
        return self.identity.public.device_id

    async def run_db(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.db, lambda: fn(*args, **kw))

    async def open(self) -> None:
        """Open the store and gate on the database thread, with cameras door (integrated), till (private)."""

        def setup() -> None:
            self.store = Store.open(self.data)
            now = time.time_ns()
            for name, consent in (("door", "integrated"), ("till", "private")):
                cam = self.store.add_camera(
                    name=name, url=f"rtsp://192.0.2.1/{name}", username=None, password_blob=None,
                    max_age_s=None, now_utc_ns=now,
                )  # fmt: skip
                self.store.update_camera(cam.id, lat=SHOP[0], lon=SHOP[1], consent=consent)
            self.gate = Gate(self.store, self.identity, self.pairing.hub_keys())

        await self.run_db(setup)

    def ssl_context(self) -> ssl.SSLContext:
        return pairing.client_ssl_context(self.data, self.pairing)

    def close(self) -> None:
        if self.store is not None:
            self.db.submit(self.store.close).result(timeout=10)
        self.db.shutdown(wait=True)


async def pair(state: HubState, hub_url: str, data: Path) -> PairedBox:
    """Enroll a new box at ``data`` with the hub and pin the result, as `edge pair` does."""
    token = state.issue_token(ttl_s=600, now_utc_ns=time.time_ns())
    code = parse_code(make_code(hub_url, token, state.root_fingerprint))
    identity = load_or_create(data)
    enrollment = await enroll(code, identity, box_version=__version__, now_s=int(time.time()))

    def pin() -> pairing.Pairing:
        store = Store.open(data)
        try:
            return pairing.pin(store, data, enrollment, actor="test", now_utc_ns=time.time_ns())
        finally:
            store.close()

    return PairedBox(data, identity, await asyncio.to_thread(pin))


def request_token(state: HubState, device_id: str, nonce: str, *, kid: str | None = None, **over: Any) -> str:
    """A valid live request for camera 1 (door), signed with the hub's first current key (or ``kid``'s)."""
    now = int(time.time())
    viewer = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    claims: dict[str, Any] = {
        "iss": state.hub_id, "aud": device_id, "jti": jws.b64url_encode(os.urandom(16)),
        "iat": now, "nbf": now, "exp": now + 120, "sub": "PC 4512", "case": "2026/0042",
        "reason": "crime_in_progress", "scope": {"cameras": [1], "mode": "live"}, "max_dur": 600,
        "incident": {"lat": SHOP[0], "lon": SHOP[1], "kind": "robbery"},
        "viewer_key": jws.b64url_encode(viewer), "dev_nonce": nonce,
    }  # fmt: skip
    claims |= over
    kid = kid or state.current_kids()[0]
    return sign_token(claims, kid=kid, key=state.signing_key(kid))


def run_world(
    make: Callable[[HubState, server.RunningHub, PairedBox], Any],
    state: HubState,
    tmp_path: Path,
    scenario: Callable[[Any], Awaitable[None]],
    **hub_kw: Any,
) -> None:
    """A hub and a box paired with it, in one event loop; ``make`` builds the test's world from them (it has
    ``hub`` and ``client`` attributes); the scenario gets 20 s; everything is closed afterwards."""

    async def main() -> None:
        hub = await start_hub(state, **hub_kw)
        box = await pair(state, hub.url, tmp_path / "box")
        await box.open()
        world = make(state, hub, box)
        try:
            await asyncio.wait_for(scenario(world), 20)
        finally:
            if world.client is not None:
                await world.client.close()
            await world.hub.close()
            box.close()

    asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
