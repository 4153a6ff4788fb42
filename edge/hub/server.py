"""The reference hub's HTTPS server (aiohttp): enrollment, as docs/protocol.md §2 specifies it.

* ``GET /v1/root.pem`` — the root certificate, for the box to check against its enrollment code;
* ``POST /v1/enroll`` — ``{"request": <edge-enroll+jwt>}`` → the client certificate, key set, terms and the
  witness (checkpoint cosigner) key, or
  ``{"error", "detail"}`` with 400 ``bad_request``, 403 ``bad_token``, 409 ``token_used``,
  410 ``token_expired``;
* ``GET /v1/device`` — who the presented client certificate says the caller is (a check of the pinned
  TLS setup);
* ``GET /v1/control`` — the control channel WebSocket (§4.2, :mod:`edge.hub.control`), client certificate
  required;
* ``GET /v1/media/{session}/{camera}`` — a media stream the hub expects (§8.1, :mod:`edge.hub.media`), client
  certificate required.

TLS 1.3 only. Client certificates are asked for but optional: a box has none before it enrolls.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import jws
from edge.errors import Error
from edge.hub import ca
from edge.hub.control import ControlHub
from edge.hub.media import PATH as MEDIA_PATH
from edge.hub.media import MediaHub
from edge.hub.state import HubState, TokenRefused
from edge.uplink.controlwire import HEARTBEAT_S, PATH
from edge.uplink.enroll import KID, MAX_REQUEST_LIFETIME_S, TYP
from edge.uplink.keyset import is_name
from edge.uplink.request import HubKeys

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 64 * 1024
MAX_REQUEST_BYTES: Final = 16 * 1024
MAX_CSR_CHARS: Final = ca.MAX_CSR_BYTES
MAX_BOX_VERSION_CHARS: Final = 64
CLOCK_SKEW_S: Final = 60
CLAIMS: Final = frozenset({"token", "device_id", "device_key", "tls_csr", "box_version", "iat", "exp"})
STATUS: Final = {"bad_request": 400, "bad_token": 403, "token_used": 409, "token_expired": 410}


class BadRequest(Error):
    kind = "bad_request"


@dataclass(frozen=True)
class EnrollRequest:
    token: str
    device_id: str
    device_key: bytes
    tls_csr: str
    box_version: str


def check_enroll_request(token: object, *, now_s: int) -> EnrollRequest:
    """The box's signed enrollment request, every rule checked; :class:`BadRequest` otherwise. The token is
    only checked to be text here: whether the hub issued it is the state's business."""
    if not isinstance(token, str):
        raise BadRequest("request is not a compact JWS string")
    try:
        compact = jws.parse(token, max_bytes=MAX_REQUEST_BYTES)
        jws.check_header(compact.header, typ=TYP)
    except jws.JWSError as e:
        raise BadRequest(e.message) from None
    if compact.kid != KID:
        raise BadRequest(f'kid must be "{KID}"')
    claims = compact.payload
    if claims.keys() != CLAIMS:
        missing, extra = sorted(CLAIMS - claims.keys()), sorted(claims.keys() - CLAIMS)
        raise BadRequest(
            f"claims lack {', '.join(missing)}" if missing else f"unknown claim {jws.show(extra[0])}"
        )
    key_text = claims["device_key"]
    raw_key = jws.b64url_decode(key_text) if isinstance(key_text, str) else None
    if raw_key is None or len(raw_key) != 32:
        raise BadRequest("device_key is not the base64url of a 32-byte Ed25519 key")
    try:
        HubKeys(hub_id="device", keys={"device": raw_key})  # refuses small-order points
    except ValueError:
        raise BadRequest("device_key is a small-order point") from None
    try:
        jws.check_signature(Ed25519PublicKey.from_public_bytes(raw_key), compact)
    except jws.JWSError as e:
        raise BadRequest(e.message) from None
    # Proven by the signature from here on.
    device_id = claims["device_id"]
    if device_id != "edge-" + hashlib.sha256(raw_key).digest()[:16].hex():
        raise BadRequest("device_id is not derived from device_key")
    iat, exp = claims["iat"], claims["exp"]
    if type(iat) is not int or type(exp) is not int:
        raise BadRequest("iat and exp must be integers")
    if not 0 < exp - iat <= MAX_REQUEST_LIFETIME_S:
        raise BadRequest(f"exp - iat must be 1..{MAX_REQUEST_LIFETIME_S} s")
    if iat > now_s + CLOCK_SKEW_S or exp < now_s - CLOCK_SKEW_S:
        raise BadRequest("the request is not valid now (check the box's clock)")
    enroll_token, csr, box_version = claims["token"], claims["tls_csr"], claims["box_version"]
    if not isinstance(enroll_token, str):
        raise BadRequest("token is not a string")
    if not isinstance(csr, str) or len(csr) > MAX_CSR_CHARS:
        raise BadRequest(f"tls_csr is not a PEM string of at most {MAX_CSR_CHARS} characters")
    if not isinstance(box_version, str) or not is_name(box_version, MAX_BOX_VERSION_CHARS):
        raise BadRequest(f"box_version is not 1..{MAX_BOX_VERSION_CHARS} printable characters")
    return EnrollRequest(enroll_token, str(device_id), raw_key, csr, box_version)


