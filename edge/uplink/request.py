"""The strict verifier of emergency access requests, and the signer the reference hub uses.

A request is a compact JWS (RFC 7515) signed with ``Ed25519`` (RFC 9864), header exactly
``{"alg": "Ed25519", "typ": "edge-access+jwt", "kid": …}``. :func:`verify_token` runs the stateless checks of
docs/protocol.md in their order, and each failure raises :class:`Refused` with that step's code:

1. ``too_large``: more than 8192 bytes, before any decoding;
2. ``malformed``: not three strict base64url parts (no padding, only ``[A-Za-z0-9_-]``, canonical: the
   decoded bytes must re-encode to the same text, since Python ignores non-zero trailing bits), strict UTF-8,
   JSON objects without duplicate keys, NaN, Infinity or nesting deeper than 8;
3. ``bad_header``: anything but exactly the three header members above;
4. ``unknown_key``: a kid not pinned, or revoked;
5. ``bad_signature``: Ed25519 over the signing input fails; the claims are not examined before it holds;
6. ``bad_claims``, ``wrong_audience``, ``wrong_issuer``: exactly the contract's claims, with exact JSON types;
7. ``not_yet_valid``, ``expired``, ``lifetime_too_long``: the time claims, with 60 s of clock skew.

The stateful checks that follow (``dev_nonce`` consumed, ``jti`` never seen) and the owner's policy
(:mod:`edge.consent`) are not here. Bytes in, an :class:`AccessRequest` out: no I/O, no clock of its own.
Steps 1 to 5 are :mod:`edge.jws`, shared with the other signed objects of the protocol.
"""

from __future__ import annotations

import types
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge import jws
from edge.errors import Error
from edge.jws import b64url_decode
from edge.jws import json_type as _json_type
from edge.jws import show as _show
from edge.jws import show_value as _show_value
from edge.uplink.claims import (
    CLOCK_SKEW_S,
    MAX_CAMERAS,
    MAX_DUR_S,
    MAX_LIFETIME_S,
    MAX_TOKEN_BYTES,
    MIN_JTI_BYTES,
    REASONS,
    TYP,
    AccessRequest,
    Incident,
    Scope,
)

# The codes this module raises, in check order.
CODES: Final = (
    "too_large",
    "malformed",
    "bad_header",
    "unknown_key",
    "bad_signature",
    "bad_claims",
    "wrong_audience",
    "wrong_issuer",
    "not_yet_valid",
    "expired",
    "lifetime_too_long",
)
MAX_JSON_DEPTH: Final = jws.MAX_JSON_DEPTH
# I-JSON (RFC 7493): integers beyond 2**53 - 1 do not survive every JSON implementation a hub may use.
MAX_JSON_INT: Final = 2**53 - 1
SIGNATURE_BYTES: Final = jws.SIGNATURE_BYTES
VIEWER_KEY_BYTES: Final = 32
MAX_TEXT_CHARS: Final = 128  # sub, case
MAX_KIND_CHARS: Final = 64
CLAIMS: Final = frozenset(
    {
        "iss",
        "aud",
        "jti",
        "iat",
        "nbf",
        "exp",
        "sub",
        "case",
        "reason",
        "scope",
        "max_dur",
        "incident",
        "viewer_key",
        "dev_nonce",
    }
)
_NOT_IN_A_LINE: Final = frozenset({"Cc", "Zl", "Zp"})  # controls (newline, ESC…), U+2028, U+2029
# RFC 8032 lets a verifier accept a small-order public key, under which anyone can forge signatures for a
# share of messages, and OpenSSL does. Pinning refuses them: the y coordinates (sign bit ignored) of the eight
# small-order points, non-canonical forms included (libsodium's blocklist).
_P: Final = 2**255 - 19
_SMALL_ORDER_Y: Final = frozenset(
    {0, 1, _P - 1, _P, _P + 1}
    | {
        int.from_bytes(bytes.fromhex(y), "little")
        for y in (
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        )
    }
)


class Refused(Error):
    """A request refused with one of the protocol's codes. ``detail`` is one printable line that quotes
    attacker-chosen text only escaped and cut to about 60 characters."""

    kind = "refused"

    def __init__(self, code: str, detail: str) -> None:
        detail = " ".join(detail.split())  # one line, whatever a caller passes
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    def __reduce__(self) -> tuple[type[Refused], tuple[str, str]]:
        return (Refused, (self.code, self.detail))


