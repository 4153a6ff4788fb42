"""Compact JWS (RFC 7515) signed with Ed25519 (RFC 9864) and nothing else: the strict parser and the signer
shared by every signed object of the hub protocol (docs/protocol.md): the emergency request
(``edge-access+jwt``), the enrollment request (``edge-enroll+jwt``) and the hub's key set
(``edge-keyset+jwt``).

The protected header is exactly ``{"alg": "Ed25519", "typ": <the object's type>, "kid": <key id>}``. The
checks run in this order, and each failure raises :class:`JWSError` with its step's code:

1. ``too_large``: more bytes than the caller allows, before any decoding;
2. ``malformed``: not three strict base64url parts (no padding, only ``[A-Za-z0-9_-]``, canonical: the
   decoded bytes must re-encode to the same text, since Python ignores non-zero trailing bits), strict UTF-8,
   JSON objects without duplicate keys, NaN, Infinity, lone surrogates or nesting deeper than 8;
3. ``bad_header``: anything but exactly the three header members above;
4. (the caller's key lookup: a kid it does not know);
5. ``bad_signature``: Ed25519 over ``base64url(header) "." base64url(payload)`` fails.

The claims are the caller's business; they are not looked at before the signature holds. No I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import Error

ALG: Final = "Ed25519"  # RFC 9864's fully specified name; "EdDSA" is refused
SIGNATURE_BYTES: Final = 64
MAX_JSON_DEPTH: Final = 8
HEADER_MEMBERS: Final = frozenset({"alg", "typ", "kid"})
_B64URL: Final = re.compile(rb"[A-Za-z0-9_-]*")
_SHOW_CHARS: Final = 60


class JWSError(Error):
    """A compact JWS that fails one of the steps above. ``detail`` is one printable line that quotes
    attacker-chosen text only escaped and cut to about 60 characters."""

    kind = "jws"

    def __init__(self, code: str, detail: str) -> None:
        detail = " ".join(detail.split())
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    def __reduce__(self) -> tuple[type[JWSError], tuple[str, str]]:
        return (JWSError, (self.code, self.detail))


@dataclass(frozen=True)
class Compact:
    """A parsed compact JWS. Its signature has been checked only if :func:`verify` returned it."""

    token: str  # the whole JWS, ASCII
    header: dict[str, object]
    payload: dict[str, object]
    signature: bytes
    signing_input: bytes

    @property
    def kid(self) -> str:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else ""


def sign(claims: Mapping[str, object], *, typ: str, kid: str, key: Ed25519PrivateKey) -> str:
    """``claims`` as a compact JWS with the exact header. The claims are not checked."""
    if not isinstance(kid, str) or not kid:
        raise ValueError("kid must be a non-empty string")
    header = {"alg": ALG, "typ": typ, "kid": kid}
    signing_input = _b64(compact_json(header)) + b"." + _b64(compact_json(dict(claims)))
    return (signing_input + b"." + _b64(key.sign(signing_input))).decode("ascii")


def verify(
    token: str | bytes, *, typ: str, max_bytes: int, key_for: Callable[[str], Ed25519PublicKey]
) -> Compact:
    """Steps 1 to 5. ``key_for(kid)`` returns the key for a checked kid, or raises (step 4: the caller's
    error, with the caller's code)."""
    compact = parse(token, max_bytes=max_bytes)
    check_header(compact.header, typ=typ)
    check_signature(key_for(compact.kid), compact)
    return compact


def parse(token: str | bytes, *, max_bytes: int) -> Compact:
    """Steps 1 and 2: size, three strict base64url parts, header and payload JSON objects."""
    raw = _raw_bytes(token, max_bytes)
    parts = raw.split(b".")
    if len(parts) != 3:
        raise JWSError("malformed", f"a compact JWS has 3 parts, this has {min(len(parts), 999)}")
    header_b64, payload_b64, signature_b64 = parts
    header = json_object(_b64url_part(header_b64, "header"), "header")
    payload = json_object(_b64url_part(payload_b64, "payload"), "payload")
    signature = _b64url_part(signature_b64, "signature")
    return Compact(
        token=raw.decode("ascii"),
        header=header,
        payload=payload,
        signature=signature,
        signing_input=raw[: len(header_b64) + 1 + len(payload_b64)],
    )


def check_header(header: Mapping[str, object], *, typ: str) -> str:
    """Step 3: exactly ``alg``, ``typ`` and ``kid``, with these values. Returns the kid."""
    if header.keys() != HEADER_MEMBERS:
        extra = sorted(header.keys() - HEADER_MEMBERS)
        if extra:
            raise JWSError("bad_header", f"header parameter {show(extra[0])} is not allowed")
        raise JWSError("bad_header", f"header lacks {', '.join(sorted(HEADER_MEMBERS - header.keys()))}")
    alg, got_typ, kid = header["alg"], header["typ"], header["kid"]
    if alg != ALG:
        raise JWSError("bad_header", f"alg {show_value(alg)} is not {ALG}")
    if got_typ != typ:
        raise JWSError("bad_header", f"typ {show_value(got_typ)} is not {typ}")
    if not isinstance(kid, str) or not kid:
        raise JWSError("bad_header", "kid is not a non-empty string")
    return kid


def check_signature(public_key: Ed25519PublicKey, compact: Compact) -> None:
    """Step 5."""
    if len(compact.signature) == SIGNATURE_BYTES:
        try:
            public_key.verify(compact.signature, compact.signing_input)
            return
        except InvalidSignature:
            pass
    raise JWSError("bad_signature", f"the Ed25519 signature does not verify with key {show(compact.kid)}")


# --- base64url and JSON -------------------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    return _b64(data).decode("ascii")


def b64url_decode(text: bytes | str) -> bytes | None:
    """Strict base64url without padding (RFC 7515 section 2): the alphabet only, and canonical — the bytes
    must re-encode to ``text`` (Python's decoder ignores the spare bits of the last character).
    None if not."""
    if isinstance(text, str):
        if not text.isascii():
            return None
        text = text.encode("ascii")
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64(data) == text else None


def compact_json(value: object) -> bytes:
    """The JSON a JWS part carries: no spaces, UTF-8. (Not RFC 8785: a JWS signs the bytes it carries.)"""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def json_object(data: bytes, part: str) -> dict[str, object]:
    """Strict JSON: UTF-8, an object at the top, no duplicate keys, NaN, Infinity, out-of-range numbers,
    lone surrogates or nesting deeper than :data:`MAX_JSON_DEPTH`. ``malformed`` otherwise."""
    try:
        text = data.decode("utf-8")  # strict: no overlong forms, no encoded surrogates
    except UnicodeDecodeError:
        raise JWSError("malformed", f"the {part} is not UTF-8") from None
    # json recurses per level: bound the depth before parsing (only possible with many brackets).
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise JWSError("malformed", f"the {part} nests deeper than {MAX_JSON_DEPTH}")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
        _check_strings(value)
    except _JSONRefused as e:
        raise JWSError("malformed", f"the {part} {e}") from None
    except (ValueError, RecursionError):
        raise JWSError("malformed", f"the {part} is not JSON") from None
    if not isinstance(value, dict):
        raise JWSError("malformed", f"the {part} is not a JSON object")
    return value


# --- text safe to show --------------------------------------------------------------------------------------


def show(text: str) -> str:
    """``text`` quoted, escaped to ASCII, and cut: safe to put in a one-line detail."""
    shown = ascii(text[: _SHOW_CHARS + 1])
    if len(text) > _SHOW_CHARS or len(shown) > _SHOW_CHARS + 2:
        return shown[:_SHOW_CHARS] + "..."
    return shown


def show_value(value: object) -> str:
    return show(value) if isinstance(value, str) else f"of type {json_type(value)}"


def json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "integer" if isinstance(value, int) else "float"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(value), "value")


