"""The reference hub's data directory: who the hub is, its root CA, its signing keys and key sets, one-time
enrollment tokens and the devices enrolled with them.

Layout (the directory is 0700; private keys 0600, written atomically by :mod:`edge.keyfiles`)::

    hub.json            {"hub_id", "agency", "terms": {"version", "text"}}
    root.key            the root CA's P-256 key, PKCS#8 PEM, 0600
    root.pem            the root certificate (what enrollment codes pin)
    sign-<kid>.key      each Ed25519 signing key, 32 raw bytes, 0600
    server.key/.pem     the TLS server certificate, made by ``edge hub serve`` for its names
    witness.key         the Ed25519 key that cosigns boxes' audit checkpoints, 32 raw bytes, 0600 (made on
                        first use)
    hub.db              SQLite: keysets, enroll_tokens, devices, cosignatures, registry

Tokens are stored by their SHA-256 only. Marking one used and recording the device is one transaction, so a
token races to exactly one enrollment.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from edge import jws, keyfiles
from edge.errors import Error
from edge.hub import ca
from edge.uplink import controlwire
from edge.uplink.enroll import Terms
from edge.uplink.keyset import MAX_KEYSET_BYTES, fingerprint, is_name, raw_public, sign_keyset

HUB_FILE: Final = "hub.json"
ROOT_KEY: Final = "root.key"
ROOT_CERT: Final = "root.pem"
SERVER_KEY: Final = "server.key"
SERVER_CERT: Final = "server.pem"
DB_FILE: Final = "hub.db"
WITNESS_KEY: Final = "witness.key"
TOKEN_BYTES: Final = 16
MAX_PRIVATE_PEM_BYTES: Final = 64 * 1024
DEFAULT_TERMS: Final = Terms(
    version="reference-1",
    text=(
        "Reference hub terms (for tests and demonstrations only).\n"
        "The police may ask to view your integrated cameras only in an emergency near them, within the\n"
        "limits you set; every request and every view is recorded in your box's audit log. You may withdraw\n"
        "at any time.\n"
    ),
)
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS keysets (
    version INTEGER PRIMARY KEY CHECK (version >= 1),
    jws TEXT NOT NULL,
    kids TEXT NOT NULL,                     -- JSON array, the set's order
    created_utc_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS enroll_tokens (
    token_sha256 TEXT PRIMARY KEY,
    created_utc_ns INTEGER NOT NULL,
    expires_utc_ns INTEGER NOT NULL,
    used_utc_ns INTEGER,
    device_id TEXT
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    device_key BLOB NOT NULL CHECK (length(device_key) = 32),
    client_cert TEXT NOT NULL,
    box_version TEXT NOT NULL,
    enrolled_utc_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cosignatures (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    tree_size INTEGER NOT NULL,
    note TEXT NOT NULL,                     -- the box's signed checkpoint note, as received
    line TEXT NOT NULL,                     -- our cosignature line (no final newline)
    cosigned_utc_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cosignatures_device ON cosignatures (device_id, tree_size);
CREATE TABLE IF NOT EXISTS registry (
    device_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL,                      -- the box's signed registry document, RFC 8785 JSON
    received_utc_ns INTEGER NOT NULL
);
"""


class HubError(Error):
    kind = "hub"


class StaleRegistry(Error):
    """A registry whose version is not above the one stored (a replay, or a box clock gone back)."""

    kind = "stale"

    def __init__(self, stored: int) -> None:
        super().__init__(f"a registry version not above the stored {stored}")
        self.stored = stored


class TokenRefused(Error):
    """An enrollment token refused: ``code`` is ``bad_token``, ``token_used`` or ``token_expired``."""

    kind = "refused"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Device:
    device_id: str
    device_key: bytes
    client_cert: str
    box_version: str
    enrolled_utc_ns: int


@dataclass(frozen=True)
class StoredRegistry:
    """A box's latest registry document (signature checked when it came, :mod:`edge.uplink.registry`)."""

    device_id: str
    version: int
    doc: dict[str, Any]
    received_utc_ns: int


