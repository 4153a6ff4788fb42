"""The registry (edge/uplink/registry.py): what the box builds from its store (never a private camera), how
the hub checks and keeps it (edge/hub/control.py, HubState.registry), and the box sending it over the real
control channel (TLS 1.3 on 127.0.0.1, tests/hubworld.py) on every change and every (re)connection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import jws, owner
from edge.hub.server import RunningHub
from edge.hub.state import HubState
from edge.identity import DeviceIdentity
from edge.store import Store
from edge.uplink import controlwire as wire
from edge.uplink import registry
from edge.uplink.control import Backoff, ControlClient, ControlError, control_url
from tests.hubworld import SHOP, PairedBox, run_world, start_hub, until

NOW_NS = 1_795_000_000_000_000_000
DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


@pytest.fixture
def hub_state(tmp_path: Path) -> HubState:
    return HubState.create(tmp_path / "hub", hub_id="met-hub-1", agency="Met", now_utc_ns=time.time_ns())


def _store_with_cameras(data: Path) -> Store:
    """door (integrated), till (private), back (registered, no position), gone (registered, removed)."""
    store = Store.open(data)
    for name in ("door", "till", "back", "gone"):
        store.add_camera(name=name, url=f"rtsp://192.0.2.1/{name}", username=None, password_blob=None,
                         max_age_s=None, now_utc_ns=NOW_NS)  # fmt: skip
    store.update_camera(1, lat=SHOP[0], lon=SHOP[1], consent="integrated", location="front door")
    store.update_camera(2, lat=SHOP[0], lon=SHOP[1])  # private, with a position: still never sent
    store.update_camera(3, consent="registered")
    store.update_camera(4, consent="registered")
    store.remove_camera(4, now_utc_ns=NOW_NS)
    return store


# --- the document -------------------------------------------------------------------------------------------


def test_the_document_holds_shared_active_cameras_only_and_is_signed(tmp_path: Path) -> None:
    identity = DeviceIdentity(Ed25519PrivateKey.generate())
    store = _store_with_cameras(tmp_path)
    try:
        doc = registry.build(store, identity, now_utc_ns=NOW_NS)
        assert doc.keys() == registry.MEMBERS and doc["type"] == "registry"
        assert doc["device_id"] == identity.public.device_id
        assert doc["version"] == NOW_NS // 1_000_000
        assert doc["cameras"] == [
            {"id": 1, "name": "door", "location": "front door", "lat": SHOP[0], "lon": SHOP[1],
             "consent": "integrated"},
            {"id": 3, "name": "back", "location": None, "lat": None, "lon": None, "consent": "registered"},
        ]  # fmt: skip
        assert doc["owner_contact"] is None
        checked = registry.verify(doc, identity.public.public_key, identity.public.device_id)
        assert [c.id for c in checked.cameras] == [1, 3] and checked.version == doc["version"]
        # Survives the wire: encoded, strictly parsed, verified.
        again = wire.decode(wire.encode(doc), wire.BOX_TYPES)
        registry.verify(again, identity.public.public_key, identity.public.device_id)

        # A camera turned private disappears from the next document; the contact appears.
        store.update_camera(1, consent="private")
        owner.set_contact(store, email="shop@example.org", phone=None, actor="test", now_utc_ns=NOW_NS)
        nxt = registry.build(store, identity, now_utc_ns=NOW_NS)
        assert [c["id"] for c in nxt["cameras"]] == [3]
        assert nxt["owner_contact"] == {"email": "shop@example.org", "phone": None}
        assert "till" not in json.dumps(nxt) and "door" not in json.dumps(nxt)

        # Versions only go up: the same millisecond, and a clock stepped back a day.
        assert nxt["version"] == doc["version"] + 1
        back = registry.build(store, identity, now_utc_ns=NOW_NS - 86_400 * 10**9)
        assert back["version"] == nxt["version"] + 1
        later = registry.build(store, identity, now_utc_ns=NOW_NS + 10**9)
        assert later["version"] == NOW_NS // 1_000_000 + 1000
    finally:
        store.close()


def test_should_log_only_when_the_content_changes(tmp_path: Path) -> None:
    identity = DeviceIdentity(Ed25519PrivateKey.generate())
    store = _store_with_cameras(tmp_path)
    try:
        first = registry.build(store, identity, now_utc_ns=NOW_NS)
        assert registry.should_log(store, first)
        same = registry.build(store, identity, now_utc_ns=NOW_NS + 5 * 10**9)  # new version, same content
        assert not registry.should_log(store, same)
        store.update_camera(3, name="back yard")
        changed = registry.build(store, identity, now_utc_ns=NOW_NS + 6 * 10**9)
        assert registry.should_log(store, changed) and not registry.should_log(store, changed)
        details = registry.audit_details(changed)
        assert details == {
            "version": changed["version"],
            "cameras": [1, 3],
            "sha256": hashlib.sha256(rfc8785.dumps(changed)).hexdigest(),
        }
        # Reopening keeps what was logged and the version counter.
        store.close()
        store = Store.open(tmp_path)
        assert not registry.should_log(store, registry.build(store, identity, now_utc_ns=NOW_NS))
        assert int(store.setting(registry.VERSION_SETTING) or 0) == changed["version"] + 1
    finally:
        store.close()


def _resigned(doc: dict[str, Any], identity: DeviceIdentity, **over: Any) -> dict[str, Any]:
    return registry.sign({k: v for k, v in doc.items() if k != "sig"} | over, identity)


def _signed(identity: DeviceIdentity, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "registry", "device_id": identity.public.device_id, "version": 7,
        "cameras": [{"id": 1, "name": "door", "location": None, "lat": 51.5, "lon": -0.14,
                     "consent": "integrated"}],
        "owner_contact": None,
    }  # fmt: skip
    body |= over
    return registry.sign(body, identity)


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"version": 0}, "version"),
        ({"version": True}, "version"),
        ({"version": -1}, "version"),
        ({"cameras": {}}, "array"),
        ({"cameras": [{"id": 1}]}, "exactly"),
        (
            {
                "cameras": [
                    {"id": 1, "name": "a", "location": None, "lat": None, "lon": None, "consent": "private"}
                ]
            },
            "registered or integrated",
        ),
        (
            {
                "cameras": [
                    {
                        "id": 2,
                        "name": "a",
                        "location": None,
                        "lat": None,
                        "lon": None,
                        "consent": "registered",
                    },
                    {
                        "id": 2,
                        "name": "b",
                        "location": None,
                        "lat": None,
                        "lon": None,
                        "consent": "registered",
                    },
                ]
            },
            "ascending",
        ),
        (
            {
                "cameras": [
                    {"id": 1, "name": "a", "location": None, "lat": 91.0, "lon": 0.0, "consent": "registered"}
                ]
            },
            "range",
        ),
        (
            {
                "cameras": [
                    {"id": 1, "name": "a", "location": None, "lat": 1.0, "lon": None, "consent": "registered"}
                ]
            },
            "together",
        ),
        (
            {
                "cameras": [
                    {
                        "id": 1,
                        "name": None,
                        "location": None,
                        "lat": None,
                        "lon": None,
                        "consent": "registered",
                    }
                ]
            },
            "name",
        ),
        ({"owner_contact": {"email": "a@b.c"}}, "owner_contact"),
        ({"owner_contact": {"email": 5, "phone": None}}, "owner_contact"),
    ],
)
def test_the_hub_refuses_malformed_documents_even_when_signed(over: dict[str, Any], why: str) -> None:
    identity = DeviceIdentity(Ed25519PrivateKey.generate())
    with pytest.raises(registry.RegistryError, match=why):
        registry.verify(_signed(identity, **over), identity.public.public_key, identity.public.device_id)


def test_the_signature_device_and_members_are_checked_first() -> None:
    identity = DeviceIdentity(Ed25519PrivateKey.generate())
    other = DeviceIdentity(Ed25519PrivateKey.generate())
    key, device_id = identity.public.public_key, identity.public.device_id
    good = _signed(identity)
    registry.verify(good, key, device_id)
    sig = bytearray(jws.b64url_decode(good["sig"]) or b"")
    sig[5] ^= 0x01
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "sig": jws.b64url_encode(bytes(sig))}, "signature"),
        ({**good, "version": 8}, "signature"),  # a field changed after signing
        ({**good, "sig": "not base64!"}, "signature"),
        (_signed(other), "another device"),
        (_signed(other, device_id=device_id), "signature"),  # names this box, signed by another key
        ({**good, "extra": 1}, "unknown member"),
        ({k: v for k, v in good.items() if k != "owner_contact"}, "lacks owner_contact"),
        ({**good, "type": "registri"}, "not a registry"),
    ]
    for doc, why in cases:
        with pytest.raises(registry.RegistryError, match=why):
            registry.verify(doc, key, device_id)


# --- over the control channel -------------------------------------------------------------------------------


class World:
    def __init__(self, state: HubState, hub: RunningHub, box: PairedBox) -> None:
        self.state, self.hub, self.box = state, hub, box
        self.client: ControlClient | None = None

    def make_client(self) -> ControlClient:
        assert self.box.gate is not None
        self.client = ControlClient(
            control_url(self.hub.url), self.box.ssl_context(), device_id=self.box.device_id,
            gate=self.box.gate, executor=self.box.db, heartbeat_s=5.0,
            backoff=Backoff(initial_s=0.05, max_s=0.2), rng=random.Random(7),
        )  # fmt: skip
        self.client.start()
        return self.client

    async def build(self) -> dict[str, Any]:
        store = self.box.store
        assert store is not None
        doc: dict[str, Any] = await self.box.run_db(
            registry.build, store, self.box.identity, now_utc_ns=time.time_ns()
        )
        return doc


def run(state: HubState, tmp_path: Path, scenario: Callable[[World], Awaitable[None]]) -> None:
    run_world(World, state, tmp_path, scenario)


def test_the_hub_stores_and_acks_and_the_box_resends_after_a_reconnect(
    hub_state: HubState, tmp_path: Path
) -> None:
    async def scenario(w: World) -> None:
        device_id = w.box.device_id
        client = w.make_client()
        await w.hub.control.wait_connected(device_id, timeout=5)
        t0 = time.perf_counter()
        first = await w.build()
        assert await client.send_registry(first)
        await until(lambda: client.registry_acked == first["version"])
        took = time.perf_counter() - t0
        stored = hub_state.registry(device_id)
        assert stored is not None and stored.version == first["version"] and stored.doc == first
        assert [c["id"] for c in stored.doc["cameras"]] == [1]  # door; till is private
        assert took < 1

        # Door turned private: the next document says so at once and replaces the stored one.
        store = w.box.store
        assert store is not None
        await w.box.run_db(store.update_camera, 1, consent="private")
        withdrawn = await w.build()
        assert withdrawn["cameras"] == [] and withdrawn["version"] > first["version"]
        await client.send_registry(withdrawn)
        await until(lambda: client.registry_acked == withdrawn["version"])
        stored = hub_state.registry(device_id)
        assert stored is not None and stored.doc["cameras"] == []
        assert [r.device_id for r in hub_state.registries()] == [device_id]
        with pytest.raises(ControlError, match="not above"):
            await client.send_registry(first)  # an older document is a caller's bug

        # The hub restarts (its database kept): the box says hello and resends its latest; equal → ack.
        port = w.hub.port
        await w.hub.close()
        client.registry_acked = None
        w.hub = await start_hub(hub_state, port=port)
        await w.hub.control.wait_connected(device_id, timeout=5)
        await until(lambda: client.registry_acked == withdrawn["version"])
        assert client.connections == 2

        # A hub that lost the document gets it again on the next connection.
        with hub_state._db() as db:
            db.execute("DELETE FROM registry")
        await w.hub.control.close_all()
        await w.hub.control.wait_connected(device_id, timeout=5, after=1)
        await until(lambda: hub_state.registry(device_id) is not None)
        stored = hub_state.registry(device_id)
        assert stored is not None and stored.version == withdrawn["version"]

    run(hub_state, tmp_path, scenario)


def test_the_box_keeps_a_document_sent_while_disconnected(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        assert w.box.gate is not None
        client = ControlClient(
            control_url(w.hub.url), w.box.ssl_context(), device_id=w.box.device_id, gate=w.box.gate,
            executor=w.box.db, backoff=Backoff(initial_s=0.05, max_s=0.2),
        )  # fmt: skip
        w.client = client
        doc = await w.build()
        assert not await client.send_registry(doc)  # not connected yet: kept
        client.start()
        await until(lambda: client.registry_acked == doc["version"])
        assert hub_state.registry(w.box.device_id) is not None

        huge = _resigned(doc, w.box.identity, version=doc["version"] + 1, cameras=[
            {"id": i, "name": "x" * 1000, "location": None, "lat": None, "lon": None, "consent": "registered"}
            for i in range(1, 80)
        ])  # fmt: skip
        with pytest.raises(ControlError, match="over the hub's limit"):
            await client.send_registry(huge)

    run(hub_state, tmp_path, scenario)


def test_the_hub_ignores_forged_stale_and_foreign_documents(
    hub_state: HubState, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Frames sent by hand on the box's own TLS identity: each bad document is ignored and logged, the stored
    one stays, and the connection goes on (a good one afterwards is acked)."""

    async def scenario(w: World) -> None:
        device_id = w.box.device_id
        good = await w.build()
        other = DeviceIdentity(Ed25519PrivateKey.generate())
        sig = bytearray(jws.b64url_decode(good["sig"]) or b"")
        sig[0] ^= 0x80
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(control_url(w.hub.url), ssl=w.box.ssl_context()) as ws,
        ):
            await ws.send_str(json.dumps({"type": "hello", "device_id": device_id, "version": "t"}))

            async def ack_of(doc: dict[str, Any]) -> int:
                await ws.send_str(wire.encode(doc))
                while True:
                    msg = json.loads((await ws.receive(timeout=5)).data)
                    if msg["type"] == "registry_ack":
                        return int(msg["version"])

            assert await ack_of(good) == good["version"]
            ignored = w.hub.control.ignored
            bad = [
                {**good, "sig": jws.b64url_encode(bytes(sig))},  # a flipped bit
                _resigned(good, w.box.identity, version=good["version"] - 1),  # stale
                _resigned(good, other, device_id=other.public.device_id),  # another box's
                _resigned(good, w.box.identity, cameras=[{"id": 9}]),  # malformed
            ]
            for doc in bad:
                await ws.send_str(wire.encode(doc))
            newer = _resigned(good, w.box.identity, version=good["version"] + 5, cameras=[])
            assert await ack_of(newer) == newer["version"]  # every bad one before it was handled, no ack
            assert w.hub.control.ignored == ignored + len(bad)
            assert not ws.closed
        stored = hub_state.registry(device_id)
        assert stored is not None and stored.doc == newer
        assert hub_state.registry(other.public.device_id) is None
        logged = [r.getMessage() for r in caplog.records if r.name == "edge.hub.control"]
        assert any("signature does not verify" in m for m in logged)
        assert any("older than" in m for m in logged)
        assert any("names another device" in m for m in logged)

    with caplog.at_level(logging.INFO, logger="edge.hub.control"):
        run(hub_state, tmp_path, scenario)


# --- the documentation -------------------------------------------------------------------------------------


def test_the_protocol_examples_verify() -> None:
    """docs/protocol.md §4.1's example is a real document: it verifies under the device key shown with it."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("### 4.1 Registry") : text.index("### 4.2")]
    key_b64 = re.search(r"device key `([A-Za-z0-9_-]{43})`", section)
    assert key_b64 is not None
    key = jws.b64url_decode(key_b64.group(1))
    assert key is not None
    frames = [line for line in section.splitlines() if line.startswith('{"type":')]
    doc = wire.decode(frames[0], wire.BOX_TYPES)
    checked = registry.verify(doc, key, doc["device_id"])
    assert wire.encode(doc) == frames[0]  # the example is exactly what the box sends
    assert [c.consent for c in checked.cameras] == ["integrated", "registered"]
    ack = wire.decode(frames[1], wire.HUB_TYPES)
    assert ack == {"type": "registry_ack", "version": doc["version"]}
