"""The reference hub's CA, state and enrollment-request check (edge/hub/): certificates that real TLS
accepts (handshakes in memory through OpenSSL, no sockets), CSRs refused for the wrong device or key, tokens
used once, and the box's signed enrollment request checked rule by rule."""

from __future__ import annotations

import hashlib
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge import jws
from edge.hub import ca
from edge.hub.server import BadRequest, check_enroll_request
from edge.hub.state import HubError, HubState, TokenRefused
from edge.identity import DeviceIdentity
from edge.uplink.enroll import KID, TYP, enroll_request, make_csr

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
NOW_NS = int(NOW.timestamp()) * 10**9
NOW_S = NOW_NS // 10**9
DEVICE = DeviceIdentity(ed25519.Ed25519PrivateKey.generate())
DEVICE_ID = DEVICE.public.device_id


@pytest.fixture(scope="module")
def root() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return ca.make_root("Test hub root", now=NOW)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> ssl.SSLObject:
    """A real TLS handshake between two contexts over memory BIOs; raises what OpenSSL raises."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj, out, peer_in in (("c", c, c_out, s_in), ("s", s, s_out, c_in)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            # TLS 1.3: the server checks the client certificate after its own handshake is done.
            c.write(b"x")
            s_in.write(c_out.read())
            s.read(1)
            return s
    raise AssertionError("handshake did not finish")


def server_ctx(
    tmp: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, root_pem: str
) -> ssl.SSLContext:
    from edge.hub.server import server_context

    return server_context(
        _write(tmp, "s.pem", ca.pem(cert).encode()), _write(tmp, "s.key", _key_pem(key)), root_pem
    )


# --- the CA -------------------------------------------------------------------------------------------------


def test_the_root_is_a_p256_ca_for_end_entities_only(root: tuple[Any, x509.Certificate]) -> None:
    key, cert = root
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    cert.verify_directly_issued_by(cert)
    assert ca.fingerprint(cert) == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert cert.not_valid_before_utc <= NOW < cert.not_valid_after_utc


def test_the_server_certificate_passes_tls_for_its_names_only(
    root: tuple[Any, x509.Certificate], tmp_path: Path
) -> None:
    root_key, root_cert = root
    key, cert = ca.issue_server(root_key, root_cert, ["127.0.0.1", "hub.example", "::1"], now=NOW)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert sans.get_values_for_type(x509.DNSName) == ["hub.example"]
    server = server_ctx(tmp_path, cert, key, ca.pem(root_cert))
    from edge.uplink.enroll import trust_context

    client = trust_context(ca.pem(root_cert))
    for name in ("127.0.0.1", "hub.example", "::1"):
        assert handshake(server, client, name).version() == "TLSv1.3"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(server, client, "other.example")
    _other_key, other_root = ca.make_root("Other root", now=NOW)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        handshake(server, trust_context(ca.pem(other_root)), "127.0.0.1")
    with pytest.raises(ca.CAError):
        ca.issue_server(root_key, root_cert, ["bad name/x"], now=NOW)
    with pytest.raises(ca.CAError):
        ca.issue_server(root_key, root_cert, [], now=NOW)


def test_tls_12_is_refused(root: tuple[Any, x509.Certificate], tmp_path: Path) -> None:
    root_key, root_cert = root
    key, cert = ca.issue_server(root_key, root_cert, ["127.0.0.1"], now=NOW)
    client = ssl.create_default_context(cadata=ca.pem(root_cert))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(server_ctx(tmp_path, cert, key, ca.pem(root_cert)), client, "127.0.0.1")


def _csr(key: Any, cn: str, *extra: x509.NameAttribute[str]) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), *extra])
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, algo)
        .public_bytes(Encoding.PEM)
        .decode()
    )


def test_a_client_certificate_is_issued_for_the_device_and_works_in_tls(
    root: tuple[Any, x509.Certificate], tmp_path: Path
) -> None:
    root_key, root_cert = root
    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(tls_key, DEVICE_ID, x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"))
    cert = ca.issue_client(root_key, root_cert, csr, device_id=DEVICE_ID, now=NOW)
    cert.verify_directly_issued_by(root_cert)
    assert cert.subject.rfc4514_string() == f"CN={DEVICE_ID}"  # only the key comes from the CSR
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc <= root_cert.not_valid_after_utc
    assert cert.public_key() == tls_key.public_key()

    # The hub's server, requiring a client certificate, takes it; one from another root is refused.
    s_key, s_cert = ca.issue_server(root_key, root_cert, ["127.0.0.1"], now=NOW)
    server = server_ctx(tmp_path, s_cert, s_key, ca.pem(root_cert))
    server.verify_mode = ssl.CERT_REQUIRED
    from edge.uplink.enroll import trust_context

    client = trust_context(ca.pem(root_cert))
    client.load_cert_chain(
        _write(tmp_path, "c.pem", ca.pem(cert).encode()), _write(tmp_path, "c.key", _key_pem(tls_key))
    )
    peer = handshake(server, client, "127.0.0.1").getpeercert()
    assert peer is not None and (("commonName", DEVICE_ID),) in peer["subject"]

    other_key, other_root = ca.make_root("Other root", now=NOW)
    foreign = ca.issue_client(other_key, other_root, csr, device_id=DEVICE_ID, now=NOW)
    client = trust_context(ca.pem(root_cert))
    client.load_cert_chain(_write(tmp_path, "f.pem", ca.pem(foreign).encode()), tmp_path / "c.key")
    with pytest.raises(ssl.SSLError):
        handshake(server, client, "127.0.0.1")


def test_an_ed25519_csr_is_accepted(root: tuple[Any, x509.Certificate]) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = ca.issue_client(*root, _csr(key, DEVICE_ID), device_id=DEVICE_ID, now=NOW)
    assert cert.public_key() == key.public_key()


def test_csrs_are_refused_for_another_device_a_bad_signature_or_another_key_type(
    root: tuple[Any, x509.Certificate],
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ca.CAError, match="common name"):
        ca.issue_client(*root, _csr(key, "edge-someone-else"), device_id=DEVICE_ID, now=NOW)
    with pytest.raises(ca.CAError, match="common name"):
        ca.issue_client(
            *root,
            _csr(key, DEVICE_ID, x509.NameAttribute(NameOID.COMMON_NAME, "x")),
            device_id=DEVICE_ID,
            now=NOW,
        )
    with pytest.raises(ca.CAError, match="neither P-256 nor Ed25519"):
        ca.issue_client(
            *root, _csr(ec.generate_private_key(ec.SECP384R1()), DEVICE_ID), device_id=DEVICE_ID, now=NOW
        )
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ca.CAError, match="neither P-256 nor Ed25519"):
        ca.issue_client(*root, _csr(rsa_key, DEVICE_ID), device_id=DEVICE_ID, now=NOW)
    # A CSR whose signature does not hold: the subject swapped after signing (DER edited in place).
    good = x509.load_pem_x509_csr(_csr(key, DEVICE_ID).encode()).public_bytes(Encoding.DER)
    other_id = "edge-" + "0" * 32
    forged = good.replace(DEVICE_ID.encode(), other_id.encode())
    forged_pem = x509.load_der_x509_csr(forged).public_bytes(Encoding.PEM).decode()
    with pytest.raises(ca.CAError, match="signature"):
        ca.issue_client(*root, forged_pem, device_id=other_id, now=NOW)
    for junk in (
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ):
        with pytest.raises(ca.CAError):
            ca.issue_client(*root, junk, device_id=DEVICE_ID, now=NOW)
    with pytest.raises(ca.CAError, match="over"):
        ca.issue_client(*root, "x" * 9000, device_id=DEVICE_ID, now=NOW)


# --- the hub's state ----------------------------------------------------------------------------------------


def test_a_hub_directory_keeps_its_keys_private(tmp_path: Path) -> None:
    state = HubState.create(tmp_path / "hub", hub_id="met-1", agency="Met", now_utc_ns=NOW_NS)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hub").iterdir()}
    assert stat.S_IMODE((tmp_path / "hub").stat().st_mode) == 0o700
    assert modes["root.key"] == 0o600 and modes["root.pem"] == 0o644
    signing = [n for n in modes if n.startswith("sign-")]
    assert len(signing) == 1 and modes[signing[0]] == 0o600
    assert HubState(tmp_path / "hub").root_fingerprint == state.root_fingerprint
    with pytest.raises(HubError, match="already holds a hub"):
        HubState.create(tmp_path / "hub", hub_id="met-1", agency="Met", now_utc_ns=NOW_NS)
    with pytest.raises(HubError, match="not a hub directory"):
        HubState(tmp_path / "nothing")
    (tmp_path / "hub" / "root.key").chmod(0o644)
    with pytest.raises(HubError, match="refusing private key"):
        state.root_key()


def test_a_token_enrolls_once_and_is_stored_hashed(tmp_path: Path) -> None:
    state = HubState.create(tmp_path, hub_id="met-1", agency="Met", now_utc_ns=NOW_NS)
    token = state.issue_token(ttl_s=60, now_utc_ns=NOW_NS)
    assert len(jws.b64url_decode(token) or b"") == 16
    kw: dict[str, Any] = {"device_key": bytes(32), "client_cert": "c", "box_version": "1"}
    state.enroll(token, device_id="edge-a", now_utc_ns=NOW_NS + 1, **kw)
    with pytest.raises(TokenRefused) as e:
        state.enroll(token, device_id="edge-b", now_utc_ns=NOW_NS + 2, **kw)
    assert e.value.code == "token_used"
    assert [d.device_id for d in state.devices()] == ["edge-a"]

    late = state.issue_token(ttl_s=60, now_utc_ns=NOW_NS)
    with pytest.raises(TokenRefused) as e:
        state.enroll(late, device_id="edge-c", now_utc_ns=NOW_NS + 61 * 10**9, **kw)
    assert e.value.code == "token_expired"
    with pytest.raises(TokenRefused) as e:
        state.enroll("never-issued-token-xxxxx", device_id="edge-c", now_utc_ns=NOW_NS, **kw)
    assert e.value.code == "bad_token"
    assert [d.device_id for d in state.devices()] == ["edge-a"]  # refused tokens record nothing
    db = (tmp_path / "hub.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("hub.db-*"))
    assert token.encode() not in db and late.encode() not in db


# --- the enrollment request ---------------------------------------------------------------------------------


def _request(**changes: Any) -> str:
    claims: dict[str, Any] = {
        "token": "tok",
        "device_id": DEVICE_ID,
        "device_key": jws.b64url_encode(DEVICE.public.public_key),
        "tls_csr": make_csr(ec.generate_private_key(ec.SECP256R1()), DEVICE_ID),
        "box_version": "0.1.0",
        "iat": NOW_S,
        "exp": NOW_S + 120,
    }
    claims.update(changes)
    for k in [k for k, v in claims.items() if v is None]:
        del claims[k]
    return jws.sign(claims, typ=TYP, kid=KID, key=DEVICE.private_key)


def test_the_box_request_is_accepted() -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), DEVICE_ID)
    token = enroll_request(DEVICE, token="tok", csr_pem=csr, box_version="0.1.0", now_s=NOW_S)
    header = jws.parse(token, max_bytes=99999).header
    assert header == {"alg": "Ed25519", "typ": "edge-enroll+jwt", "kid": "device"}
    req = check_enroll_request(token, now_s=NOW_S)
    assert (req.device_id, req.device_key, req.token) == (DEVICE_ID, DEVICE.public.public_key, "tok")


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda: _request(device_id="edge-" + "0" * 32), "not derived"),
        (lambda: _request(extra=1), "unknown claim"),
        (lambda: _request(box_version=None), "lack box_version"),
        (lambda: _request(exp=NOW_S + 301), "exp - iat"),
        (lambda: _request(exp=NOW_S), "exp - iat"),
        (lambda: _request(iat=NOW_S - 400, exp=NOW_S - 100), "not valid now"),
        (lambda: _request(iat=NOW_S + 100, exp=NOW_S + 200), "not valid now"),
        (lambda: _request(iat=float(NOW_S)), "integers"),
        (lambda: _request(token=7), "token"),
        (lambda: _request(box_version="v\n1"), "box_version"),
        (lambda: _request(device_key=jws.b64url_encode(bytes(32))), "small-order"),
        (lambda: _request(device_key="AAAA"), "32-byte"),
        (lambda: jws.sign({"a": 1}, typ="edge-access+jwt", kid=KID, key=DEVICE.private_key), "typ"),
        (lambda: jws.sign({"a": 1}, typ=TYP, kid="k1", key=DEVICE.private_key), "kid"),
        (lambda: _request()[:-4] + "AAAA", "signature"),
        (lambda: 17, "compact JWS"),
        (lambda: "a.b.c", "malformed"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(token: Any, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        check_enroll_request(token(), now_s=NOW_S)


def test_a_request_signed_by_another_key_is_refused() -> None:
    other = DeviceIdentity(ed25519.Ed25519PrivateKey.generate())
    claims = jws.parse(_request(), max_bytes=99999).payload
    with pytest.raises(BadRequest, match="signature"):
        check_enroll_request(jws.sign(claims, typ=TYP, kid=KID, key=other.private_key), now_s=NOW_S)


def test_time_is_injected_everywhere() -> None:
    # The CA reads no clock: a certificate made "in 2030" starts then (minus the back-dating for slow clocks).
    later = NOW + timedelta(days=1500)
    _key, cert = ca.make_root("r", now=later)
    assert cert.not_valid_before_utc == later - ca.BACKDATE
