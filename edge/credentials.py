"""Camera credentials encrypted at rest: sealed with a public key, opened only by the daemon.

Keys (in the data directory):

* ``credentials.key`` — the X25519 private key, 32 raw bytes, mode 0600. Only the daemon reads it
  (:class:`Opener`). A file that group or others may access is refused.
* ``credentials.pub`` — the X25519 public key, 32 raw bytes, mode 0644. Enough to seal (:class:`Sealer`), so
  ``edge cameras add`` never touches the private key.

Either class's ``load`` creates the pair when neither file exists. Creation holds an exclusive ``flock`` on
``credentials.lock``, so concurrent first starts end with one consistent pair. Each file is written under a
unique temporary name opened with ``O_CREAT | O_EXCL`` and its final mode (never readable by others, not even
briefly), fsynced, renamed into place, and then the directory is fsynced. The private key is the truth:
:meth:`Opener.load` rewrites a missing or mismatched ``credentials.pub`` from it. If the private key is gone
while the public key remains, the Opener makes a new pair (the old blobs were unreadable anyway) and
:meth:`Sealer.load` keeps sealing to the existing public key; a missing public key next to an existing private
key makes :meth:`Sealer.load` fail (it will not read the private key) until the daemon has started once.

Blob format (version 1)::

    blob = 0x01 || enc (32 bytes, the HPKE encapsulated X25519 key) || ct (len(secret_utf8) + 16 bytes)

``enc || ct`` is the single-shot output of HPKE base mode (RFC 9180), suite DHKEM(X25519, HKDF-SHA256) /
HKDF-SHA256 / ChaCha20-Poly1305, as ``cryptography.hazmat.primitives.hpke.Suite.encrypt`` returns it. The
caller's associated data (the camera's URL without credentials, so a blob cannot be moved to another camera)
is bound through HPKE's ``info`` — cryptography's public API takes no AAD — as::

    info = b"edge camera credential v1" || 0x00 || SHA-256(aad)

(58 bytes, within the 64 bytes RFC 9180 asks every implementation to accept). A different AAD gives a
different key schedule, so opening fails exactly as a wrong AEAD tag would. The plaintext is the secret in
UTF-8.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from edge import keyfiles
from edge.errors import Error

PRIVATE_KEY_NAME = "credentials.key"
PUBLIC_KEY_NAME = "credentials.pub"
LOCK_NAME = "credentials.lock"
BLOB_VERSION = 1
INFO_LABEL = b"edge camera credential v1"
KEY_BYTES = 32
_ENC_BYTES = 32
_TAG_BYTES = 16
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_PRIVATE_MODE = keyfiles.PRIVATE_MODE
_PUBLIC_MODE = keyfiles.PUBLIC_MODE


class CredentialError(Error):
    """A credential could not be sealed or opened, or a key file is unusable. Never carries the secret."""

    kind = "credential"


def _info(aad: bytes) -> bytes:
    return INFO_LABEL + b"\x00" + hashlib.sha256(aad).digest()


# The two helpers below return None instead of raising: a Unicode error holds the text it failed on, and it
# must not ride along as the ``__context__`` of the CredentialError raised instead.
def _encode(secret: str) -> bytes | None:
    try:
        return secret.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _decode(plaintext: bytes) -> str | None:
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    keyfiles.write_atomically(path, data, mode, CredentialError)


def _creation_lock(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    return keyfiles.creation_lock(data_dir, LOCK_NAME, CredentialError)


def _read_key_file(path: Path, *, private: bool) -> bytes:
    return keyfiles.read_key_file(
        path, private=private, size=KEY_BYTES, what="X25519 key", error=CredentialError
    )


def _create_pair(data_dir: Path) -> X25519PrivateKey:
    """Make a new pair; call with the creation lock held. The private key lands first: it is the truth."""
    key = X25519PrivateKey.generate()
    _write_atomically(data_dir / PRIVATE_KEY_NAME, _raw_private(key), _PRIVATE_MODE)
    _write_atomically(data_dir / PUBLIC_KEY_NAME, _raw_public(key.public_key()), _PUBLIC_MODE)
    return key


def _prepare_dir(data_dir: Path) -> Path:
    return keyfiles.prepare_dir(data_dir, CredentialError)


class Sealer:
    """Seals secrets to the daemon's public key. Holds no private key material."""

    __slots__ = ("_data_dir", "_public_key")

    def __init__(self, public_key: X25519PublicKey, data_dir: Path | None = None) -> None:
        self._public_key = public_key
        self._data_dir = data_dir

    @classmethod
    def load(cls, data_dir: Path) -> Sealer:
        """Read ``credentials.pub``; create the key pair first when there is none."""
        data_dir = _prepare_dir(data_dir)
        public_path = data_dir / PUBLIC_KEY_NAME
        if not public_path.exists():
            with _creation_lock(data_dir):
                if not public_path.exists():
                    if (data_dir / PRIVATE_KEY_NAME).exists():
                        raise CredentialError(
                            f"{public_path} is missing but {data_dir / PRIVATE_KEY_NAME} exists; "
                            "start the daemon once to write the public key again"
                        )
                    _create_pair(data_dir)
        raw = _read_key_file(public_path, private=False)
        return cls(X25519PublicKey.from_public_bytes(raw), data_dir)

    def seal(self, secret: str, aad: bytes) -> bytes:
        """Encrypt ``secret`` for the daemon, bound to ``aad`` (the camera's URL without credentials)."""
        plaintext = _encode(secret)
        if plaintext is None:
            raise CredentialError("the secret is not valid text (it holds an unpaired surrogate)")
        return bytes([BLOB_VERSION]) + _SUITE.encrypt(plaintext, self._public_key, info=_info(aad))

    def __repr__(self) -> str:
        return f"Sealer(data_dir={str(self._data_dir)!r})"


