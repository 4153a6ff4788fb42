"""The paired hub, as pinned on the box: the single ``pairing`` row, the TLS client key file, pinning an
enrollment the owner confirmed, and applying a rotated key set.

Files and rows:

* ``pairing`` (one row, schema migration 5): hub id, agency, hub URL, the root certificate (PEM; the only
  trust anchor for TLS with the hub), the client certificate, the newest key set (as received, and its
  claims as RFC 8785 JSON), its version, every revoked kid, and the terms (version, text, SHA-256).
* the hub's witness (the key that cosigns the box's checkpoints), in two ``settings`` rows
  (``pairing_witness_name``, ``pairing_witness_key`` base64url) written and removed in the same transaction
  as the ``pairing`` row, so no schema change; absent for a hub that sent none (its cosignatures are kept
  unverified).
* ``tls-client.key`` in the data directory: the client certificate's P-256 key, PKCS#8 PEM, mode 0600
  (written like the device key, :mod:`edge.keyfiles`). Never logged, never printed.

Pinning writes the key file, then the row, then ``pairing.completed`` and ``hub.keys.changed`` in the audit
log; if the audit log cannot be written the row is put back as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import rfc8785
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edge import jws, keyfiles
from edge.audit import AuditLog, Event
from edge.errors import Error
from edge.store import Store
from edge.uplink.enroll import Enrollment, Terms, root_fingerprint, trust_context
from edge.uplink.keyset import KeysetError, PinnedKeyset, apply_keyset, parse_claims
from edge.uplink.request import HubKeys

CLIENT_KEY_NAME: Final = "tls-client.key"
_COLUMNS: Final = (
    "hub_id, agency, hub_url, root_pem, client_cert_pem, keyset_jws, keyset_claims, keyset_version,"
    " revoked_kids, terms_version, terms_text, terms_sha256, paired_utc_ns"
)
_SELECT: Final = f"SELECT {_COLUMNS} FROM pairing WHERE id = 1"  # noqa: S608 - constants only
_UPSERT: Final = f"INSERT OR REPLACE INTO pairing (id, {_COLUMNS}) VALUES (1{', ?' * 13})"  # noqa: S608
WITNESS_NAME_SETTING: Final = "pairing_witness_name"
WITNESS_KEY_SETTING: Final = "pairing_witness_key"


class PairingError(Error):
    kind = "pairing"


@dataclass(frozen=True)
class Pairing:
    hub_id: str
    agency: str
    hub_url: str
    root_pem: str
    client_cert_pem: str
    keyset: PinnedKeyset
    terms: Terms
    paired_utc_ns: int
    witness_name: str | None = None  # the hub's checkpoint cosigner; None: paired with a hub that sent none
    witness_key: bytes | None = None

    @property
    def root_fingerprint(self) -> str:
        return root_fingerprint(self.root_pem)

    def hub_keys(self) -> HubKeys:
        """The pinned keys, for :func:`edge.uplink.request.verify_token`."""
        return self.keyset.hub_keys()


def load(store: Store) -> Pairing | None:
    rows = store.query(_SELECT)
    if not rows:
        return None
    (hub_id, agency, url, root_pem, cert_pem, ks_jws, ks_claims, version, revoked, t_version, t_text, _sha,
     paired) = rows[0]  # fmt: skip
    claims = json.loads(bytes(ks_claims))
    try:
        claim_hub, claim_version, keys = parse_claims(claims)
    except KeysetError as e:
        raise PairingError(f"the pinned key set in {store.path.name} is damaged: {e.message}") from None
    if claim_hub != hub_id or claim_version != version:
        raise PairingError(f"the pinned key set in {store.path.name} does not match its hub or version")
    keyset = PinnedKeyset(
        hub_id=hub_id,
        version=version,
        keys=keys,
        revoked=frozenset(json.loads(revoked)),
        claims=claims,
        jws=ks_jws,
    )
    witness_name, witness_key = store.setting(WITNESS_NAME_SETTING), store.setting(WITNESS_KEY_SETTING)
    raw_witness = jws.b64url_decode(witness_key) if witness_key is not None else None
    if (witness_name is None) != (witness_key is None) or (witness_key is not None and raw_witness is None):
        raise PairingError(f"the pinned witness key in {store.path.name} is damaged")
    return Pairing(
        hub_id=hub_id,
        agency=agency,
        hub_url=url,
        root_pem=root_pem,
        client_cert_pem=cert_pem,
        keyset=keyset,
        terms=Terms(version=t_version, text=t_text),
        paired_utc_ns=paired,
        witness_name=witness_name,
        witness_key=raw_witness,
    )


def save(store: Store, pairing: Pairing) -> None:
    """Write the single row (replacing any)."""
    ks = pairing.keyset
    with store.transaction() as c:
        c.execute(
            _UPSERT,
            (
                pairing.hub_id,
                pairing.agency,
                pairing.hub_url,
                pairing.root_pem,
                pairing.client_cert_pem,
                ks.jws,
                rfc8785.dumps(dict(ks.claims)),
                ks.version,
                json.dumps(sorted(ks.revoked)),
                pairing.terms.version,
                pairing.terms.text,
                pairing.terms.sha256,
                pairing.paired_utc_ns,
            ),
        )
        _save_witness(c, pairing)


def _save_witness(c: sqlite3.Connection, pairing: Pairing | None) -> None:
    """The witness rows, in the caller's transaction: removed unless ``pairing`` has a witness."""
    c.execute("DELETE FROM settings WHERE key IN (?, ?)", (WITNESS_NAME_SETTING, WITNESS_KEY_SETTING))
    if pairing is not None and pairing.witness_name is not None and pairing.witness_key is not None:
        c.executemany(
            "INSERT INTO settings (key, value) VALUES (?, ?)",
            [
                (WITNESS_NAME_SETTING, pairing.witness_name),
                (WITNESS_KEY_SETTING, jws.b64url_encode(pairing.witness_key)),
            ],
        )


def pin(
    store: Store,
    data_dir: Path,
    enrollment: Enrollment,
    *,
    actor: str,
    now_utc_ns: int,
    replace: bool = False,
) -> Pairing:
    """Pin an enrollment the owner confirmed. Refuses if already paired, unless ``replace``."""
    previous = load(store)
    if previous is not None and not replace:
        raise PairingError(
            f"already paired with {previous.agency} (hub {previous.hub_id}); re-pairing needs --replace"
        )
    pairing = Pairing(
        hub_id=enrollment.hub_id,
        agency=enrollment.agency,
        hub_url=enrollment.hub_url,
        root_pem=enrollment.root_pem,
        client_cert_pem=enrollment.client_cert_pem,
        keyset=enrollment.keyset,
        terms=enrollment.terms,
        paired_utc_ns=now_utc_ns,
        witness_name=enrollment.witness_name,
        witness_key=enrollment.witness_key,
    )
    key_pem = enrollment.tls_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    keyfiles.prepare_dir(data_dir, PairingError)
    keyfiles.write_atomically(data_dir / CLIENT_KEY_NAME, key_pem, keyfiles.PRIVATE_MODE, PairingError)
    ks = pairing.keyset
    events = [
        Event(
            "pairing.completed",
            actor,
            details={
                "hub_id": pairing.hub_id,
                "agency": pairing.agency,
                "hub_url": pairing.hub_url,
                "root_sha256": pairing.root_fingerprint,
                "keyset_fingerprint": ks.fingerprint,
                "keyset_version": ks.version,
                "terms_version": pairing.terms.version,
                "terms_sha256": pairing.terms.sha256,
                "replaced_hub_id": previous.hub_id if previous is not None else None,
            },
        ),
        _keys_changed(actor, ks, previous.keyset if previous is not None else None),
    ]
    _save_and_log(store, pairing, previous, events, now_utc_ns)
    return pairing


def rotate(store: Store, token: str | bytes, *, actor: str, now_utc_ns: int) -> Pairing:
    """Apply a newer key set from the paired hub (:func:`apply_keyset`), pin it and log it."""
    current = load(store)
    if current is None:
        raise PairingError("not paired with a hub")
    keyset = apply_keyset(current.keyset, token)
    pairing = dataclasses.replace(current, keyset=keyset)
    _save_and_log(store, pairing, current, [_keys_changed(actor, keyset, current.keyset)], now_utc_ns)
    return pairing


def client_ssl_context(data_dir: Path, pairing: Pairing) -> ssl.SSLContext:
    """TLS 1.3 to the paired hub: trusting only its root, presenting the client certificate."""
    key_path = data_dir / CLIENT_KEY_NAME
    try:
        st = os.lstat(key_path)
    except OSError as e:
        raise PairingError(f"cannot read {key_path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077:
        raise PairingError(
            f"refusing {key_path}: not a regular file only its owner may access (chmod 600 it)"
        )
    ctx = trust_context(pairing.root_pem)
    with tempfile.NamedTemporaryFile("w", suffix=".pem", encoding="ascii") as cert_file:  # public data
        cert_file.write(pairing.client_cert_pem)
        cert_file.flush()
        try:
            ctx.load_cert_chain(cert_file.name, key_path)
        except (ssl.SSLError, OSError) as e:
            raise PairingError(
                f"the client certificate and {key_path.name} do not load together: {e}"
            ) from None
    return ctx


def _keys_changed(actor: str, keyset: PinnedKeyset, before: PinnedKeyset | None) -> Event:
    details: dict[str, Any] = {
        "hub_id": keyset.hub_id,
        "version": keyset.version,
        "fingerprint": keyset.fingerprint,
        "kids": list(keyset.keys),
        "revoked": sorted(keyset.revoked),
        "previous_version": before.version if before is not None and before.hub_id == keyset.hub_id else None,
    }
    return Event("hub.keys.changed", actor, details=details)


def _save_and_log(
    store: Store, pairing: Pairing, previous: Pairing | None, events: list[Event], now_utc_ns: int
) -> None:
    save(store, pairing)
    try:
        AuditLog(store).append(events, now_utc_ns=now_utc_ns)
    except BaseException:
        # An unlogged pin must not stay: put the row back as it was.
        if previous is not None:
            save(store, previous)
        else:
            with store.transaction() as c:
                c.execute("DELETE FROM pairing WHERE id = 1")
                _save_witness(c, None)
        raise
