"""The box's device identity: one Ed25519 key made on first start and kept for the box's life.

It signs the audit log's checkpoints now, and pairing with a hub later certifies this same key (pairing never
replaces it). Files in the data directory:

* ``device.key`` — the Ed25519 private key, 32 raw bytes (RFC 8032 seed), mode 0600; never logged, never
  exported. A file that group or others may access is refused.
* ``device.pub`` — the public key, 32 raw bytes, mode 0644, so ``edge identity`` and the audit verifier
  need no private key.

The device id is ``edge-`` + the first 16 bytes of SHA-256(public key) in hex: stable, derived from the key,
and the name hubs address the box by. The fingerprint people compare is the full SHA-256 of the public key.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from edge import keyfiles
from edge.errors import Error

PRIVATE_KEY_NAME = "device.key"
PUBLIC_KEY_NAME = "device.pub"
LOCK_NAME = "device.lock"
KEY_BYTES = 32


class IdentityError(Error):
    kind = "identity"


@dataclass(frozen=True)
class PublicIdentity:
    """What anyone may know: the public key and names derived from it."""

    public_key: bytes  # raw 32 bytes

    @property
    def device_id(self) -> str:
        return "edge-" + hashlib.sha256(self.public_key).digest()[:16].hex()

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64>`` of the raw public key, the form ssh users already know how to compare."""
        digest = hashlib.sha256(self.public_key).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def short_fingerprint(self) -> str:
        """Four groups of four hex digits, for reading out over the phone."""
        h = hashlib.sha256(self.public_key).hexdigest()[:16]
        return " ".join(h[i : i + 4] for i in range(0, 16, 4))

    @property
    def log_origin(self) -> str:
        """The audit log's checkpoint origin and signing key name (C2SP: a schema-less URL-like name)."""
        return f"edge.audit/{self.device_id}"


class DeviceIdentity:
    """The identity with its private key: the daemon (and root's CLI, which runs as it) load this."""

    __slots__ = ("_key", "public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public = PublicIdentity(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:  # never the key
        return f"DeviceIdentity({self.public.device_id})"


def load_or_create(data_dir: Path) -> DeviceIdentity:
    """The device key, made on first use. The private key is the truth: a missing or different ``device.pub``
    is rewritten from it."""
    keyfiles.prepare_dir(data_dir, IdentityError)
    priv_path, pub_path = data_dir / PRIVATE_KEY_NAME, data_dir / PUBLIC_KEY_NAME
    with keyfiles.creation_lock(data_dir, LOCK_NAME, IdentityError):
        if priv_path.exists():
            raw = keyfiles.read_key_file(
                priv_path, private=True, size=KEY_BYTES, what="Ed25519 key", error=IdentityError
            )
            key = Ed25519PrivateKey.from_private_bytes(raw)
        else:
            key = Ed25519PrivateKey.generate()
            raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            keyfiles.write_atomically(priv_path, raw, keyfiles.PRIVATE_MODE, IdentityError)
        identity = DeviceIdentity(key)
        public = identity.public.public_key
        if not pub_path.exists() or _read_public(pub_path) != public:
            keyfiles.write_atomically(pub_path, public, keyfiles.PUBLIC_MODE, IdentityError)
    return identity


def load_public(data_dir: Path) -> PublicIdentity:
    path = data_dir / PUBLIC_KEY_NAME
    if not path.exists():
        raise IdentityError(f"no device identity in {data_dir} yet: it is made when the daemon first starts")
    return PublicIdentity(_read_public(path))


def _read_public(path: Path) -> bytes:
    raw = keyfiles.read_key_file(path, private=False, size=KEY_BYTES, what="Ed25519 key", error=IdentityError)
    Ed25519PublicKey.from_public_bytes(raw)  # a valid point, or ValueError
    return raw
