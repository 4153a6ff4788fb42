"""The reference hub's certificate authority (cryptography.x509): a root, the hub's TLS server certificate,
and client certificates issued from the CSRs boxes send at enrollment.

All keys are ECDSA P-256 (every TLS stack and browser takes it; Ed25519 certificates are not accepted by
browsers, and the hub's console is a web page). Times are passed in, never read here.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.errors import Error

ROOT_DAYS: Final = 3650
SERVER_DAYS: Final = 397
CLIENT_DAYS: Final = 1825  # renewal over the control channel is not built yet: outlive a box's first years
BACKDATE: Final = timedelta(minutes=5)  # boxes whose clock runs a little behind
MAX_CSR_BYTES: Final = 8192


class CAError(Error):
    kind = "ca"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_root(common_name: str, *, now: datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed root that may sign only end-entity certificates (path length 0)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=ROOT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_server(
    root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate, names: Sequence[str], *, now: datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for ``names`` (DNS names or IP addresses), with a fresh key."""
    if not names:
        raise CAError("a server certificate needs at least one DNS name or IP address")
    key = new_key()
    cert = (
        _leaf(root_key, root, key.public_key(), names[0], now=now, days=SERVER_DAYS)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return key, cert


def issue_client(
    root_key: ec.EllipticCurvePrivateKey,
    root: x509.Certificate,
    csr_pem: str,
    *,
    device_id: str,
    now: datetime,
) -> x509.Certificate:
    """A client certificate for a box's CSR: its signature must hold, its CN must be ``device_id``, its key
    P-256 or Ed25519. Only the key is taken from the CSR; everything else is the hub's."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CAError(f"the CSR is over {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise CAError("tls_csr is not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise CAError("the CSR's signature does not hold")
    public = csr.public_key()
    if not (
        isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    ) and not (isinstance(public, ed25519.Ed25519PublicKey)):
        raise CAError("the CSR's key is neither P-256 nor Ed25519")
    cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [device_id]:
        raise CAError("the CSR's common name is not the device id")
    return (
        _leaf(root_key, root, public, device_id, now=now, days=CLIENT_DAYS)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(root_key, hashes.SHA256())
    )


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the DER: what an enrollment code pins."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode("ascii")


def _leaf(
    root_key: ec.EllipticCurvePrivateKey,
    root: x509.Certificate,
    public: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    common_name: str,
    *,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(root.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(days=days), root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or not name.isascii() or any(c in name for c in " /:@"):
        raise CAError(f"{name!r} is neither a DNS name nor an IP address")
    return x509.DNSName(name)
