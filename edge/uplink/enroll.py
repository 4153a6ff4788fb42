"""Enrollment with a police hub, the box's side (docs/protocol.md §2): read the enrollment code, pin the hub's
root by its fingerprint, prove the device key, and get a client certificate, the hub's key set and its terms.

Nothing here stores anything: :func:`enroll` returns an :class:`Enrollment` held in memory, and the caller
pins it (:mod:`edge.uplink.pairing`) only once the owner confirmed the key set's fingerprint.

The root is pinned by fetch-and-compare: ``GET <hub>/v1/root.pem`` over TLS that verifies nothing, SHA-256
of the certificate's DER compared with the code's in constant time. Python's ``ssl`` shows only the leaf of a
verified chain, so this is how a root gets pinned; from then on that root is the only trust anchor, for the
hub's host name, over TLS 1.3.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge import jws
from edge.errors import Error
from edge.identity import DeviceIdentity
from edge.jws import show
from edge.uplink.controlwire import witness_name
from edge.uplink.keyset import KeysetError, PinnedKeyset, apply_keyset, is_name
from edge.uplink.request import HubKeys

CODE_PREFIX: Final = "edge-enroll:v1:"
TYP: Final = "edge-enroll+jwt"
KID: Final = "device"
MAX_CODE_CHARS: Final = 4096
MAX_URL_CHARS: Final = 2048
MIN_TOKEN_BYTES: Final = 16
MAX_TOKEN_BYTES: Final = 64
REQUEST_LIFETIME_S: Final = 120  # exp - iat; the hub allows at most 300
MAX_REQUEST_LIFETIME_S: Final = 300
MAX_ROOT_BYTES: Final = 64 * 1024
MAX_RESPONSE_BYTES: Final = 1024 * 1024
MAX_AGENCY_CHARS: Final = 200
MAX_TERMS_VERSION_CHARS: Final = 64
MAX_TERMS_CHARS: Final = 256 * 1024
CERT_SKEW: Final = timedelta(seconds=60)
ERROR_CODES: Final = ("bad_token", "token_used", "token_expired", "bad_request")
CODE_FIELDS: Final = frozenset({"hub", "token", "root"})
RESPONSE_FIELDS: Final = frozenset({"hub_id", "agency", "client_cert", "keyset", "terms"})
OPTIONAL_RESPONSE_FIELDS: Final = frozenset({"witness"})  # hubs from before the witness key leave it out
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


class EnrollError(Error):
    """Enrollment failed; nothing was stored. ``code`` is the hub's error code when the hub refused."""

    kind = "enroll"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


@dataclass(frozen=True)
class EnrollmentCode:
    hub: str  # https URL without a trailing slash
    token: str
    root: str  # hex SHA-256 of the root certificate's DER

    def __repr__(self) -> str:  # the token is a one-time secret
        return f"EnrollmentCode(hub={self.hub!r}, root={self.root!r})"

    @property
    def host(self) -> str:
        return urlsplit(self.hub).hostname or ""


@dataclass(frozen=True)
class Terms:
    """The programme's terms the owner accepts by pairing."""

    version: str
    text: str = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Enrollment:
    """What a successful enrollment returned, not yet pinned."""

    hub_url: str
    root_pem: str
    hub_id: str
    agency: str
    client_cert_pem: str
    keyset: PinnedKeyset
    terms: Terms
    tls_key: ec.EllipticCurvePrivateKey = field(repr=False)  # the client certificate's key: never shown
    # The hub's checkpoint cosigner (C2SP tlog-cosignature): None from a hub that did not send one.
    witness_name: str | None = None
    witness_key: bytes | None = None

    @property
    def root_fingerprint(self) -> str:
        return root_fingerprint(self.root_pem)


# --- the code -----------------------------------------------------------------------------------------------


def make_code(hub: str, token: str, root: str) -> str:
    """The hub's side: ``edge-enroll:v1:`` + base64url of the RFC 8785 JSON of ``{hub, token, root}``."""
    code = CODE_PREFIX + jws.b64url_encode(rfc8785.dumps({"hub": hub, "token": token, "root": root}))
    parse_code(code)  # the hub never hands out a code a box would refuse
    return code