class Opener:
    """Opens sealed secrets with the private key. Only the daemon should build one."""

    __slots__ = ("_data_dir", "_private_key")

    def __init__(self, private_key: X25519PrivateKey, data_dir: Path | None = None) -> None:
        self._private_key = private_key
        self._data_dir = data_dir

    @classmethod
    def load(cls, data_dir: Path) -> Opener:
        """Read ``credentials.key`` (creating the pair when missing); make ``credentials.pub`` match it."""
        data_dir = _prepare_dir(data_dir)
        private_path = data_dir / PRIVATE_KEY_NAME
        public_path = data_dir / PUBLIC_KEY_NAME
        with _creation_lock(data_dir):
            if not private_path.exists() and not private_path.is_symlink():
                key = _create_pair(data_dir)
            else:
                key = X25519PrivateKey.from_private_bytes(_read_key_file(private_path, private=True))
                public = _raw_public(key.public_key())
                try:
                    current = _read_key_file(public_path, private=False)
                except CredentialError:
                    current = b""
                if current != public:
                    _write_atomically(public_path, public, _PUBLIC_MODE)
        return cls(key, data_dir)

    def sealer(self) -> Sealer:
        """A Sealer for this key pair (the daemon re-seals without reading the public key file)."""
        return Sealer(self._private_key.public_key(), self._data_dir)

    def open(self, blob: bytes, aad: bytes) -> str:
        """Decrypt a blob sealed for ``aad``. A wrong key, wrong AAD or altered blob: CredentialError."""
        if len(blob) < 1 + _ENC_BYTES + _TAG_BYTES:
            raise CredentialError(f"credential blob is too short ({len(blob)} bytes)")
        if blob[0] != BLOB_VERSION:
            raise CredentialError(f"credential blob has unknown version {blob[0]}")
        try:
            plaintext = _SUITE.decrypt(blob[1:], self._private_key, info=_info(aad))
        except InvalidTag:
            raise CredentialError(
                "credential blob does not open: wrong key, sealed for another camera, or altered"
            ) from None
        secret = _decode(plaintext)
        if secret is None:
            raise CredentialError("credential blob holds no valid UTF-8 text")
        return secret

    def __repr__(self) -> str:
        return f"Opener(data_dir={str(self._data_dir)!r})"