@dataclass(frozen=True)
class HubKeys:
    """The paired hub: its id and its pinned signing keys (kid -> raw 32-byte Ed25519 public key)."""

    hub_id: str
    keys: Mapping[str, bytes]
    revoked: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        keys = dict(self.keys)
        for kid, raw in keys.items():
            if not isinstance(kid, str) or not kid:
                raise ValueError("hub key ids must be non-empty strings")
            if not isinstance(raw, bytes) or len(raw) != 32:
                raise ValueError(f"hub key {_show(kid)} is not a raw 32-byte Ed25519 public key")
            if int.from_bytes(raw, "little") & (2**255 - 1) in _SMALL_ORDER_Y:
                raise ValueError(
                    f"hub key {_show(kid)} is a small-order point: signatures under it are forgeable"
                )
        # A read-only copy: the key set cannot change under a verifier holding this value.
        object.__setattr__(self, "keys", types.MappingProxyType(keys))
        object.__setattr__(self, "revoked", frozenset(self.revoked))


def verify_token(token: str | bytes, *, hub: HubKeys, device_id: str, now_s: int) -> AccessRequest:
    """Verify an emergency request up to and including its time claims; raise :class:`Refused` otherwise."""
    try:
        compact = jws.verify(
            token, typ=TYP, max_bytes=MAX_TOKEN_BYTES, key_for=lambda kid: _pinned_key(hub, kid)
        )
    except jws.JWSError as e:
        raise Refused(e.code, e.detail) from None

    request = _claims(compact.payload, token=compact.token, kid=compact.kid)
    if request.aud != device_id:
        raise Refused("wrong_audience", f"aud {_show(request.aud)} is not this device")
    if request.iss != hub.hub_id:
        raise Refused("wrong_issuer", f"iss {_show(request.iss)} is not the paired hub")
    _check_times(request, now_s)
    return request


def sign_token(claims: Mapping[str, object], *, kid: str, key: Ed25519PrivateKey) -> str:
    """Sign ``claims`` as a compact JWS with the exact header the verifier wants. The claims are not checked:
    the reference hub may sign anything, including what tests need refused."""
    return jws.sign(claims, typ=TYP, kid=kid, key=key)


# --- step 4: the pinned key ---------------------------------------------------------------------------------


def _pinned_key(hub: HubKeys, kid: str) -> Ed25519PublicKey:
    if kid in hub.revoked:
        raise Refused("unknown_key", f"key {_show(kid)} is revoked")
    raw = hub.keys.get(kid)
    if raw is None:
        raise Refused("unknown_key", f"key {_show(kid)} is not in the pinned key set")
    return Ed25519PublicKey.from_public_bytes(raw)


# --- step 6: claims -----------------------------------------------------------------------------------------


def _claims(payload: dict[str, object], *, token: str, kid: str) -> AccessRequest:
    _members(payload, "the claims", CLAIMS)
    return AccessRequest(
        token=token,
        kid=kid,
        iss=_text(payload, "iss"),
        aud=_text(payload, "aud"),
        jti=_jti(payload),
        iat=_int(payload, "iat", 0, MAX_JSON_INT),
        nbf=_int(payload, "nbf", 0, MAX_JSON_INT),
        exp=_int(payload, "exp", 0, MAX_JSON_INT),
        sub=_text(payload, "sub", MAX_TEXT_CHARS),
        case=_text(payload, "case", MAX_TEXT_CHARS),
        reason=_reason(payload),
        scope=_scope(payload["scope"]),
        max_dur=_int(payload, "max_dur", 1, MAX_DUR_S),
        incident=_incident(payload["incident"]),
        viewer_key=_viewer_key(payload),
        dev_nonce=_text(payload, "dev_nonce"),  # its value is the nonce guard's business
    )


def _members(
    obj: dict[str, object], what: str, required: frozenset[str], optional: frozenset[str] = frozenset()
) -> None:
    missing = required - obj.keys()
    if missing:
        raise Refused("bad_claims", f"{what} lack {', '.join(sorted(missing))}")
    extra = obj.keys() - required - optional
    if extra:
        raise Refused("bad_claims", f"{what} have an unknown member {_show(min(extra))}")


def _int(obj: dict[str, object], name: str, lo: int, hi: int) -> int:
    return _int_value(obj[name], name, lo, hi)


def _int_value(value: object, name: str, lo: int, hi: int) -> int:
    if type(value) is not int:  # exact: a bool is an int to Python, and 1.0 or 1e3 are floats
        raise Refused("bad_claims", f"{name} must be an integer, not {_json_type(value)}")
    if not lo <= value <= hi:
        raise Refused("bad_claims", f"{name} is outside {lo}..{hi}")
    return value


def _text(obj: dict[str, object], name: str, max_chars: int | None = None) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise Refused("bad_claims", f"{name} must be a string, not {_json_type(value)}")
    if max_chars is not None:
        if not 1 <= len(value) <= max_chars:
            raise Refused("bad_claims", f"{name} must have 1..{max_chars} characters")
        # Shown to the owner and written to logs: no line breaks, escapes or other control characters.
        if any(unicodedata.category(ch) in _NOT_IN_A_LINE for ch in value):
            raise Refused("bad_claims", f"{name} contains a control character or line break")
    return value