# --- internals ----------------------------------------------------------------------------------------------


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _raw_bytes(token: object, max_bytes: int) -> bytes:
    raw: bytes | bytearray
    if isinstance(token, str):
        if len(token) > max_bytes:  # each character is at least one byte: no need to encode it all
            raise JWSError("too_large", f"token over {max_bytes} bytes")
        raw = token.encode("utf-8", "surrogatepass")  # counts bytes; non-ASCII is refused just below
    elif isinstance(token, bytes | bytearray):
        raw = token
    else:
        raise JWSError("malformed", f"a token is text or bytes, not {type(token).__name__}")
    if len(raw) > max_bytes:
        raise JWSError("too_large", f"token of {len(raw)} bytes, over {max_bytes}")
    return bytes(raw)


def _b64url_part(text: bytes, part: str) -> bytes:
    data = b64url_decode(text)
    if data is None:
        raise JWSError("malformed", f"the {part} is not strict base64url (alphabet, no padding, canonical)")
    return data


class _JSONRefused(ValueError):
    pass


def _object_no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _JSONRefused("has a duplicate key")
    return obj


def _no_constant(name: str) -> NoReturn:
    raise _JSONRefused(f"has {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf without passing through parse_constant
        raise _JSONRefused("has a number out of range")
    return value


def _check_strings(value: object) -> None:
    """Refuse lone surrogates (``"\\ud800"``): valid JSON escapes, but no UTF-8 text downstream holds them."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _JSONRefused("has a lone surrogate") from None
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)


def _depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest
