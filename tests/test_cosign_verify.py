"""The hub's witness key at enrollment, and the box checking every cosignature against it: pinned with the
pairing (edge/uplink/enroll.py, pairing.py), checked by ControlClient before on_cosignature (real TLS 1.3 on
127.0.0.1 against the reference hub, tests/hubworld.py), and old pairings without a key still working.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edge import checkpoint, jws, keyfiles
from edge.audit import AuditLog, StoredCheckpoint
from edge.hub import ca
from edge.hub.server import RunningHub
from edge.hub.state import WITNESS_KEY, HubError, HubState
from edge.identity import load_or_create
from edge.store import Store
from edge.uplink import controlwire as wire
from edge.uplink import pairing
from edge.uplink.control import Backoff, ControlClient, HubCosignature, control_url
from edge.uplink.enroll import EnrollError, Enrollment, make_csr, parse_response
from tests.hubworld import PairedBox, pair, run_world, start_hub, until

SMALL_ORDER = b"\x01" + b"\x00" * 31  # y = 1: the identity point


@pytest.fixture
def hub_state(tmp_path: Path) -> HubState:
    return HubState.create(tmp_path / "hub", hub_id="met-hub-1", agency="Met", now_utc_ns=time.time_ns())


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


# --- the enrollment answer ----------------------------------------------------------------------------------


def test_the_box_checks_the_witness_in_the_enrollment_answer(hub_state: HubState, tmp_path: Path) -> None:
    identity = load_or_create(tmp_path / "b")
    device_id = identity.public.device_id
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.pem(ca.issue_client(hub_state.root_key(), hub_state.root, make_csr(tls_key, device_id),
                                  device_id=device_id, now=datetime.now(UTC)))  # fmt: skip
    key = hub_state.witness_public()
    witness = {"name": "edge.hub/met-hub-1", "key": jws.b64url_encode(key)}
    good = {
        "hub_id": hub_state.hub_id, "agency": hub_state.agency, "client_cert": cert,
        "keyset": hub_state.keyset(), "terms": {"version": "v1", "text": "terms"}, "witness": witness,
    }  # fmt: skip

    def parse(body: dict[str, Any]) -> Any:
        return parse_response(
            json.dumps(body).encode(),
            hub_url="https://127.0.0.1:1",
            device_id=device_id,
            root_pem=hub_state.root_pem,
            tls_key=tls_key,
            now_s=int(time.time()),
        )

    enrollment = parse(good)
    assert (enrollment.witness_name, enrollment.witness_key) == ("edge.hub/met-hub-1", key)
    old_hub = parse({k: v for k, v in good.items() if k != "witness"})
    assert old_hub.witness_name is None and old_hub.witness_key is None
    cases: list[tuple[object, str]] = [
        ({**witness, "name": "edge.hub/another-hub"}, "witness name is not 'edge.hub/met-hub-1'"),
        ({**witness, "name": "met-hub-1"}, "witness name"),
        ({**witness, "key": jws.b64url_encode(key[:31])}, "32-byte"),
        ({**witness, "key": "not base64!"}, "32-byte"),
        ({**witness, "key": jws.b64url_encode(SMALL_ORDER)}, "small-order"),
        ({**witness, "extra": 1}, "exactly"),
        ("edge.hub/met-hub-1", "exactly"),
    ]
    for bad, why in cases:
        with pytest.raises(EnrollError, match=why):
            parse({**good, "witness": bad})
    # A hub id a key name cannot hold gets the hashed name, on both ends.
    assert wire.witness_name("met hub+1").startswith("edge.hub/") and " " not in wire.witness_name(
        "met hub+1"
    )


# --- pinned with the pairing, checked on the control channel ------------------------------------------------


class World:
    def __init__(self, state: HubState, hub: RunningHub, box: PairedBox) -> None:
        self.state, self.hub, self.box = state, hub, box
        self.cosigned: list[HubCosignature] = []
        self.client: ControlClient | None = None

    def make_client(self, p: pairing.Pairing) -> ControlClient:
        assert self.box.gate is not None
        self.client = ControlClient(
            control_url(self.hub.url), self.box.ssl_context(), device_id=self.box.device_id,
            gate=self.box.gate, executor=self.box.db, on_cosignature=self.cosigned.append,
            witness_name=p.witness_name, witness_key=p.witness_key, heartbeat_s=5.0,
            backoff=Backoff(initial_s=0.05, max_s=0.2), rng=random.Random(3),
        )  # fmt: skip
        self.client.start()
        return self.client

    async def checkpoint(self) -> StoredCheckpoint:
        store = self.box.store
        assert store is not None
        cp: StoredCheckpoint = await self.box.run_db(
            AuditLog(store).checkpoint, self.box.identity, now_utc_ns=time.time_ns(), force=True
        )
        return cp

    async def pinned(self) -> pairing.Pairing:
        store = self.box.store
        assert store is not None
        p: pairing.Pairing | None = await self.box.run_db(pairing.load, store)
        assert p is not None
        return p


def run(state: HubState, tmp_path: Path, scenario: Callable[[World], Awaitable[None]]) -> None:
    run_world(World, state, tmp_path, scenario)


def test_the_witness_is_pinned_and_a_good_cosignature_passes_verified(
    hub_state: HubState, tmp_path: Path
) -> None:
    async def scenario(w: World) -> None:
        p = await w.pinned()
        assert p == w.box.pairing  # the stored pairing reads back whole, witness included
        assert p.witness_name == "edge.hub/met-hub-1" and p.witness_key == hub_state.witness_public()
        client = w.make_client(p)
        await w.hub.control.wait_connected(w.box.device_id, timeout=5)
        cp = await w.checkpoint()
        t0 = time.perf_counter()
        await client.send_checkpoint(cp.note)
        await until(lambda: bool(w.cosigned))
        took = time.perf_counter() - t0
        (got,) = w.cosigned
        assert got.verified and got.size == cp.tree_size and got.note == cp.note.decode()
        assert got.timestamp is not None and abs(got.timestamp - time.time()) < 5
        text, _ = checkpoint.parse_note(cp.note)
        assert wire.verify_cosignature(
            text, got.line, name=p.witness_name or "", public_key=p.witness_key or b""
        )
        assert client.ignored == 0 and took < 1

    run(hub_state, tmp_path, scenario)


def test_a_cosignature_by_another_key_is_dropped_and_the_right_one_still_passes(
    hub_state: HubState, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hub's witness key is swapped after the box pinned it (a compromised or impostor hub): its
    cosignature does not verify, so the box logs and drops it; the checkpoint stays pending, and a
    cosignature by the pinned key, sent later, is taken."""

    async def scenario(w: World) -> None:
        p = await w.pinned()
        pinned_key = hub_state.witness_key()
        keyfiles.write_atomically(hub_state.data_dir / WITNESS_KEY, _raw(Ed25519PrivateKey.generate()),
                                  keyfiles.PRIVATE_MODE, HubError)  # fmt: skip
        assert hub_state.witness_public() != p.witness_key
        client = w.make_client(p)
        await w.hub.control.wait_connected(w.box.device_id, timeout=5)
        cp = await w.checkpoint()
        await client.send_checkpoint(cp.note)
        await until(lambda: len(hub_state.cosignatures(w.box.device_id)) == 1)  # the hub did cosign
        await until(lambda: client.ignored == 1)
        assert w.cosigned == []

        # Other wrong lines: another name, a tampered signature, junk. All dropped.
        text, _ = checkpoint.parse_note(cp.note)
        good = wire.cosign(text, name=p.witness_name or "", key=pinned_key, timestamp=int(time.time()))
        wrong_name = wire.cosign(text, name="edge.hub/other", key=pinned_key, timestamp=good.timestamp)
        tampered = dataclasses.replace(good, signature=bytes([good.signature[0] ^ 1]) + good.signature[1:])
        for line in (wrong_name.line(), tampered.line(), "— edge.hub/met-hub-1 AAAA"):
            await w.hub.control.send_raw(
                w.box.device_id, json.dumps({"type": "cosignature", "size": cp.tree_size, "line": line})
            )
        await until(lambda: client.ignored == 4)
        assert w.cosigned == []

        await w.hub.control.send_raw(
            w.box.device_id, json.dumps({"type": "cosignature", "size": cp.tree_size, "line": good.line()})
        )
        await until(lambda: bool(w.cosigned))
        (got,) = w.cosigned
        assert got.verified and got.line == good.line() and got.timestamp == good.timestamp

    with caplog.at_level(logging.WARNING, logger="edge.uplink.control"):
        run(hub_state, tmp_path, scenario)
    dropped = [r.getMessage() for r in caplog.records if "dropped a cosignature" in r.getMessage()]
    assert len(dropped) == 4 and any("bad cosignature" in m for m in dropped)
    assert any("not a cosignature by edge.hub/met-hub-1" in m for m in dropped)


