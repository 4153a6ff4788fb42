"""The control channel end to end (edge/uplink/control.py against edge/hub/control.py): a box paired with the
reference hub over real TLS 1.3 on 127.0.0.1, requests answered through the real gate, heartbeats,
reconnection, hostile frames, and co-signed checkpoints.

Each test runs hub and box in one event loop; intervals are shrunk by injection so each takes ~1 s.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import checkpoint
from edge.audit import AuditLog
from edge.hub import ca
from edge.hub.control import ControlError
from edge.hub.server import RunningHub
from edge.hub.state import HubState
from edge.uplink import controlwire as wire
from edge.uplink.control import Backoff, ControlClient, HubCosignature, control_url
from edge.uplink.enroll import make_csr, trust_context
from edge.uplink.gate import Outcome
from tests.hubworld import PairedBox, request_token, run_world, start_hub

FAST = Backoff(initial_s=0.05, max_s=0.2)


@pytest.fixture
def hub_state(tmp_path: Path) -> HubState:
    return HubState.create(tmp_path / "hub", hub_id="met-hub-1", agency="Met", now_utc_ns=time.time_ns())


class World:
    """One hub, one paired box with its client; built inside the test's loop by :func:`run`."""

    def __init__(self, state: HubState, hub: RunningHub, box: PairedBox) -> None:
        self.state, self.hub, self.box = state, hub, box
        self.accepted: list[Outcome] = []
        self.cosigned: list[HubCosignature] = []
        self.client: ControlClient | None = None

    def make_client(self, **kw: Any) -> ControlClient:
        assert self.box.gate is not None
        kw.setdefault("heartbeat_s", 5.0)
        kw.setdefault("backoff", FAST)
        self.client = ControlClient(
            control_url(self.hub.url),
            self.box.ssl_context(),
            device_id=self.box.device_id,
            gate=self.box.gate,
            executor=self.box.db,
            on_accepted=self.accepted.append,
            on_cosignature=self.cosigned.append,
            rng=random.Random(7),
            **kw,
        )
        self.client.start()
        return self.client

    async def connected(self, after: int = 0) -> None:
        await self.hub.control.wait_connected(self.box.device_id, timeout=5, after=after)


def run(state: HubState, tmp_path: Path, scenario: Callable[[World], Awaitable[None]], **hub_kw: Any) -> None:
    run_world(World, state, tmp_path, scenario, **hub_kw)


def _verify_decision(decision: dict[str, Any], public_key: bytes) -> None:
    body = {k: v for k, v in decision.items() if k != "sig"}
    sig = base64.urlsafe_b64decode(decision["sig"] + "==")
    Ed25519PublicKey.from_public_bytes(public_key).verify(sig, rfc8785.dumps(body))


# --- connecting, requests -----------------------------------------------------------------------------------