def parse_code(text: str) -> EnrollmentCode:
    """The enrollment code, checked; :class:`EnrollError` with one clear line otherwise."""
    text = text.strip()
    if not text.startswith(CODE_PREFIX):
        raise EnrollError(f"not an enrollment code: it must start with {CODE_PREFIX}")
    if len(text) > MAX_CODE_CHARS:
        raise EnrollError(f"enrollment code too long (over {MAX_CODE_CHARS} characters)")
    data = jws.b64url_decode(text[len(CODE_PREFIX) :])
    if data is None:
        raise EnrollError("enrollment code damaged: the part after the prefix is not base64url")
    try:
        obj = jws.json_object(data, "code")
    except jws.JWSError:
        raise EnrollError("enrollment code damaged: it does not hold a JSON object") from None
    missing, extra = sorted(CODE_FIELDS - obj.keys()), sorted(obj.keys() - CODE_FIELDS)
    if missing:
        raise EnrollError(f"enrollment code incomplete: it lacks {', '.join(missing)}")
    if extra:
        raise EnrollError(f"enrollment code has an unknown field {show(extra[0])}")
    hub, token, root = obj["hub"], obj["token"], obj["root"]
    if not isinstance(hub, str):
        raise EnrollError("enrollment code: hub is not a URL")
    hub = check_hub_url(hub)
    raw_token = jws.b64url_decode(token) if isinstance(token, str) else None
    if raw_token is None or not MIN_TOKEN_BYTES <= len(raw_token) <= MAX_TOKEN_BYTES:
        raise EnrollError(f"enrollment code: token is not base64url of {MIN_TOKEN_BYTES}+ bytes")
    assert isinstance(token, str)
    if not isinstance(root, str) or not _HEX64.fullmatch(root.lower()):
        raise EnrollError("enrollment code: root is not a hex SHA-256 fingerprint")
    return EnrollmentCode(hub=hub, token=token, root=root.lower())


