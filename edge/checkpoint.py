"""C2SP tlog-checkpoint inside a C2SP signed-note, signed with Ed25519.

A checkpoint commits to the log's Merkle tree at one size::

    <origin>\\n<tree size>\\n<base64 root hash>\\n[extension lines\\n]
    \\n
    — <key name> <base64(4-byte key hash || 64-byte Ed25519 signature)>\\n   (one or more)

The signature covers the note text: every byte before the blank line, including the text's final newline.
The key hash is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || 32-byte public key).
Specs: https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint; golang.org/x/mod/sumdb/note is the
reference implementation.

Bytes in, dataclass out, one :class:`CheckpointError` with one clear reason out of anything wrong. Parsing is
strict (and bounded: 1 MiB, 16 signatures), because a verifier that accepts two spellings of one checkpoint
invites arguments about which was signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge.errors import Error

__all__ = [
    "ED25519_TYPE",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "Checkpoint",
    "CheckpointError",
    "Signature",
    "key_hash",
    "parse",
    "parse_note",
    "parse_vkey",
    "public_key_bytes",
    "sign",
    "sign_note",
    "verify",
    "vkey",
]

MAX_NOTE_SIZE: Final = 1 << 20
# signed-note: verifiers MUST accept at least 16 signatures and SHOULD cap them.
MAX_SIGNATURES: Final = 16
ED25519_TYPE: Final = 0x01  # signed-note signature type byte for Ed25519
KEY_HASH_SIZE: Final = 4
ED25519_SIGNATURE_SIZE: Final = 64
ED25519_PUBLIC_KEY_SIZE: Final = 32
ROOT_SIZE: Final = 32
MAX_TREE_SIZE: Final = (1 << 63) - 1  # what SQLite can hold; far beyond any audit log

_SIG_PREFIX: Final = "— "  # U+2014 EM DASH, space
_SIZE_RE: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX8_RE: Final = re.compile(r"[0-9a-fA-F]{8}")


class CheckpointError(Error):
    """A checkpoint or signed note that cannot be trusted; the message gives the one reason."""

    kind = "checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log ``origin``, its ``size`` in leaves and its RFC 6962 ``root`` at that size."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin:
            raise CheckpointError("not a checkpoint: the origin line is empty")
        _check_line("origin", self.origin)
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"not a checkpoint: tree size {self.size!r} is out of range")
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_SIZE:
            raise CheckpointError(f"not a checkpoint: the root hash must be {ROOT_SIZE} bytes")
        for ext in self.extensions:
            if not ext:
                raise CheckpointError("not a checkpoint: an extension line is empty")
            _check_line("extension line", ext)

    def body(self) -> bytes:
        """The note text: origin, size, base64 root and extension lines, each ending in a newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines).encode("utf-8")


@dataclass(frozen=True)
class Signature:
    """One signature line: the signer's key ``name``, 4-byte ``key_hash`` and the raw ``signature``."""

    name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> bytes:
        """The signature line as it appears in a note, newline included."""
        b64 = base64.b64encode(self.key_hash + self.signature).decode("ascii")
        return f"{_SIG_PREFIX}{self.name} {b64}\n".encode()


def _check_line(what: str, value: str) -> None:
    for ch in value:
        if ch < " ":
            raise CheckpointError(f"not a checkpoint: the {what} contains control character {ord(ch):#04x}")


def _valid_key_name(name: str) -> bool:
    # signed-note: non-empty, no Unicode spaces, no "+"; the note rules also bar control characters.
    return bool(name) and "+" not in name and not any(ch.isspace() or ch < " " for ch in name)