def _reason(payload: dict[str, object]) -> str:
    reason = _text(payload, "reason")
    if reason not in REASONS:
        raise Refused("bad_claims", f"reason {_show(reason)} is not one of the protocol's reasons")
    return reason


def _jti(payload: dict[str, object]) -> str:
    jti = _text(payload, "jti")
    data = b64url_decode(jti.encode("utf-8"))
    if data is None:
        raise Refused("bad_claims", "jti is not strict base64url")
    if len(data) < MIN_JTI_BYTES:
        raise Refused("bad_claims", f"jti has {len(data)} bytes, fewer than {MIN_JTI_BYTES}")
    return jti


def _viewer_key(payload: dict[str, object]) -> bytes:
    data = b64url_decode(_text(payload, "viewer_key").encode("utf-8"))
    if data is None or len(data) != VIEWER_KEY_BYTES:
        raise Refused("bad_claims", f"viewer_key is not the base64url of {VIEWER_KEY_BYTES} bytes")
    return data


_SCOPE_REQUIRED: Final = frozenset({"cameras", "mode"})
_SCOPE_RANGE: Final = frozenset({"from", "to"})
_INCIDENT: Final = frozenset({"lat", "lon", "kind"})


def _scope(value: object) -> Scope:
    if not isinstance(value, dict):
        raise Refused("bad_claims", f"scope must be an object, not {_json_type(value)}")
    _members(value, "scope", _SCOPE_REQUIRED, _SCOPE_RANGE)
    mode = value["mode"]
    cameras = value["cameras"]
    if not isinstance(cameras, list) or not 1 <= len(cameras) <= MAX_CAMERAS:
        raise Refused("bad_claims", f"scope.cameras must be a list of 1..{MAX_CAMERAS} camera ids")
    ids = tuple(_int_value(c, "a camera id", 0, MAX_JSON_INT) for c in cameras)
    if len(set(ids)) != len(ids):
        raise Refused("bad_claims", "scope.cameras has a duplicate")
    if mode == "live":
        if value.keys() & _SCOPE_RANGE:
            raise Refused("bad_claims", "scope of a live request has no from/to")
        return Scope(cameras=ids, mode="live")
    if mode == "recorded":
        if value.keys() & _SCOPE_RANGE != _SCOPE_RANGE:
            raise Refused("bad_claims", "scope of a recorded request needs from and to")
        from_s = _int(value, "from", 0, MAX_JSON_INT)
        to_s = _int(value, "to", 0, MAX_JSON_INT)
        return Scope(
            cameras=ids, mode="recorded", from_s=from_s, to_s=to_s
        )  # from < to: the policy's bad_range
    raise Refused("bad_claims", f"scope.mode {_show_value(mode)} is not live or recorded")


def _incident(value: object) -> Incident:
    if not isinstance(value, dict):
        raise Refused("bad_claims", f"incident must be an object, not {_json_type(value)}")
    _members(value, "incident", _INCIDENT)
    lat = _coordinate(value, "lat", 90)
    lon = _coordinate(value, "lon", 180)
    return Incident(lat=lat, lon=lon, kind=_text(value, "kind", MAX_KIND_CHARS))


def _coordinate(obj: dict[str, object], name: str, limit: int) -> float:
    value = obj[name]
    if type(value) not in (int, float):  # not bool; floats are finite (parsing refused the rest)
        raise Refused("bad_claims", f"incident.{name} must be a number, not {_json_type(value)}")
    assert isinstance(value, int | float)
    if not -limit <= value <= limit:  # compared before float(): a huge int would overflow it
        raise Refused("bad_claims", f"incident.{name} is outside -{limit}..{limit}")
    return float(value)


# --- step 7: time ------------------------------------------------------------------------------------------


def _check_times(request: AccessRequest, now_s: int) -> None:
    if request.nbf > now_s + CLOCK_SKEW_S or request.iat > now_s + CLOCK_SKEW_S:
        raise Refused("not_yet_valid", f"nbf or iat more than {CLOCK_SKEW_S} s ahead of this box's clock")
    if now_s > request.exp + CLOCK_SKEW_S:
        raise Refused("expired", f"exp more than {CLOCK_SKEW_S} s behind this box's clock")
    if request.exp - request.iat > MAX_LIFETIME_S:
        raise Refused(
            "lifetime_too_long", f"exp - iat is {request.exp - request.iat} s, over {MAX_LIFETIME_S}"
        )
    if request.exp <= request.nbf or request.exp <= request.iat:
        raise Refused("lifetime_too_long", "exp is not after nbf and iat")