def check_hub_url(url: str) -> str:
    """An ``https://host[:port][/path]`` URL, without user, query or fragment; returned without a final /."""
    if len(url) > MAX_URL_CHARS or not url.isascii() or not url.isprintable() or " " in url:
        raise EnrollError("hub URL is not a plain ASCII URL")
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise EnrollError(f"hub URL must be https://, not {show(parts.scheme + '://')}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise EnrollError("hub URL has a bad port") from None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise EnrollError("hub URL needs a host name and no user or password")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise EnrollError("hub URL must not have a query or fragment")
    return url.rstrip("/")


# --- the box's request --------------------------------------------------------------------------------------


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> str:
    """A PEM CSR for the TLS client key, CN = the device id."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(Encoding.PEM).decode("ascii")


def enroll_request(
    identity: DeviceIdentity, *, token: str, csr_pem: str, box_version: str, now_s: int
) -> str:
    """The compact JWS ``edge-enroll+jwt`` signed by the device key: proof that the box holds it."""
    claims = {
        "token": token,
        "device_id": identity.public.device_id,
        "device_key": jws.b64url_encode(identity.public.public_key),
        "tls_csr": csr_pem,
        "box_version": box_version,
        "iat": now_s,
        "exp": now_s + REQUEST_LIFETIME_S,
    }
    return jws.sign(claims, typ=TYP, kid=KID, key=identity.private_key)


# --- talking to the hub -------------------------------------------------------------------------------------


def root_fingerprint(pem: str) -> str:
    return hashlib.sha256(_one_cert(pem, "root certificate").public_bytes(Encoding.DER)).hexdigest()


def trust_context(root_pem: str) -> ssl.SSLContext:
    """TLS 1.3 trusting only the pinned root, with host name checks."""
    ctx = ssl.create_default_context(cadata=root_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _unverified_context() -> ssl.SSLContext:
    """Only for fetching the root, which is then checked against the code's fingerprint."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def fetch_root(code: EnrollmentCode, *, timeout_s: float = 15.0) -> str:
    """The hub's root certificate (PEM), checked against the code's fingerprint."""
    status, body = await _http(
        "GET",
        code.hub + "/v1/root.pem",
        _unverified_context(),
        None,
        limit=MAX_ROOT_BYTES,
        timeout_s=timeout_s,
    )
    if status != 200:
        raise EnrollError(f"the hub answered HTTP {status} for its root certificate")
    try:
        pem = body.decode("ascii")
        cert = _one_cert(pem, "root certificate")
    except (UnicodeDecodeError, EnrollError):
        raise EnrollError("the hub's /v1/root.pem is not one PEM certificate") from None
    got = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    if not hmac.compare_digest(got, code.root):
        raise EnrollError(
            f"the hub's root certificate has fingerprint {got}, not {code.root} as the enrollment code says:"
            " this is not the hub the code is for (or someone is in between); nothing was stored"
        )
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise EnrollError("the hub's root certificate is not a CA certificate")
    return cert.public_bytes(Encoding.PEM).decode("ascii")


async def enroll(
    code: EnrollmentCode,
    identity: DeviceIdentity,
    *,
    box_version: str,
    now_s: int,
    timeout_s: float = 15.0,
) -> Enrollment:
    """Run the enrollment; raise :class:`EnrollError` (nothing stored anywhere on the box) otherwise. The
    hub marks the code used once it answers 200, whatever the owner decides next."""
    root_pem = await fetch_root(code, timeout_s=timeout_s)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    device_id = identity.public.device_id
    request = enroll_request(
        identity, token=code.token, csr_pem=make_csr(tls_key, device_id), box_version=box_version, now_s=now_s
    )
    body = json.dumps({"request": request}).encode("ascii")
    status, answer = await _http(
        "POST",
        code.hub + "/v1/enroll",
        trust_context(root_pem),
        body,
        limit=MAX_RESPONSE_BYTES,
        timeout_s=timeout_s,
    )
    if status != 200:
        raise _refusal(status, answer)
    try:
        return parse_response(
            answer, hub_url=code.hub, root_pem=root_pem, device_id=device_id, tls_key=tls_key, now_s=now_s
        )
    except EnrollError as e:  # the hub took the code: say so, the owner will need another
        raise EnrollError(f"{e.message}; nothing was stored, but the hub has used up this code") from None


def parse_response(
    body: bytes,
    *,
    hub_url: str,
    root_pem: str,
    device_id: str,
    tls_key: ec.EllipticCurvePrivateKey,
    now_s: int,
) -> Enrollment:
    """The hub's 200 answer, every member checked (the key set as a first set, :func:`apply_keyset`)."""
    try:
        obj = jws.json_object(body, "answer")
    except jws.JWSError:
        raise EnrollError("the hub's answer is not a JSON object") from None
    if not RESPONSE_FIELDS <= obj.keys() <= RESPONSE_FIELDS | OPTIONAL_RESPONSE_FIELDS:
        missing = sorted(RESPONSE_FIELDS - obj.keys())
        extra = sorted(obj.keys() - RESPONSE_FIELDS - OPTIONAL_RESPONSE_FIELDS)
        what = f"lacks {', '.join(missing)}" if missing else f"has an unknown member {show(extra[0])}"
        raise EnrollError(f"the hub's answer {what}")
    hub_id = _name(obj["hub_id"], "hub_id", 128)
    agency = _name(obj["agency"], "agency", MAX_AGENCY_CHARS)
    cert_pem = obj["client_cert"]
    if not isinstance(cert_pem, str):
        raise EnrollError("the hub's client_cert is not a PEM string")
    _check_client_cert(cert_pem, root_pem=root_pem, device_id=device_id, tls_key=tls_key, now_s=now_s)
    token = obj["keyset"]
    if not isinstance(token, str):
        raise EnrollError("the hub's keyset is not a compact JWS")
    try:
        keyset = apply_keyset(None, token, hub_id=hub_id)
    except KeysetError as e:
        raise EnrollError(e.message) from None
    witness = _witness(obj["witness"], hub_id) if "witness" in obj else (None, None)
    return Enrollment(
        hub_url=hub_url,
        root_pem=root_pem,
        hub_id=hub_id,
        agency=agency,
        client_cert_pem=cert_pem,
        keyset=keyset,
        terms=_terms(obj["terms"]),
        tls_key=tls_key,
        witness_name=witness[0],
        witness_key=witness[1],
    )


def _witness(value: object, hub_id: str) -> tuple[str, bytes]:
    """``{"name", "key"}``: the name this hub's id gives (so a hub cannot pin another's), and a 32-byte
    Ed25519 key that is not a small-order point (under which cosignatures could be forged)."""
    if not isinstance(value, dict) or value.keys() != {"name", "key"}:
        raise EnrollError('the hub\'s witness is not exactly {"name", "key"}')
    name, key_text = value["name"], value["key"]
    if name != witness_name(hub_id):
        raise EnrollError(f"the hub's witness name is not {witness_name(hub_id)!r}")
    key = jws.b64url_decode(key_text) if isinstance(key_text, str) else None
    if key is None or len(key) != 32:
        raise EnrollError("the hub's witness key is not the base64url of a 32-byte Ed25519 key")
    try:
        HubKeys(hub_id=hub_id, keys={"witness": key})  # refuses small-order points
    except ValueError:
        raise EnrollError("the hub's witness key is a small-order point") from None
    return name, key


def _check_client_cert(
    pem: str, *, root_pem: str, device_id: str, tls_key: ec.EllipticCurvePrivateKey, now_s: int
) -> None:
    cert = _one_cert(pem, "client certificate")
    root = _one_cert(root_pem, "root certificate")
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise EnrollError("the hub's client certificate is not issued by its root") from None
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [device_id]:
        raise EnrollError("the hub's client certificate is not for this device (its CN is not the device id)")
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != tls_key.public_key().public_bytes(*spki):
        raise EnrollError("the hub's client certificate is not for the key this box sent")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise EnrollError("the hub's client certificate lacks the clientAuth extended key usage")
    now = datetime.fromtimestamp(now_s, UTC)
    if not cert.not_valid_before_utc - CERT_SKEW <= now <= cert.not_valid_after_utc:
        raise EnrollError("the hub's client certificate is not valid now (check this box's clock)")


def _terms(value: object) -> Terms:
    if not isinstance(value, dict) or value.keys() != {"version", "text"}:
        raise EnrollError('the hub\'s terms are not exactly {"version", "text"}')
    version, text = value["version"], value["text"]
    if not isinstance(version, str) or not is_name(version, MAX_TERMS_VERSION_CHARS):
        raise EnrollError(f"the hub's terms version is not 1..{MAX_TERMS_VERSION_CHARS} printable characters")
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_TERMS_CHARS:
        raise EnrollError(f"the hub's terms text is not 1..{MAX_TERMS_CHARS} characters")
    return Terms(version=version, text=text)


def _name(value: object, what: str, max_chars: int) -> str:
    if not isinstance(value, str) or not is_name(value, max_chars):
        raise EnrollError(f"the hub's {what} is not 1..{max_chars} printable characters")
    return value


def _one_cert(pem: str, what: str) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise EnrollError(f"the hub's {what} is not a PEM certificate") from None
    if len(certs) != 1:
        raise EnrollError(f"the hub's {what} is not exactly one certificate")
    return certs[0]


def _refusal(status: int, body: bytes) -> EnrollError:
    try:
        obj: Mapping[str, Any] = jws.json_object(body, "answer")
    except jws.JWSError:
        obj = {}
    code, detail = obj.get("error"), obj.get("detail")
    if isinstance(code, str) and code in ERROR_CODES:
        hint = {
            "bad_token": "the code is not one this hub issued",
            "token_used": "the code was already used: ask the police portal for a new one",
            "token_expired": "the code expired: ask the police portal for a new one",
            "bad_request": "the hub did not accept this box's request",
        }[code]
        said = f" (hub says: {show(detail)})" if isinstance(detail, str) and detail else ""
        return EnrollError(f"the hub refused the enrollment: {code}: {hint}{said}", code=code)
    return EnrollError(f"the hub answered HTTP {status} without a protocol error code")


async def _http(
    method: str, url: str, ctx: ssl.SSLContext, body: bytes | None, *, limit: int, timeout_s: float
) -> tuple[int, bytes]:
    """One request: no redirects, no proxies from the environment, the answer bounded; errors become ours."""
    host = urlsplit(url).hostname
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx), timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as session,
            session.request(method, url, data=body, headers=headers, allow_redirects=False) as resp,
        ):
            if resp.content_length is not None and resp.content_length > limit:
                raise EnrollError(f"the hub's answer is over {limit} bytes")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                data += chunk
                if len(data) > limit:
                    raise EnrollError(f"the hub's answer is over {limit} bytes")
            return resp.status, bytes(data)
    except aiohttp.ClientConnectorCertificateError as e:
        reason = getattr(e.certificate_error, "verify_message", "") or "verification failed"
        raise EnrollError(
            f"TLS with {host}: the hub's certificate is not issued by the pinned root for this host name"
            f" ({reason}); nothing was stored"
        ) from None
    except aiohttp.ClientSSLError as e:
        raise EnrollError(f"TLS with {host} failed ({type(e).__name__}); nothing was stored") from None
    except aiohttp.ClientConnectorError as e:
        raise EnrollError(f"cannot reach the hub at {host}: {e.strerror or type(e).__name__}") from None
    except aiohttp.ClientError as e:
        raise EnrollError(f"talking to the hub at {host} failed: {type(e).__name__}") from None
    except TimeoutError:
        raise EnrollError(f"the hub at {host} did not answer within {timeout_s:g} s") from None
