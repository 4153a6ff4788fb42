"""The hub's signing key set (docs/protocol.md §3): parse it, check it, and pin it — first at enrollment, then
each rotation — as the pure function :func:`apply_keyset`.

A key set is a compact JWS (:mod:`edge.jws`, ``typ`` ``edge-keyset+jwt``) whose claims are exactly
``{"hub_id", "version", "keys": [{"kid", "key"}]}``. The first set must be signed by a key it contains (the
owner confirms its fingerprint out of band); every later one by a key of the set pinned now. Versions only go
forward, a kid left out is revoked for good, and a kid never changes its key. The fingerprint the owner
compares is the hex SHA-256 of the RFC 8785 JSON of the claims.
"""

from __future__ import annotations

import hashlib
import types
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge import jws
from edge.errors import Error
from edge.jws import show
from edge.uplink.request import HubKeys

TYP: Final = "edge-keyset+jwt"
MAX_KEYSET_BYTES: Final = 16384
MAX_KEYS: Final = 16
MAX_KID_CHARS: Final = 64
MAX_HUB_ID_CHARS: Final = 128
MAX_VERSION: Final = 2**53 - 1  # I-JSON
KEY_BYTES: Final = 32
CLAIMS: Final = frozenset({"hub_id", "version", "keys"})
_KEY_MEMBERS: Final = frozenset({"kid", "key"})
# The codes KeysetError carries: the JWS steps (edge.jws), then these.
CODES: Final = (
    "too_large",
    "malformed",
    "bad_header",
    "unknown_key",
    "bad_signature",
    "bad_claims",
    "wrong_hub",
    "old_version",
    "revoked_kid",
    "kid_changed",
)


class KeysetError(Error):
    """A key set refused: ``code`` is one of :data:`CODES`; the message is one line, safe to show."""

    kind = "keyset"

    def __init__(self, code: str, detail: str) -> None:
        detail = " ".join(detail.split())
        super().__init__(f"hub key set refused ({code}): {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class PinnedKeyset:
    """The key set the box trusts now, and every kid it ever revoked."""

    hub_id: str
    version: int
    keys: Mapping[str, bytes]  # kid -> raw 32-byte Ed25519 public key, in the set's order
    revoked: frozenset[str]
    claims: Mapping[str, Any] = field(repr=False)  # as received: what the fingerprint covers
    jws: str = field(repr=False)  # the newest set as received

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", types.MappingProxyType(dict(self.keys)))
        object.__setattr__(self, "revoked", frozenset(self.revoked))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.claims)

    def hub_keys(self) -> HubKeys:
        """What the request verifier (:func:`edge.uplink.request.verify_token`) pins."""
        return HubKeys(hub_id=self.hub_id, keys=self.keys, revoked=self.revoked)