def test_hello_nonce_request_and_signed_decisions(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        t0 = time.perf_counter()
        w.make_client()
        await w.connected()
        assert time.perf_counter() - t0 < 2
        assert w.hub.control.connected() == [w.box.device_id]
        device_id = w.box.device_id

        nonce = await w.hub.control.ask_nonce(device_id)
        token = request_token(w.state, device_id, nonce)
        decision = await w.hub.control.send_request(device_id, token)
        assert decision["decision"] == "accepted" and decision["code"] is None
        assert decision["device_id"] == device_id and decision["session"]
        _verify_decision(decision, w.box.identity.public.public_key)  # a second check, by hand
        await asyncio.sleep(0.05)
        assert [o.jti for o in w.accepted] == [decision["jti"]]

        # The same nonce again: refused, signed, with its code; so are a private camera and garbage.
        again = await w.hub.control.send_request(device_id, request_token(w.state, device_id, nonce))
        assert (again["decision"], again["code"]) == ("refused", "bad_nonce")
        private = request_token(
            w.state,
            device_id,
            await w.hub.control.ask_nonce(device_id),
            scope={"cameras": [2], "mode": "live"},
        )
        refused = await w.hub.control.send_request(device_id, private)
        assert (refused["decision"], refused["code"]) == ("refused", "no_such_camera")
        garbage = await w.hub.control.send_request(device_id, "not.a.token")
        assert garbage["code"] == "malformed"
        assert (
            garbage["jti"]
            == base64.urlsafe_b64encode(hashlib.sha256(b"not.a.token").digest()).rstrip(b"=").decode()
        )
        for d in (again, refused, garbage):
            _verify_decision(d, w.box.identity.public.public_key)
        assert len(w.accepted) == 1

        # Every request is in the box's audit log.
        store = w.box.store
        assert store is not None
        entries = await w.box.run_db(lambda: [(e.type, e.request) for e in AuditLog(store).entries()])
        requests = [e for e in entries if e[0].startswith("request.")]
        assert requests == [
            ("request.received", decision["jti"]), ("request.accepted", decision["jti"]),
            ("request.received", again["jti"]), ("request.refused", again["jti"]),
            ("request.received", refused["jti"]), ("request.refused", refused["jti"]),
            ("request.received", garbage["jti"]), ("request.refused", garbage["jti"]),
        ]  # fmt: skip

    run(hub_state, tmp_path, scenario)


def test_a_forged_decision_is_rejected_by_the_hub(hub_state: HubState, tmp_path: Path) -> None:
    """The hub checks the decision with the enrolled device key: a box whose gate signs with another key
    (a stolen client certificate on another machine) is caught."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.identity import DeviceIdentity

    async def scenario(w: World) -> None:
        assert w.box.gate is not None
        w.box.gate.identity = DeviceIdentity(Ed25519PrivateKey.generate())
        w.make_client()
        await w.connected()
        nonce = await w.hub.control.ask_nonce(w.box.device_id)
        with pytest.raises(ControlError) as e:
            await w.hub.control.send_request(w.box.device_id, request_token(w.state, w.box.device_id, nonce))
        assert e.value.kind == "bad_decision"

    run(hub_state, tmp_path, scenario)


# --- who may connect ----------------------------------------------------------------------------------------


def test_the_hub_refuses_clients_without_its_certificate(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        url = control_url(w.hub.url)

        async def attempt(ctx: ssl.SSLContext) -> BaseException:
            async with aiohttp.ClientSession() as s:
                with pytest.raises((aiohttp.ClientError, ConnectionError)) as e:
                    async with s.ws_connect(url, ssl=ctx):
                        pass
            return e.value

        # No client certificate: 401 before the upgrade.
        err = await attempt(trust_context(hub_state.root_pem))
        assert isinstance(err, aiohttp.WSServerHandshakeError) and err.status == 401

        # A certificate for the same device id from another CA: the TLS handshake fails.
        other = HubState.create(tmp_path / "other", hub_id="x", agency="x", now_utc_ns=time.time_ns())
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue_client(
            other.root_key(), other.root, make_csr(key, w.box.device_id), device_id=w.box.device_id,
            now=ca_now(),
        )  # fmt: skip
        ctx = _ctx_with(tmp_path, hub_state.root_pem, ca.pem(cert), key)
        err = await attempt(ctx)
        assert not isinstance(err, aiohttp.WSServerHandshakeError)  # never got an HTTP answer
        assert w.hub.control.connections == 0

    run(hub_state, tmp_path, scenario)


def test_the_box_refuses_a_hub_not_certified_by_the_pinned_root(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        other = HubState.create(tmp_path / "other", hub_id="x", agency="x", now_utc_ns=time.time_ns())
        impostor = await start_hub(hub_state, issuer=other)
        try:
            w.hub, real = impostor, w.hub
            client = w.make_client()
            await asyncio.sleep(0.6)
            assert client.connections == 0 and not client.connected
            assert impostor.control.connections == 0 and len(client.delays) >= 3
            w.hub = real
        finally:
            await impostor.close()

    run(hub_state, tmp_path, scenario)


# --- staying connected --------------------------------------------------------------------------------------


def test_heartbeat_loss_reconnects(hub_state: HubState, tmp_path: Path) -> None:
    """The hub says nothing but its key set for 3 of the box's heartbeat intervals: the box drops the
    connection and comes back after a short jittered delay (the hub spoke on it: the backoff restarts)."""

    async def scenario(w: World) -> None:
        t0 = time.perf_counter()
        client = w.make_client(heartbeat_s=0.1)
        await w.connected(after=3)
        took = time.perf_counter() - t0
        assert client.connections >= 4
        delays = list(client.delays)[:3]
        assert all(FAST.initial_s / 2 <= d <= FAST.initial_s for d in delays), delays
        assert len(set(delays)) == len(delays)  # jittered
        assert took < 3

    run(hub_state, tmp_path, scenario, heartbeat_s=60.0)


def test_an_unreachable_hub_is_retried_with_growing_jittered_delays(
    hub_state: HubState, tmp_path: Path
) -> None:
    async def scenario(w: World) -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        assert w.box.gate is not None
        client = ControlClient(
            f"wss://127.0.0.1:{dead}/v1/control", w.box.ssl_context(), device_id=w.box.device_id,
            gate=w.box.gate, executor=w.box.db, backoff=FAST, rng=random.Random(7),
        )  # fmt: skip
        client.start()
        try:
            while len(client.delays) < 4:
                await asyncio.sleep(0.05)
        finally:
            await client.close()
        for attempt, delay in enumerate(list(client.delays)[:4], start=1):
            step = min(FAST.max_s, FAST.initial_s * 2**attempt)
            assert step / 2 <= delay <= step, (attempt, delay)
        assert client.connections == 0

    run(hub_state, tmp_path, scenario)


def test_heartbeats_keep_a_quiet_channel_open(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        client = w.make_client(heartbeat_s=0.1)
        await w.connected()
        await asyncio.sleep(0.8)  # 8 intervals with nothing but heartbeats
        assert client.connections == 1 and w.hub.control.connections == 1 and not client.delays

    run(hub_state, tmp_path, scenario, heartbeat_s=0.1)


def test_the_box_reconnects_after_a_hub_restart(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        client = w.make_client()
        await w.connected()
        port = w.hub.port
        await w.hub.close()
        w.hub = await start_hub(hub_state, port=port)
        t0 = time.perf_counter()
        await w.connected()
        assert time.perf_counter() - t0 < 2 and client.connections == 2
        nonce = await w.hub.control.ask_nonce(w.box.device_id)
        decision = await w.hub.control.send_request(
            w.box.device_id, request_token(w.state, w.box.device_id, nonce)
        )
        assert decision["decision"] == "accepted"

    run(hub_state, tmp_path, scenario)


def test_hostile_frames_are_ignored_and_the_connection_survives(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        client = w.make_client()
        await w.connected()
        junk: list[str | bytes] = [
            json.dumps({"type": "request", "token": "x" * (wire.MAX_MESSAGE_BYTES + 1)}),  # over 64 KiB
            "not json",
            "[1, 2]",
            '{"type": "launch_missiles"}',
            '{"kind": "nonce_request"}',
            '{"type": "request"}',
            '{"type": "request", "token": 5}',
            '{"type": "nonce_request", "type": "request"}',
            '{"type": "cosignature", "size": 3, "line": "— x AAAA"}',  # nothing was sent at size 3
            '{"type": "heartbeat", "x": NaN}',
            b"\x00\xff binary",
        ]
        for frame in junk:
            await w.hub.control.send_raw(w.box.device_id, frame)
        nonce = await w.hub.control.ask_nonce(w.box.device_id)
        assert nonce and client.connections == 1 and client.ignored == len(junk)

        # And the hub ignores junk from a box, before and after hello; a hello for another device is closed.
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(control_url(w.hub.url), ssl=w.box.ssl_context()) as ws,
        ):
            for frame in ["nonsense", '{"type": "nonce", "nonce": "n"}', "x" * 70_000]:
                await ws.send_str(frame)
            await ws.send_bytes(b"\x00")
            await ws.send_str(json.dumps({"type": "hello", "device_id": w.box.device_id, "version": "t"}))
            await w.connected(after=1)  # replaced the client's connection
            await ws.send_str('{"type": "decision", "jti": "nobody asked"}')
            await ws.send_str('{"type": "nonce", "nonce": "unasked"}')
            await asyncio.sleep(0.1)
            assert w.hub.control.ignored == 6 and not ws.closed
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(control_url(w.hub.url), ssl=w.box.ssl_context()) as ws,
        ):
            await ws.send_str(json.dumps({"type": "hello", "device_id": "edge-someone-else", "version": "t"}))
            msg = await ws.receive(timeout=2)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == wire.CLOSE_POLICY
        await w.connected(after=2)  # the box's own client came back

    run(hub_state, tmp_path, scenario)


# --- checkpoints --------------------------------------------------------------------------------------------


def test_checkpoints_are_cosigned_verified_and_stored(hub_state: HubState, tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        client = w.make_client()
        await w.connected()
        store = w.box.store
        assert store is not None
        cp = await w.box.run_db(AuditLog(store).checkpoint, w.box.identity, now_utc_ns=time.time_ns())
        t0 = time.perf_counter()
        await client.send_checkpoint(cp.note)
        while not w.cosigned:
            await asyncio.sleep(0.01)
        took = time.perf_counter() - t0
        (got,) = w.cosigned
        assert got.size == cp.tree_size and got.note == cp.note.decode()

        # Verified by a second, by-hand reading of c2sp.org/tlog-cosignature.
        name, public = hub_state.witness_name, hub_state.witness_public()
        assert got.line.startswith(f"— {name} ")
        raw = base64.b64decode(got.line.split(" ")[2], validate=True)
        assert len(raw) == 4 + 8 + 64
        assert raw[:4] == hashlib.sha256(name.encode() + b"\n\x04" + public).digest()[:4]
        (ts,) = struct.unpack(">Q", raw[4:12])
        assert abs(ts - time.time()) < 5
        text, _ = checkpoint.parse_note(cp.note)
        Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], b"cosignature/v1\ntime %d\n" % ts + text)
        assert wire.verify_cosignature(text, got.line, name=name, public_key=public).timestamp == ts
        # The cosigned note (box signature + hub cosignature) still verifies as the box's checkpoint.
        cosigned_note = cp.note + got.line.encode() + b"\n"
        origin = w.box.identity.public.log_origin
        checkpoint.verify(
            cosigned_note, name=origin, public_key=w.box.identity.public.public_key, origin=origin
        )
        assert hub_state.cosignatures(w.box.device_id) == [(cp.tree_size, cp.note.decode(), got.line)]

        # A tampered checkpoint is refused and not stored.
        lines = cp.note.decode().split("\n")
        lines[1] = str(cp.tree_size + 1)
        await client.send_checkpoint("\n".join(lines))
        await asyncio.sleep(0.2)
        assert len(w.cosigned) == 1 and len(hub_state.cosignatures(w.box.device_id)) == 1
        assert took < 1

    run(hub_state, tmp_path, scenario)


# --- helpers ------------------------------------------------------------------------------------------------


def ca_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _ctx_with(tmp: Path, root_pem: str, cert_pem: str, key: ec.EllipticCurvePrivateKey) -> ssl.SSLContext:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    ctx = trust_context(root_pem)
    (tmp / "c.pem").write_text(cert_pem)
    (tmp / "k.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx
