"""The request gate against a real SQLite store: nonces, replays (also across a restart), the owner's policy,
the audit trail of every request and the signed decision message."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge import identity
from edge.audit import AuditLog
from edge.auditverify import verify_log
from edge.clock import NS_PER_S
from edge.store import Store
from edge.uplink.gate import Gate
from edge.uplink.request import HubKeys, sign_token

NOW = 1_795_253_705
SHOP = (51.50135, -0.14189)


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class World:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.hub_key = Ed25519PrivateKey.generate()
        pub = self.hub_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.hub = HubKeys(hub_id="hub-1", keys={"k1": pub})
        self.ident = identity.load_or_create(data)
        self.viewer = X25519PrivateKey.generate()
        self.open()
        now = NOW * NS_PER_S
        for name, consent in (("door", "integrated"), ("till", "private"), ("yard", "registered")):
            cam = self.store.add_camera(
                name=name, url=f"rtsp://192.0.2.1/{name}", username=None, password_blob=None, max_age_s=None,
                now_utc_ns=now,
            )  # fmt: skip
            self.store.update_camera(cam.id, lat=SHOP[0], lon=SHOP[1], consent=consent)

    def open(self) -> None:
        self.store = Store.open(self.data)
        self.gate = Gate(self.store, self.ident, self.hub)

    def close(self) -> None:
        self.store.close()

    def token(self, now: int = NOW, **over: Any) -> str:
        claims: dict[str, Any] = {
            "iss": "hub-1", "aud": self.ident.public.device_id, "jti": _b64(secrets.token_bytes(16)),
            "iat": now, "nbf": now, "exp": now + 240, "sub": "PC 4512", "case": "2026/0042",
            "reason": "crime_in_progress", "scope": {"cameras": [1], "mode": "live"}, "max_dur": 600,
            "incident": {"lat": 51.5012, "lon": -0.1420, "kind": "robbery"},
            "viewer_key": _b64(self.viewer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)),
            "dev_nonce": self.gate.issue_nonce(now_utc_ns=now * NS_PER_S),
        }  # fmt: skip
        claims |= over
        return sign_token(claims, kid="k1", key=self.hub_key)

    def handle(self, token: str | bytes, now: int = NOW) -> Any:
        return self.gate.handle(token, now_utc_ns=now * NS_PER_S + 123)

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for _s, raw, _l in AuditLog(self.store).raw_entries()]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "data")
    yield w
    w.close()


def test_accepted_request_is_logged_and_answered_with_a_signed_decision(world: World) -> None:
    token = world.token()
    out = world.handle(token)
    assert out.accepted and out.code is None
    msg = dict(out.message)
    sig = base64.urlsafe_b64decode(msg.pop("sig") + "==")
    Ed25519PublicKey.from_public_bytes(world.ident.public.public_key).verify(sig, rfc8785.dumps(msg))
    assert (
        msg["decision"] == "accepted" and msg["session"] and msg["device_id"] == world.ident.public.device_id
    )
    received, accepted = world.audit()[-2:]
    assert received["type"] == "request.received" and received["details"]["jws"] == token
    assert received["request"] == out.request.jti and received["cameras"] == [1]
    assert accepted["type"] == "request.accepted" and accepted["request"] == out.request.jti


def test_private_camera_is_refused_exactly_like_a_missing_one(world: World) -> None:
    private = world.handle(world.token(scope={"cameras": [2], "mode": "live"}))
    missing = world.handle(world.token(scope={"cameras": [99], "mode": "live"}))
    registered = world.handle(world.token(scope={"cameras": [3], "mode": "live"}))
    # The answers differ only in what the hub itself sent (the camera id it asked for, its jti).
    assert (private.code, private.detail.replace("2", "99")) == (missing.code, missing.detail)
    assert private.code == "no_such_camera" and registered.code == "not_integrated"
    assert {k: v for k, v in private.message.items() if k not in ("jti", "sig")} == {
        k: v for k, v in missing.message.items() if k not in ("jti", "sig")
    }


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda w: w.token(dev_nonce="never-issued-nonce-AAAAAA"), "bad_nonce"),
        (lambda w: w.token(incident={"lat": 51.52, "lon": -0.14, "kind": "robbery"}), "too_far"),
        (lambda w: w.token(max_dur=3600), "duration_over_cap"),
        (lambda w: w.token(aud="edge-someone-else"), "wrong_audience"),
        (lambda w: w.token(now=NOW - 400), "expired"),
        (lambda w: b"x" * 8193, "too_large"),
        (lambda w: "not.a.jws!", "malformed"),
    ],
)
def test_every_refusal_has_its_code_and_leaves_an_audit_entry(world: World, mutate: Any, code: str) -> None:
    out = world.handle(mutate(world))
    assert (out.accepted, out.code) == (False, code)
    received, refused = world.audit()[-2:]
    assert received["type"] == "request.received" and refused["type"] == "request.refused"
    assert refused["details"]["code"] == code and received["request"] == refused["request"] == out.jti
    if code == "too_large":
        assert received["details"]["jws"] is None and received["details"]["bytes"] == 8193


def test_nonce_is_single_use_and_expires(world: World) -> None:
    token = world.token()
    assert world.handle(token).accepted
    assert world.handle(token).code == "bad_nonce"  # the same token again: its nonce is spent
    stale = world.token()
    assert world.handle(stale, now=NOW + 121).code == "bad_nonce"


def test_a_replayed_jti_is_refused_also_after_a_restart(world: World) -> None:
    jti = _b64(secrets.token_bytes(16))
    assert world.handle(world.token(jti=jti)).accepted
    assert world.handle(world.token(jti=jti)).code == "replayed"  # fresh nonce, same jti
    world.close()
    world.open()  # the box restarts
    assert world.handle(world.token(jti=jti)).code == "replayed"


def test_hourly_quota_counts_accepted_requests(world: World) -> None:
    codes = [world.handle(world.token(), now=NOW + i).code for i in range(5)]
    assert codes == [None, None, None, None, "quota"]


def test_the_audit_log_of_requests_verifies(world: World) -> None:
    for _ in range(3):
        world.handle(world.token())
    world.handle(b"garbage")
    AuditLog(world.store).checkpoint(world.ident, now_utc_ns=NOW * NS_PER_S)
    result = verify_log(AuditLog(world.store), world.ident.public)
    assert result.ok and result.entries == 8


def test_the_kill_switch_refuses_everything_until_released(world: World) -> None:
    from edge import owner

    assert owner.set_killswitch(world.store, True, actor="cli:root", now_utc_ns=NOW * NS_PER_S)
    assert not owner.set_killswitch(world.store, True, actor="cli:root", now_utc_ns=NOW * NS_PER_S)
    out = world.handle(world.token())
    assert (out.accepted, out.code) == (False, "killswitch")
    owner.set_killswitch(world.store, False, actor="cli:root", now_utc_ns=NOW * NS_PER_S)
    assert world.handle(world.token()).accepted
    kinds = [(e["type"], e["details"].get("engaged")) for e in world.audit() if e["type"] == "killswitch"]
    assert kinds == [("killswitch", True), ("killswitch", False)]