def fingerprint(claims: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the RFC 8785 (canonical) JSON of a key set's claims."""
    return hashlib.sha256(rfc8785.dumps(dict(claims))).hexdigest()


def key_fingerprint(raw: bytes) -> str:
    """Hex SHA-256 of one raw public key, to show next to its kid."""
    return hashlib.sha256(raw).hexdigest()


def apply_keyset(
    pinned: PinnedKeyset | None, token: str | bytes, *, hub_id: str | None = None
) -> PinnedKeyset:
    """The key set to pin after receiving ``token``; ``pinned`` is the one pinned now (None at enrollment).

    Raises :class:`KeysetError`, and then nothing changes. ``hub_id``: the hub the set must name (at
    enrollment, the hub id the hub announced; later the pinned one is used)."""
    try:
        compact = jws.parse(token, max_bytes=MAX_KEYSET_BYTES)
        kid = jws.check_header(compact.header, typ=TYP)
    except jws.JWSError as e:
        raise KeysetError(e.code, e.detail) from None
    claim_hub, version, keys = parse_claims(compact.payload)

    if pinned is None:
        if kid not in keys:  # the first set vouches for itself; the owner's fingerprint check vouches for it
            raise KeysetError("unknown_key", f"the first key set is signed by {show(kid)}, a key not in it")
        signer, expected_hub = keys[kid], hub_id
    else:
        if kid in pinned.revoked:
            raise KeysetError("unknown_key", f"key {show(kid)} is revoked")
        if kid not in pinned.keys:
            raise KeysetError("unknown_key", f"key {show(kid)} is not in the pinned key set")
        signer, expected_hub = pinned.keys[kid], pinned.hub_id
    try:
        jws.check_signature(Ed25519PublicKey.from_public_bytes(signer), compact)
    except jws.JWSError as e:
        raise KeysetError(e.code, e.detail) from None

    if expected_hub is not None and claim_hub != expected_hub:
        raise KeysetError("wrong_hub", f"the key set is for hub {show(claim_hub)}, not {show(expected_hub)}")
    revoked: frozenset[str] = frozenset()
    if pinned is not None:
        if version <= pinned.version:
            raise KeysetError("old_version", f"version {version} is not after the pinned {pinned.version}")
        back = sorted(pinned.revoked & keys.keys())
        if back:
            raise KeysetError("revoked_kid", f"key {show(back[0])} was revoked and cannot come back")
        changed = sorted(k for k in pinned.keys.keys() & keys.keys() if pinned.keys[k] != keys[k])
        if changed:
            raise KeysetError(
                "kid_changed", f"key {show(changed[0])} changes its key: a new key needs a new kid"
            )
        revoked = pinned.revoked | (pinned.keys.keys() - keys.keys())
    return PinnedKeyset(
        hub_id=claim_hub,
        version=version,
        keys=keys,
        revoked=revoked,
        claims=compact.payload,
        jws=compact.token,
    )


def parse_claims(payload: Mapping[str, object]) -> tuple[str, int, dict[str, bytes]]:
    """Exactly ``hub_id``, ``version`` and ``keys``, with exact types; ``bad_claims`` otherwise."""
    if payload.keys() != CLAIMS:
        missing, extra = sorted(CLAIMS - payload.keys()), sorted(payload.keys() - CLAIMS)
        what = f"lack {', '.join(missing)}" if missing else f"have an unknown member {show(extra[0])}"
        raise KeysetError("bad_claims", f"the key set's claims {what}")
    hub_id = payload["hub_id"]
    if not isinstance(hub_id, str) or not is_name(hub_id, MAX_HUB_ID_CHARS):
        raise KeysetError("bad_claims", f"hub_id must be 1..{MAX_HUB_ID_CHARS} printable characters")
    version = payload["version"]
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise KeysetError("bad_claims", "version must be a positive integer")
    items = payload["keys"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_KEYS:
        raise KeysetError("bad_claims", f"keys must be a list of 1..{MAX_KEYS} keys")
    keys: dict[str, bytes] = {}
    for item in items:
        if not isinstance(item, dict) or item.keys() != _KEY_MEMBERS:
            raise KeysetError("bad_claims", 'each key is exactly {"kid", "key"}')
        kid, key = item["kid"], item["key"]
        if not isinstance(kid, str) or not is_name(kid, MAX_KID_CHARS):
            raise KeysetError("bad_claims", f"a kid must be 1..{MAX_KID_CHARS} printable characters")
        if kid in keys:
            raise KeysetError("bad_claims", f"kid {show(kid)} is listed twice")
        raw = jws.b64url_decode(key) if isinstance(key, str) else None
        if raw is None or len(raw) != KEY_BYTES:
            raise KeysetError("bad_claims", f"key {show(kid)} is not the base64url of a 32-byte Ed25519 key")
        keys[kid] = raw
    try:
        HubKeys(hub_id=hub_id, keys=keys)  # refuses small-order points, under which signatures are forgeable
    except ValueError as e:
        raise KeysetError("bad_claims", str(e)) from None
    return hub_id, version, keys


def keyset_claims(hub_id: str, version: int, keys: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    return {
        "hub_id": hub_id,
        "version": version,
        "keys": [{"kid": kid, "key": jws.b64url_encode(raw)} for kid, raw in keys],
    }


def sign_keyset(
    hub_id: str, version: int, keys: Sequence[tuple[str, bytes]], *, kid: str, key: Ed25519PrivateKey
) -> str:
    """The hub's side: a key set signed by ``kid`` (a key of the set the boxes pin now)."""
    return jws.sign(keyset_claims(hub_id, version, keys), typ=TYP, kid=kid, key=key)


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


_NOT_IN_A_NAME: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def is_name(text: str, max_chars: int) -> bool:
    """1..max_chars characters, no controls, format characters (bidi overrides) or line breaks, no blank
    ends: a name a person reads and a log line holds."""
    return (
        1 <= len(text) <= max_chars
        and text == text.strip()
        and not any(unicodedata.category(ch) in _NOT_IN_A_NAME for ch in text)
    )
