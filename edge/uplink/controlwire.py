"""The control channel's wire format, shared by the box (:mod:`edge.uplink.control`) and the reference hub
(:mod:`edge.hub.control`): limits, timings, close codes, message decoding, and C2SP tlog-cosignature lines
(docs/protocol.md §4.2).

No I/O and no box state here: the hub may import this module.

A cosignature (https://c2sp.org/tlog-cosignature, Ed25519 type) is a signed-note signature line
``— <name> base64(key ID || timestamp || signature)`` where the key ID is
SHA-256(name || 0x0A || 0x04 || public key)[:4], the timestamp a big-endian u64 of Unix seconds and the
signature Ed25519 over ``"cosignature/v1\\ntime <timestamp>\\n" || note text``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge.errors import Error
from edge.jws import JWSError, json_object

PATH: Final = "/v1/control"
MAX_MESSAGE_BYTES: Final = 64 * 1024  # larger messages are ignored (logged), the connection stays
TRANSPORT_MAX_BYTES: Final = 1024 * 1024  # larger frames close the connection (1009), aiohttp enforces it
HEARTBEAT_S: Final = 20.0
MISSED_HEARTBEATS: Final = 3  # nothing heard for 3 heartbeat intervals: the peer is gone
BACKOFF_INITIAL_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0
REQUEST_TIMEOUT_S: Final = 10.0
MAX_NONCE_CHARS: Final = 64
MAX_TEXT_CHARS: Final = 256

# WebSocket close codes (RFC 6455 §7.4; 4000-4999 are ours).
CLOSE_NORMAL: Final = 1000  # the box or hub is shutting the channel down on purpose
CLOSE_GOING_AWAY: Final = 1001  # the hub is stopping
CLOSE_POLICY: Final = 1008  # a hello naming another device than the client certificate, or none in time
CLOSE_TOO_BIG: Final = 1009  # a frame over TRANSPORT_MAX_BYTES
CLOSE_REPLACED: Final = 4001  # the same device connected again; the older connection is closed

BOX_TYPES: Final = frozenset({"hello", "heartbeat", "nonce", "decision", "checkpoint", "registry"})
HUB_TYPES: Final = frozenset(
    {"heartbeat", "nonce_request", "request", "cosignature", "registry_ack", "keyset", "error"}
)

COSIGNATURE_HEADER: Final = b"cosignature/v1\n"
COSIGNATURE_KEY_TYPE: Final = 0x04  # tlog-cosignature Ed25519 key ID type byte
_SIG_PREFIX: Final = "— "  # U+2014 EM DASH, space (signed-note)


class WireError(Error):
    """A message that is not one we accept; the message says why (safe to log)."""

    kind = "wire"


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode(text: str, accepted: frozenset[str]) -> dict[str, Any]:
    """A text frame → a message object whose ``type`` is in ``accepted``; :class:`WireError` otherwise."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {size} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        # The same strict JSON as tokens: no duplicate keys, NaN, deep nesting or lone surrogates.
        message: dict[str, Any] = json_object(text.encode("utf-8", "surrogatepass"), "message")
    except JWSError as e:
        raise WireError(e.detail) from None
    kind = message.get("type")
    if not isinstance(kind, str):
        raise WireError("no type")
    if kind not in accepted:
        raise WireError(f"unknown type {kind[:40]!r}")
    return message


def field(message: dict[str, Any], name: str, kind: type, *, max_chars: int = MAX_TEXT_CHARS) -> Any:
    """A required member of ``kind`` (str: 1..``max_chars``; int: not bool, ≥ 0)."""
    value = message.get(name)
    if kind is int:
        if type(value) is not int or value < 0:
            raise WireError(f"{message['type']}: {name} must be a non-negative integer")
    elif kind is str:
        if not isinstance(value, str) or not 0 < len(value) <= max_chars:
            raise WireError(f"{message['type']}: {name} must be a string of 1..{max_chars} characters")
    elif not isinstance(value, kind):
        raise WireError(f"{message['type']}: {name} has the wrong type")
    return value


# --- cosignatures -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cosignature:
    name: str
    key_id: bytes
    timestamp: int
    signature: bytes

    def line(self) -> str:
        """The signed-note signature line, without its final newline."""
        raw = self.key_id + struct.pack(">Q", self.timestamp) + self.signature
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(raw).decode('ascii')}"


def witness_name(hub_id: str) -> str:
    """The hub's cosigner name: ``edge.hub/<hub id>``, or, for a hub id a key name cannot hold (C2SP: no
    ``+``, no white space), ``edge.hub/`` + 16 hex digits of its SHA-256. The box recomputes it at
    enrollment, so a hub cannot pin a name that is not its own."""
    name = f"edge.hub/{hub_id}"
    ok = "+" not in name and not any(ch.isspace() or ch < " " for ch in name)
    return name if ok else f"edge.hub/{hashlib.sha256(hub_id.encode()).hexdigest()[:16]}"


def cosigner_key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([COSIGNATURE_KEY_TYPE]) + public_key).digest()[
        :4
    ]


def cosigned_message(note_text: bytes, timestamp: int) -> bytes:
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + note_text


def cosign(note_text: bytes, *, name: str, key: Ed25519PrivateKey, timestamp: int) -> Cosignature:
    """Cosign a checkpoint's note text (every byte before the blank line, final newline included)."""
    if not 0 <= timestamp < 1 << 63:
        raise WireError("a cosignature timestamp is 0..2^63-1")
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = key.sign(cosigned_message(note_text, timestamp))
    return Cosignature(name, cosigner_key_id(name, public), timestamp, signature)


def verify_cosignature(note_text: bytes, line: str, *, name: str, public_key: bytes) -> Cosignature:
    """Parse ``line`` and check it is ``name``'s valid cosignature of ``note_text``; :class:`WireError`."""
    body = line.removesuffix("\n")
    if not body.startswith(_SIG_PREFIX):
        raise WireError("not a signature line")
    got_name, space, encoded = body[len(_SIG_PREFIX) :].partition(" ")
    if not space or got_name != name:
        raise WireError(f"not a cosignature by {name}")
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise WireError("the cosignature is not base64") from None
    if len(raw) != 4 + 8 + 64 or base64.b64encode(raw).decode("ascii") != encoded:
        raise WireError("the cosignature is not base64 of key ID, timestamp and an Ed25519 signature")
    key_id, (timestamp,), signature = raw[:4], struct.unpack(">Q", raw[4:12]), raw[12:]
    if key_id != cosigner_key_id(name, public_key) or timestamp >= 1 << 63:
        raise WireError("the cosignature's key ID or timestamp is wrong")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, cosigned_message(note_text, timestamp)
        )
    except (InvalidSignature, ValueError):
        raise WireError("bad cosignature") from None
    return Cosignature(got_name, key_id, timestamp, signature)