class HubState:
    """One hub directory. Each call opens its own SQLite connection, so any thread may use it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        try:
            info = json.loads((data_dir / HUB_FILE).read_text(encoding="utf-8"))
            self.hub_id: str = info["hub_id"]
            self.agency: str = info["agency"]
            self.terms = Terms(version=info["terms"]["version"], text=info["terms"]["text"])
            self.root = x509.load_pem_x509_certificate((data_dir / ROOT_CERT).read_bytes())
        except FileNotFoundError:
            raise HubError(
                f"{data_dir} is not a hub directory: run `edge hub keygen --data {data_dir}`"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HubError(f"{data_dir}: damaged hub files ({type(e).__name__})") from None
        with self._db() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def create(
        cls,
        data_dir: Path,
        *,
        hub_id: str,
        agency: str,
        now_utc_ns: int,
        terms: Terms = DEFAULT_TERMS,
    ) -> HubState:
        """A new hub: root CA, one signing key, key set version 1. Refuses a directory that has a hub."""
        if not is_name(hub_id, 128) or not is_name(agency, 200):
            raise HubError("hub id and agency must be printable names (1..128 and 1..200 characters)")
        keyfiles.prepare_dir(data_dir, HubError)
        if (data_dir / HUB_FILE).exists() or (data_dir / ROOT_KEY).exists():
            raise HubError(f"{data_dir} already holds a hub")
        root_key, root = ca.make_root(f"{agency} edge hub root", now=_dt(now_utc_ns))
        key_pem = root_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        keyfiles.write_atomically(data_dir / ROOT_KEY, key_pem, keyfiles.PRIVATE_MODE, HubError)
        keyfiles.write_atomically(data_dir / ROOT_CERT, ca.pem(root).encode(), keyfiles.PUBLIC_MODE, HubError)
        info = {"hub_id": hub_id, "agency": agency, "terms": {"version": terms.version, "text": terms.text}}
        keyfiles.write_atomically(
            data_dir / HUB_FILE, json.dumps(info, indent=2).encode(), keyfiles.PUBLIC_MODE, HubError
        )
        state = cls(data_dir)
        kid, key = state._new_signing_key()
        state._store_keyset(
            1, [kid], sign_keyset(hub_id, 1, [(kid, raw_public(key))], kid=kid, key=key), now_utc_ns
        )
        return state

    # --- the CA --------------------------------------------------------------------------------------------

    @property
    def root_pem(self) -> str:
        return ca.pem(self.root)

    @property
    def root_fingerprint(self) -> str:
        return ca.fingerprint(self.root)

    def root_key(self) -> ec.EllipticCurvePrivateKey:
        key = load_pem_private_key(_read_private(self.data_dir / ROOT_KEY), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise HubError(f"{self.data_dir / ROOT_KEY} is not an EC key")
        return key

    def write_server_cert(self, names: Sequence[str], *, now_utc_ns: int) -> tuple[Path, Path]:
        """A fresh TLS server certificate for ``names``; returns (certificate, key) paths."""
        key, cert = ca.issue_server(self.root_key(), self.root, names, now=_dt(now_utc_ns))
        key_path, cert_path = self.data_dir / SERVER_KEY, self.data_dir / SERVER_CERT
        key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        keyfiles.write_atomically(key_path, key_pem, keyfiles.PRIVATE_MODE, HubError)
        keyfiles.write_atomically(cert_path, ca.pem(cert).encode(), keyfiles.PUBLIC_MODE, HubError)
        return cert_path, key_path

    # --- signing keys and key sets -------------------------------------------------------------------------

    def keyset(self) -> str:
        """The newest key set, a compact JWS."""
        with self._db() as db:
            row = db.execute("SELECT jws FROM keysets ORDER BY version DESC LIMIT 1").fetchone()
        if row is None:
            raise HubError(f"{self.data_dir}: no key set")
        return str(row[0])

    def keyset_claims(self) -> dict[str, object]:
        """The newest set's claims, as signed: what boxes fingerprint."""
        return jws.parse(self.keyset(), max_bytes=MAX_KEYSET_BYTES).payload

    def keyset_fingerprint(self) -> str:
        return fingerprint(self.keyset_claims())

    def current_kids(self) -> list[str]:
        return self._current()[1]

    def signing_key(self, kid: str) -> Ed25519PrivateKey:
        path = self.data_dir / f"sign-{kid}.key"
        raw = keyfiles.read_key_file(path, private=True, size=32, what="Ed25519 key", error=HubError)
        return Ed25519PrivateKey.from_private_bytes(raw)

    def rotate_keys(self, *, add: int = 1, retire: Sequence[str] = (), now_utc_ns: int) -> str:
        """The next key set: ``add`` new keys, the ``retire``d kids left out (boxes revoke them). It is signed
        by the first key of the current set, which the boxes have pinned."""
        version, kids = self._current()
        unknown = set(retire) - set(kids)
        if unknown:
            raise HubError(f"not current kids: {sorted(unknown)}")
        signer = kids[0]
        new_kids = [k for k in kids if k not in retire] + [self._new_signing_key()[0] for _ in range(add)]
        if not new_kids:
            raise HubError("a key set needs at least one key")
        keys = [(k, raw_public(self.signing_key(k))) for k in new_kids]
        token = sign_keyset(self.hub_id, version + 1, keys, kid=signer, key=self.signing_key(signer))
        self._store_keyset(version + 1, new_kids, token, now_utc_ns)
        return token

    def _new_signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        key = Ed25519PrivateKey.generate()
        kid = hashlib.sha256(raw_public(key)).hexdigest()[:16]
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        keyfiles.write_atomically(self.data_dir / f"sign-{kid}.key", raw, keyfiles.PRIVATE_MODE, HubError)
        return kid, key

    def _current(self) -> tuple[int, list[str]]:
        with self._db() as db:
            row = db.execute("SELECT version, kids FROM keysets ORDER BY version DESC LIMIT 1").fetchone()
        if row is None:
            raise HubError(f"{self.data_dir}: no key set")
        return int(row[0]), list(json.loads(row[1]))

    def _store_keyset(self, version: int, kids: list[str], token: str, now_utc_ns: int) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO keysets (version, jws, kids, created_utc_ns) VALUES (?, ?, ?, ?)",
                (version, token, json.dumps(kids), now_utc_ns),
            )

    # --- enrollment tokens and devices ---------------------------------------------------------------------

    def issue_token(self, *, ttl_s: int, now_utc_ns: int) -> str:
        """A one-time enrollment token (base64url of 16 random bytes), valid for ``ttl_s``."""
        if ttl_s <= 0:
            raise HubError("a token's lifetime must be positive")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._db() as db:
            db.execute(
                "INSERT INTO enroll_tokens (token_sha256, created_utc_ns, expires_utc_ns) VALUES (?, ?, ?)",
                (_token_hash(token), now_utc_ns, now_utc_ns + ttl_s * 1_000_000_000),
            )
        return token

    def enroll(
        self,
        token: str,
        *,
        device_id: str,
        device_key: bytes,
        client_cert: str,
        box_version: str,
        now_utc_ns: int,
    ) -> None:
        """Use ``token`` for ``device_id`` and record the device, atomically; :class:`TokenRefused`
        otherwise. A device that enrolls again (a re-pairing owner) gets its new certificate recorded."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT expires_utc_ns, used_utc_ns FROM enroll_tokens WHERE token_sha256 = ?",
                (_token_hash(token),),
            ).fetchone()
            if row is None:
                raise TokenRefused("bad_token", "no such enrollment token")
            if row[1] is not None:
                raise TokenRefused("token_used", "this enrollment token was already used")
            if now_utc_ns > row[0]:
                raise TokenRefused("token_expired", "this enrollment token has expired")
            db.execute(
                "UPDATE enroll_tokens SET used_utc_ns = ?, device_id = ? WHERE token_sha256 = ?",
                (now_utc_ns, device_id, _token_hash(token)),
            )
            db.execute(
                "INSERT OR REPLACE INTO devices"
                " (device_id, device_key, client_cert, box_version, enrolled_utc_ns) VALUES (?, ?, ?, ?, ?)",
                (device_id, device_key, client_cert, box_version, now_utc_ns),
            )

    def devices(self) -> list[Device]:
        with self._db() as db:
            rows = db.execute(
                "SELECT device_id, device_key, client_cert, box_version, enrolled_utc_ns FROM devices"
                " ORDER BY enrolled_utc_ns"
            ).fetchall()
        return [Device(r[0], bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    def device(self, device_id: str) -> Device | None:
        with self._db() as db:
            r = db.execute(
                "SELECT device_id, device_key, client_cert, box_version, enrolled_utc_ns FROM devices"
                " WHERE device_id = ?",
                (device_id,),
            ).fetchone()
        return None if r is None else Device(r[0], bytes(r[1]), r[2], r[3], r[4])

    # --- the witness: cosigned checkpoints -----------------------------------------------------------------

    @property
    def witness_name(self) -> str:
        """The cosigner's key name (a schema-less URL-like name, as C2SP asks)."""
        return controlwire.witness_name(self.hub_id)

    def witness_key(self) -> Ed25519PrivateKey:
        """The cosigning key, made on first use (hubs made before the control channel have none yet)."""
        path = self.data_dir / WITNESS_KEY
        with keyfiles.creation_lock(self.data_dir, "witness.lock", HubError):
            if not path.exists():
                raw = Ed25519PrivateKey.generate().private_bytes(
                    Encoding.Raw, PrivateFormat.Raw, NoEncryption()
                )
                keyfiles.write_atomically(path, raw, keyfiles.PRIVATE_MODE, HubError)
        raw = keyfiles.read_key_file(path, private=True, size=32, what="Ed25519 key", error=HubError)
        return Ed25519PrivateKey.from_private_bytes(raw)

    def witness_public(self) -> bytes:
        return raw_public(self.witness_key())

    def add_cosignature(
        self, device_id: str, *, tree_size: int, note: str, line: str, now_utc_ns: int
    ) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO cosignatures (device_id, tree_size, note, line, cosigned_utc_ns)"
                " VALUES (?, ?, ?, ?, ?)",
                (device_id, tree_size, note, line, now_utc_ns),
            )

    def cosignatures(self, device_id: str) -> list[tuple[int, str, str]]:
        """``(tree size, note, cosignature line)`` for every checkpoint of ``device_id`` we cosigned."""
        with self._db() as db:
            rows = db.execute(
                "SELECT tree_size, note, line FROM cosignatures WHERE device_id = ? ORDER BY id", (device_id,)
            ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    # --- the registry: each box's shared cameras ------------------------------------------------------------

    def store_registry(self, device_id: str, *, version: int, doc: bytes, now_utc_ns: int) -> int | None:
        """Keep ``doc`` (checked, RFC 8785 bytes) if ``version`` is above the stored one; returns the version
        that was stored before (None: this is the device's first), or raises :class:`StaleRegistry`."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT version FROM registry WHERE device_id = ?", (device_id,)).fetchone()
            if row is not None and version <= row[0]:
                raise StaleRegistry(int(row[0]))
            db.execute(
                "INSERT OR REPLACE INTO registry (device_id, version, doc, received_utc_ns)"
                " VALUES (?, ?, ?, ?)",
                (device_id, version, doc.decode("utf-8"), now_utc_ns),
            )
        return None if row is None else int(row[0])

    def registry(self, device_id: str) -> StoredRegistry | None:
        with self._db() as db:
            r = db.execute(
                "SELECT device_id, version, doc, received_utc_ns FROM registry WHERE device_id = ?",
                (device_id,),
            ).fetchone()
        return None if r is None else StoredRegistry(r[0], int(r[1]), json.loads(r[2]), int(r[3]))

    def registries(self) -> list[StoredRegistry]:
        """Every box's latest registry, by device id."""
        with self._db() as db:
            rows = db.execute(
                "SELECT device_id, version, doc, received_utc_ns FROM registry ORDER BY device_id"
            ).fetchall()
        return [StoredRegistry(r[0], int(r[1]), json.loads(r[2]), int(r[3])) for r in rows]

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for one unit of work: committed at the end, rolled back on an exception."""
        try:
            conn = sqlite3.connect(self.data_dir / DB_FILE, timeout=10.0, isolation_level=None)
        except sqlite3.Error as e:
            raise HubError(f"cannot open {self.data_dir / DB_FILE}: {e}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _dt(utc_ns: int) -> datetime:
    return datetime.fromtimestamp(utc_ns / 1e9, UTC)


def _read_private(path: Path) -> bytes:
    """A PEM private key only its owner may read (like :func:`edge.keyfiles.read_key_file`, any size)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise HubError(f"cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077:
            raise HubError(f"refusing private key {path}: not a regular file only its owner may access")
        data = os.read(fd, MAX_PRIVATE_PEM_BYTES)
    finally:
        os.close(fd)
    return data