def _b64decode_strict(text: str) -> bytes | None:
    """Standard base64 with padding, canonical only (one spelling per value); None if not."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def key_hash(name: str, public_key: bytes) -> bytes:
    """The signed-note key ID of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ED25519_TYPE]) + public_key).digest()[:4]


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key (RFC 8032 encoding)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def vkey(name: str, public_key: bytes) -> str:
    """The signed-note verifier key ``<name>+<hex key hash>+<base64(0x01 || public key)>``."""
    if not _valid_key_name(name):
        raise CheckpointError(f"bad key name {name!r}: it must be non-empty, without spaces or '+'")
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise CheckpointError(f"an Ed25519 public key is {ED25519_PUBLIC_KEY_SIZE} bytes")
    encoded = base64.b64encode(bytes([ED25519_TYPE]) + public_key).decode("ascii")
    return f"{name}+{key_hash(name, public_key).hex()}+{encoded}"


def parse_vkey(text: str) -> tuple[str, bytes]:
    """Parse a verifier key into ``(name, public key)``; the key hash in it must match."""
    name, hash_hex, encoded = [*text.split("+", 2), "", ""][:3]
    if not _valid_key_name(name) or not _HEX8_RE.fullmatch(hash_hex) or not encoded:
        raise CheckpointError("not a verifier key: expected <name>+<8 hex digits>+<base64 key>")
    raw = _b64decode_strict(encoded)
    if raw is None:
        raise CheckpointError("not a verifier key: the key is not valid base64")
    if len(raw) != 1 + ED25519_PUBLIC_KEY_SIZE or raw[0] != ED25519_TYPE:
        raise CheckpointError("not a verifier key: not an Ed25519 key (type 0x01, 32 bytes)")
    public_key = raw[1:]
    if key_hash(name, public_key) != bytes.fromhex(hash_hex):
        raise CheckpointError(f"not a verifier key: key hash {hash_hex} does not match the key")
    return name, public_key


def sign_note(text: bytes, name: str, key: Ed25519PrivateKey) -> bytes:
    """Sign any note text (which must end in a newline) and return the whole signed note."""
    if not _valid_key_name(name):
        raise CheckpointError(f"bad key name {name!r}: it must be non-empty, without spaces or '+'")
    if not text.endswith(b"\n"):
        raise CheckpointError("not a signed note: the text must end with a newline")
    kh = key_hash(name, public_key_bytes(key))
    return text + b"\n" + Signature(name, kh, key.sign(text)).line()


def sign(cp: Checkpoint, name: str, key: Ed25519PrivateKey) -> bytes:
    """The checkpoint as a signed note carrying one signature by ``key`` under key name ``name``."""
    return sign_note(cp.body(), name, key)


def parse_note(note: bytes) -> tuple[bytes, list[Signature]]:
    """Split a signed note into its text and signatures, strictly; verifies nothing.

    The text is everything up to and including the newline before the last blank line (signed-note).
    """
    if len(note) > MAX_NOTE_SIZE:
        raise CheckpointError(f"not a checkpoint: the note is larger than {MAX_NOTE_SIZE} bytes")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"not a checkpoint: not valid UTF-8 (at byte {e.start})") from None
    for i, ch in enumerate(decoded):
        if ch < " " and ch != "\n":
            raise CheckpointError(f"not a checkpoint: control character {ord(ch):#04x} at character {i}")
    lines = decoded.split("\n")
    tail = lines.pop()  # whatever follows the final newline: nothing, in a well-formed note
    blanks = [i for i, line in enumerate(lines) if not line]
    if not blanks:
        if tail:
            raise CheckpointError("not a checkpoint: the note does not end with a newline")
        raise CheckpointError("not a checkpoint: no blank line before the signatures")
    text_lines, sig_lines = lines[: blanks[-1]], lines[blanks[-1] + 1 :]
    all_sigs = all(line.startswith(_SIG_PREFIX) for line in sig_lines)
    if tail or not sig_lines or not all_sigs:
        # Name the likeliest story: a cut-off last line, signatures followed by something else, or none.
        first = blanks[0]
        if all_sigs and tail.startswith(_SIG_PREFIX):
            raise CheckpointError("not a checkpoint: the last signature line does not end with a newline")
        if first + 1 < len(lines) and lines[first + 1].startswith(_SIG_PREFIX):
            raise CheckpointError("data after the signatures")
        if tail:
            raise CheckpointError("not a checkpoint: the note does not end with a newline")
        raise CheckpointError("not a checkpoint: no signature lines after the blank line")
    if len(sig_lines) > MAX_SIGNATURES:
        raise CheckpointError(f"not a checkpoint: more than {MAX_SIGNATURES} signatures")
    sigs = [_parse_signature_line(line) for line in sig_lines]
    text = "".join(line + "\n" for line in text_lines).encode("utf-8")
    return text, sigs