def test_an_old_pairing_without_a_witness_keeps_working_unverified(
    hub_state: HubState, tmp_path: Path
) -> None:
    async def scenario(w: World) -> None:
        store = w.box.store
        assert store is not None
        old = dataclasses.replace(w.box.pairing, witness_name=None, witness_key=None)
        await w.box.run_db(pairing.save, store, old)
        p = await w.pinned()
        assert p.witness_name is None and p.witness_key is None and p == old
        assert await w.box.run_db(store.setting, pairing.WITNESS_KEY_SETTING) is None
        client = w.make_client(p)
        await w.hub.control.wait_connected(w.box.device_id, timeout=5)
        cp = await w.checkpoint()
        await client.send_checkpoint(cp.note)
        await until(lambda: bool(w.cosigned))
        (got,) = w.cosigned
        assert not got.verified and got.timestamp is None and got.line.startswith("— edge.hub/met-hub-1 ")

    run(hub_state, tmp_path, scenario)


def test_re_pairing_with_a_hub_without_a_witness_clears_the_pinned_one(
    hub_state: HubState, tmp_path: Path
) -> None:
    data = tmp_path / "box"

    async def main() -> None:
        hub = await start_hub(hub_state)
        try:
            box = await pair(hub_state, hub.url, data)
        finally:
            await hub.close()
        assert box.pairing.witness_key is not None
        box.close()

    asyncio.run(main())
    store = Store.open(data)
    try:
        first = pairing.load(store)
        assert first is not None
        # The same pin path with an enrollment from a hub that sent no witness (fields left at None).
        enrollment = Enrollment(
            hub_url=first.hub_url, root_pem=first.root_pem, hub_id=first.hub_id, agency=first.agency,
            client_cert_pem=first.client_cert_pem, keyset=first.keyset, terms=first.terms,
            tls_key=ec.generate_private_key(ec.SECP256R1()),
        )  # fmt: skip
        again = pairing.pin(store, data, enrollment, actor="test", now_utc_ns=time.time_ns(), replace=True)
        assert again.witness_key is None
        loaded = pairing.load(store)
        assert loaded is not None and loaded.witness_name is None and loaded.witness_key is None
        rows = store.query("SELECT key FROM settings WHERE key LIKE 'pairing_witness%'")
        assert rows == []
    finally:
        store.close()