def server_context(cert_path: Path, key_path: Path, root_pem: str) -> ssl.SSLContext:
    """TLS 1.3; client certificates from the hub's root are verified when presented."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_path, key_path)
    ctx.load_verify_locations(cadata=root_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


CONTROL: Final = web.AppKey("control", ControlHub)
MEDIA: Final = web.AppKey("media", MediaHub)


def make_app(
    state: HubState,
    *,
    clock_ns: Callable[[], int] = time.time_ns,
    heartbeat_s: float = HEARTBEAT_S,
    media: MediaHub | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    control = ControlHub(state, heartbeat_s=heartbeat_s, clock_ns=clock_ns)
    app[CONTROL] = control
    media_hub = media if media is not None else MediaHub(state, clock_ns=clock_ns)
    app[MEDIA] = media_hub

    async def close_channels(_app: web.Application) -> None:
        await control.close_all()
        await media_hub.close_all()

    app.on_shutdown.append(close_channels)
    root_key = state.root_key()  # read once: the private key file stays closed afterwards

    async def root_pem(_request: web.Request) -> web.Response:
        return web.Response(text=state.root_pem, content_type="application/x-pem-file")

    async def enroll(request: web.Request) -> web.Response:
        now_ns = clock_ns()
        try:
            try:
                body = jws.json_object(await request.read(), "body")
            except web.HTTPRequestEntityTooLarge:
                raise BadRequest(f"the body is over {MAX_BODY_BYTES} bytes") from None
            except jws.JWSError as e:
                raise BadRequest(e.detail) from None
            if body.keys() != {"request"}:
                raise BadRequest('the body is exactly {"request": <compact JWS>}')
            req = check_enroll_request(body["request"], now_s=now_ns // 1_000_000_000)
            try:
                cert = ca.issue_client(
                    root_key, state.root, req.tls_csr, device_id=req.device_id, now=_dt(now_ns)
                )
            except ca.CAError as e:
                raise BadRequest(e.message) from None
            cert_pem = ca.pem(cert)
            await asyncio.to_thread(
                state.enroll,
                req.token,
                device_id=req.device_id,
                device_key=req.device_key,
                client_cert=cert_pem,
                box_version=req.box_version,
                now_utc_ns=now_ns,
            )
        except BadRequest as e:
            return _error("bad_request", e.message)
        except TokenRefused as e:
            return _error(e.code, e.detail)
        log.info("enrolled %s (box %s)", req.device_id, req.box_version)
        return web.json_response(
            {
                "hub_id": state.hub_id,
                "agency": state.agency,
                "client_cert": cert_pem,
                "keyset": await asyncio.to_thread(state.keyset),
                "terms": {"version": state.terms.version, "text": state.terms.text},
                # The key that cosigns the box's checkpoints: the box pins it and checks every cosignature.
                "witness": {
                    "name": state.witness_name,
                    "key": jws.b64url_encode(await asyncio.to_thread(state.witness_public)),
                },
            }
        )

    async def device(request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        peer = ssl_object.getpeercert() if ssl_object is not None else None
        if not peer:
            return web.json_response(
                {"error": "no_client_cert", "detail": "present the client certificate"}, status=401
            )
        cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), None)
        known = cn is not None and await asyncio.to_thread(state.device, cn) is not None
        return web.json_response({"device_id": cn, "enrolled": known})

    app.router.add_get("/v1/root.pem", root_pem)
    app.router.add_post("/v1/enroll", enroll)
    app.router.add_get("/v1/device", device)
    app.router.add_get(PATH, control.handler)
    app.router.add_get(MEDIA_PATH, media_hub.handler)
    return app


@dataclass
class RunningHub:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def control(self) -> ControlHub:
        return self.runner.app[CONTROL]

    @property
    def media(self) -> MediaHub:
        return self.runner.app[MEDIA]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(
    state: HubState,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    clock_ns: Callable[[], int] = time.time_ns,
    heartbeat_s: float = HEARTBEAT_S,
    media: MediaHub | None = None,
) -> RunningHub:
    """Serve on ``host:port`` (0: any free port) until :meth:`RunningHub.close`."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise Error(f"cannot listen on {host}:{port}: {e.strerror}") from None
    app = make_app(state, clock_ns=clock_ns, heartbeat_s=heartbeat_s, media=media)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    return RunningHub(runner=runner, host=host, port=sock.getsockname()[1])


def _error(code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=STATUS[code])


def _dt(utc_ns: int) -> datetime:
    return datetime.fromtimestamp(utc_ns / 1e9, UTC)