def _parse_signature_line(line: str) -> Signature:
    name, space, encoded = line[len(_SIG_PREFIX) :].partition(" ")
    if not space or not _valid_key_name(name):
        raise CheckpointError(f"not a checkpoint: bad signature line {line[:80]!r}")
    raw = _b64decode_strict(encoded)
    if raw is None or len(raw) <= KEY_HASH_SIZE:
        raise CheckpointError(f"not a checkpoint: bad signature encoding for key {name!r}")
    return Signature(name, raw[:KEY_HASH_SIZE], raw[KEY_HASH_SIZE:])


def _parse_body(text: bytes) -> Checkpoint:
    lines = text.decode("utf-8")[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("not a checkpoint: the text needs origin, tree size and root hash lines")
    for i, line in enumerate(lines):
        if not line:
            raise CheckpointError(f"not a checkpoint: line {i + 1} of the text is empty")
    origin, size_text, root_text, *extensions = lines
    if not _SIZE_RE.fullmatch(size_text):
        raise CheckpointError(f"not a checkpoint: tree size {size_text[:40]!r} is not a decimal number")
    root = _b64decode_strict(root_text)
    if root is None or len(root) != ROOT_SIZE:
        raise CheckpointError(f"not a checkpoint: root hash {root_text[:60]!r} is not base64 of 32 bytes")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


def parse(note: bytes) -> tuple[Checkpoint, list[Signature]]:
    """Parse a signed checkpoint strictly; verifies nothing (see :func:`verify`)."""
    text, sigs = parse_note(note)
    return _parse_body(text), sigs


def verify(note: bytes, *, name: str, public_key: bytes, origin: str) -> Checkpoint:
    """Return the checkpoint if ``note`` carries a valid signature by ``(name, public_key)`` for ``origin``.

    1. Parse strictly. 2. Pick the signatures whose name and key hash are ours; signatures by other keys
    (witnesses, a rotated key) are ignored, but at least one must be ours. 3. Every one of ours must verify
    (signed-note: a failing known signature rejects the whole note). 4. The origin must be the expected one.
    """
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise CheckpointError(f"an Ed25519 public key is {ED25519_PUBLIC_KEY_SIZE} bytes")
    text, sigs = parse_note(note)
    cp = _parse_body(text)
    kh = key_hash(name, public_key)
    ours = [s for s in sigs if s.name == name and s.key_hash == kh]
    if not ours:
        # The names come from an untrusted note: bound what goes into the message.
        others = "; ".join(f"name {s.name[:80]}, key hash {s.key_hash.hex()}" for s in sigs[:4])
        others += "; …" if len(sigs) > 4 else ""
        raise CheckpointError(
            f"signed by an unknown key ({others}), expected name {name}, key hash {kh.hex()}"
        )
    try:
        verifier = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise CheckpointError("bad signature: the public key is not a valid Ed25519 key") from None
    for s in ours:
        if len(s.signature) != ED25519_SIGNATURE_SIZE:
            raise CheckpointError("bad signature")
        try:
            verifier.verify(s.signature, text)
        except InvalidSignature:
            raise CheckpointError("bad signature") from None
    if cp.origin != origin:
        raise CheckpointError(f"origin is {cp.origin}, expected {origin}")
    return cp
