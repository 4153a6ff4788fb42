"""Hub key sets (edge/uplink/keyset.py): the first set pinned at enrollment, rotation as the pure function
apply_keyset, the pinned set stored and rotated on the box, and the request verifier following it."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import jws
from edge.audit import AuditLog
from edge.hub.state import HubState
from edge.store import Store
from edge.uplink import pairing
from edge.uplink.enroll import Terms
from edge.uplink.keyset import (
    CODES,
    TYP,
    KeysetError,
    PinnedKeyset,
    apply_keyset,
    fingerprint,
    raw_public,
    sign_keyset,
)
from edge.uplink.request import Refused, sign_token, verify_token

HUB = "met-hub-1"
K1, K2, K3, STRANGER = (Ed25519PrivateKey.generate() for _ in range(4))


def pub(key: Ed25519PrivateKey) -> bytes:
    return raw_public(key)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(
    version: int, keys: list[tuple[str, Ed25519PrivateKey]], *, by: str, key: Ed25519PrivateKey
) -> str:
    return sign_keyset(HUB, version, [(kid, pub(k)) for kid, k in keys], kid=by, key=key)


def raw_claims(claims: dict[str, Any], *, by: str = "k1", key: Ed25519PrivateKey = K1, typ: str = TYP) -> str:
    return jws.sign(claims, typ=typ, kid=by, key=key)


def refusal(pinned: PinnedKeyset | None, token: str, **kw: Any) -> str:
    with pytest.raises(KeysetError) as e:
        apply_keyset(pinned, token, **kw)
    assert e.value.code in CODES
    assert e.value.message.isprintable() and "\n" not in e.value.message
    return e.value.code


FIRST = signed(1, [("k1", K1)], by="k1", key=K1)


def first() -> PinnedKeyset:
    return apply_keyset(None, FIRST, hub_id=HUB)


# --- the first set ------------------------------------------------------------------------------------------


def test_the_first_set_is_pinned_with_its_fingerprint() -> None:
    ks = first()
    assert (ks.hub_id, ks.version, dict(ks.keys), ks.revoked) == (HUB, 1, {"k1": pub(K1)}, frozenset())
    claims: dict[str, Any] = {"hub_id": HUB, "version": 1, "keys": [{"kid": "k1", "key": b64(pub(K1))}]}
    # The fingerprint is the SHA-256 of the RFC 8785 JSON of the claims, here computed by hand.
    canonical = '{"hub_id":"met-hub-1","keys":[{"key":"' + b64(pub(K1)) + '","kid":"k1"}],"version":1}'
    assert rfc8785.dumps(claims) == canonical.encode()
    assert ks.fingerprint == fingerprint(claims) == hashlib.sha256(canonical.encode()).hexdigest()
    assert ks.jws == FIRST
    hub = ks.hub_keys()
    assert hub.hub_id == HUB and dict(hub.keys) == {"k1": pub(K1)} and hub.revoked == frozenset()


def test_the_first_set_must_be_signed_by_a_key_it_contains() -> None:
    assert refusal(None, signed(1, [("k1", K1)], by="k2", key=K2)) == "unknown_key"
    assert refusal(None, signed(1, [("k1", K1)], by="k1", key=STRANGER)) == "bad_signature"


def test_the_first_set_must_name_the_hub_that_sent_it() -> None:
    assert refusal(None, FIRST, hub_id="another-hub") == "wrong_hub"


def test_a_flipped_bit_or_a_foreign_header_is_refused() -> None:
    header, payload, sig = FIRST.split(".")
    other = json.loads(base64.urlsafe_b64decode(payload + "=="))
    other["version"] = 2
    forged = header + "." + b64(json.dumps(other).encode()) + "." + sig
    assert refusal(None, forged) == "bad_signature"
    assert refusal(None, FIRST[:-2] + ("A" if FIRST[-2] != "A" else "B") + FIRST[-1]) in {
        "bad_signature",
        "malformed",  # a non-canonical last character
    }
    claims = {"hub_id": HUB, "version": 1, "keys": [{"kid": "k1", "key": b64(pub(K1))}]}
    assert refusal(None, raw_claims(claims, typ="edge-access+jwt")) == "bad_header"
    assert refusal(None, "a.b") == "malformed"
    assert refusal(None, "x" * 20000) == "too_large"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"extra": 1}, "unknown member"),
        ({"version": 0}, "version"),
        ({"version": True}, "version"),
        ({"version": 1.0}, "version"),
        ({"version": "1"}, "version"),
        ({"hub_id": ""}, "hub_id"),
        ({"hub_id": "hub\n2"}, "hub_id"),
        ({"keys": []}, "keys"),
        ({"keys": "k1"}, "keys"),
        ({"keys": [{"kid": "k1"}]}, "kid"),
        ({"keys": [{"kid": "k1", "key": "AAAA", "x": 1}]}, "kid"),
        ({"keys": [{"kid": "", "key": b64(pub(K1))}]}, "kid"),
        ({"keys": [{"kid": "k\u202e1", "key": b64(pub(K1))}]}, "kid"),
        ({"keys": [{"kid": "k1", "key": b64(pub(K1))}, {"kid": "k1", "key": b64(pub(K2))}]}, "twice"),
        ({"keys": [{"kid": "k1", "key": b64(pub(K1)[:31])}]}, "32-byte"),
        ({"keys": [{"kid": "k1", "key": b64(pub(K1)) + "="}]}, "32-byte"),
        ({"keys": [{"kid": "k1", "key": b64(pub(K1))}, {"kid": "s", "key": b64(bytes(32))}]}, "small-order"),
        ({"keys": [{"kid": f"k{i}", "key": b64(pub(K1))} for i in range(17)]}, "keys"),
    ],
)
def test_claims_are_exact(change: dict[str, Any], why: str) -> None:
    claims = {"hub_id": HUB, "version": 1, "keys": [{"kid": "k1", "key": b64(pub(K1))}], **change}
    with pytest.raises(KeysetError) as e:
        apply_keyset(None, raw_claims(claims))
    assert e.value.code == "bad_claims" and why in e.value.message


def test_missing_claims_are_named() -> None:
    with pytest.raises(KeysetError, match="lack keys, version"):
        apply_keyset(None, raw_claims({"hub_id": HUB}))


# --- rotation -----------------------------------------------------------------------------------------------


def test_rotation_forward_and_a_dropped_kid_is_revoked() -> None:
    v1 = first()
    v2 = apply_keyset(v1, signed(2, [("k1", K1), ("k2", K2)], by="k1", key=K1))
    assert (v2.version, list(v2.keys), v2.revoked) == (2, ["k1", "k2"], frozenset())
    v3 = apply_keyset(v2, signed(3, [("k2", K2), ("k3", K3)], by="k1", key=K1))  # the old key hands over
    assert (v3.version, list(v3.keys), v3.revoked) == (3, ["k2", "k3"], frozenset({"k1"}))
    v5 = apply_keyset(v3, signed(5, [("k3", K3)], by="k3", key=K3))  # versions may skip, never go back
    assert (v5.version, list(v5.keys), v5.revoked) == (5, ["k3"], frozenset({"k1", "k2"}))
    assert v1.version == 1 and list(v1.keys) == ["k1"]  # pure: the input is untouched
    assert len({v1.fingerprint, v2.fingerprint, v3.fingerprint, v5.fingerprint}) == 4


def test_a_version_that_does_not_increase_is_refused() -> None:
    v2 = apply_keyset(first(), signed(2, [("k1", K1), ("k2", K2)], by="k1", key=K1))
    assert refusal(v2, signed(2, [("k1", K1), ("k2", K2), ("k3", K3)], by="k1", key=K1)) == "old_version"
    assert refusal(v2, signed(1, [("k1", K1)], by="k1", key=K1)) == "old_version"
    assert refusal(v2, v2.jws) == "old_version"  # a replay of the pinned set


def test_a_set_signed_by_an_unknown_or_revoked_key_is_refused() -> None:
    v1 = first()
    # A stranger cannot introduce itself, even in a set that lists it.
    assert refusal(v1, signed(2, [("k1", K1), ("s", STRANGER)], by="s", key=STRANGER)) == "unknown_key"
    # A pinned kid with the wrong key's signature.
    assert refusal(v1, signed(2, [("k1", K1)], by="k1", key=STRANGER)) == "bad_signature"
    v2 = apply_keyset(v1, signed(2, [("k2", K2)], by="k1", key=K1))
    assert v2.revoked == {"k1"}
    with pytest.raises(KeysetError, match="revoked") as e:
        apply_keyset(v2, signed(3, [("k2", K2), ("k3", K3)], by="k1", key=K1))
    assert e.value.code == "unknown_key"


def test_a_revoked_kid_never_comes_back_and_a_kid_keeps_its_key() -> None:
    v2 = apply_keyset(first(), signed(2, [("k2", K2)], by="k1", key=K1))
    assert refusal(v2, signed(3, [("k2", K2), ("k1", K1)], by="k2", key=K2)) == "revoked_kid"
    assert refusal(v2, signed(3, [("k2", K3)], by="k2", key=K2)) == "kid_changed"


def test_a_rotation_for_another_hub_is_refused() -> None:
    other = sign_keyset("other-hub", 2, [("k1", pub(K1))], kid="k1", key=K1)
    assert refusal(first(), other) == "wrong_hub"


def test_the_reference_hub_rotates_in_steps_the_box_accepts(tmp_path: Path) -> None:
    state = HubState.create(tmp_path / "hub", hub_id=HUB, agency="Met", now_utc_ns=1_795_000_000 * 10**9)
    ks = apply_keyset(None, state.keyset(), hub_id=HUB)
    assert ks.fingerprint == state.keyset_fingerprint()
    (k1,) = state.current_kids()
    v2 = apply_keyset(ks, state.rotate_keys(add=1, now_utc_ns=1))
    v3 = apply_keyset(v2, state.rotate_keys(add=0, retire=[k1], now_utc_ns=2))
    assert v3.version == 3 and v3.revoked == {k1} and list(v3.keys) == state.current_kids()
    assert v3.fingerprint == state.keyset_fingerprint()


# --- on the box: stored, rotated, logged, enforced ----------------------------------------------------------


def _paired_store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path)
    pairing.save(
        store,
        pairing.Pairing(
            hub_id=HUB,
            agency="Met",
            hub_url="https://hub.example",
            root_pem="-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            client_cert_pem="",
            keyset=first(),
            terms=Terms(version="t1", text="the terms"),
            paired_utc_ns=5,
        ),
    )
    return store


def test_the_pinned_set_round_trips_and_rotation_is_logged_and_enforced(tmp_path: Path) -> None:
    store = _paired_store(tmp_path)
    try:
        loaded = pairing.load(store)
        assert (
            loaded is not None
            and loaded.keyset == first()
            and loaded.terms.sha256 == Terms("t1", "the terms").sha256
        )
        claims: dict[str, Any] = {
            "iss": HUB,
            "aud": "edge-x",
            "jti": b64(bytes(16)),
        }  # enough to reach the key check
        assert _code(sign_token(claims, kid="k1", key=K1), loaded) == "bad_claims"  # k1 is trusted

        rotated = pairing.rotate(
            store, signed(2, [("k2", K2)], by="k1", key=K1), actor="hub:met", now_utc_ns=10
        )
        again = pairing.load(store)
        assert again is not None and again.keyset == rotated.keyset and again.keyset.revoked == {"k1"}
        assert _code(sign_token(claims, kid="k1", key=K1), again) == "unknown_key"  # revoked now
        assert _code(sign_token(claims, kid="k2", key=K2), again) == "bad_claims"

        with pytest.raises(KeysetError):  # refused: nothing changes, nothing is logged
            pairing.rotate(store, signed(2, [("k3", K3)], by="k2", key=K2), actor="hub:met", now_utc_ns=11)
        assert pairing.load(store) == again
        entries = AuditLog(store).entries()
        assert [e.type for e in entries] == ["hub.keys.changed"]
        assert entries[0].details == {
            "hub_id": HUB,
            "version": 2,
            "fingerprint": rotated.keyset.fingerprint,
            "kids": ["k2"],
            "revoked": ["k1"],
            "previous_version": 1,
        }
    finally:
        store.close()


def _code(token: str, paired: pairing.Pairing) -> str:
    with pytest.raises(Refused) as e:
        verify_token(token, hub=paired.hub_keys(), device_id="edge-x", now_s=0)
    return e.value.code
