"""The HTTP side of one simulated camera: an aiohttp app speaking SOAP 1.2.

Requests to the device, media and media2 services are dispatched on the SOAP body's first child (namespace +
local name) to onvif_ops.py, after the camera's auth policy (``auth``: none, wsse, http_digest or either;
the checks are onvif_auth.py's) lets them through — ONVIF Core's PRE_AUTH operations go through unsigned.
A JPEG snapshot and a login page are served too, and the misbehaviours live here: a plain web server that is
not ONVIF, an entity bomb in every reply, a server that accepts and never answers.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

from tests.peers.onvif_auth import check_digest, check_wsse, digest_challenge
from tests.peers.onvif_discovery import Camera
from tests.peers.onvif_ops import DeviceOps, Media1Ops, Media2Ops, SoapFault
from tests.peers.onvif_shapes import BOMB_DTD, SOAP_ENV, TDS, TER, TR2, TRT, TT, XSD, XSI

# Device-service operations the ONVIF Core spec lets anyone call (PRE_AUTH).
PRE_AUTH = frozenset(
    {"GetSystemDateAndTime", "GetWsdlUrl", "GetServices", "GetServiceCapabilities", "GetEndpointReference"}
)

# A 32x24 baseline JPEG (ffmpeg's colour source), served as every snapshot.
SNAPSHOT_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAgAAAQABAAD//gAQTGF2YzU5LjM3LjEwMAD/2wBDAAgUFBcUFxsbGxsbGyAeICEhISAgICAhISEkJCQqKiok"
    "JCQhISQkKCgqKi4vLisrKisvLzIyMjw8OTlGRkhWVmf/xABNAAEBAAAAAAAAAAAAAAAAAAAABgEBAQEAAAAAAAAAAAAAAAAAAAUG"
    "EAEAAAAAAAAAAAAAAAAAAAAAEQEAAAAAAAAAAAAAAAAAAAAA/8AAEQgAGAAgAwEiAAIRAAMRAP/aAAwDAQACEQMRAD8AlwGoQQAA"
    "AAAH/9k="
)

LOGIN_HTML = (
    "<!DOCTYPE html><html><head><title>Login</title></head><body><form method='post' action='/login'>"
    "<input name='username'><input name='password' type='password'><button>Login</button></form>"
    "</body></html>"
)
NOT_FOUND_HTML = "<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1></body></html>"
UNAUTHORIZED_HTML = "<html><head><title>401 Unauthorized</title></head><body>401 Unauthorized</body></html>"

log = logging.getLogger("onvif_camera")


class SoapService:
    """The HTTP side of one camera."""

    def __init__(self, cam: Camera) -> None:
        self.cam = cam
        self.spec = cam.spec
        self.sh = cam.shape

    # -- envelopes ----------------------------------------------------------------------------------------
    def envelope(self, body: str, dtd: str = "") -> bytes:
        e = self.sh.env
        decls = (
            f'xmlns:{e}="{SOAP_ENV}" xmlns:xsi="{XSI}" xmlns:xsd="{XSD}" xmlns:tt="{TT}" xmlns:tds="{TDS}" '
            f'xmlns:trt="{TRT}" xmlns:tr2="{TR2}" xmlns:ter="{TER}"'
        )
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n{dtd}<{e}:Envelope {decls}><{e}:Body>{body}</{e}:Body>'
            f"</{e}:Envelope>"
        ).encode()

    def fault_body(self, f: SoapFault) -> str:
        e = self.sh.env
        sub = ""
        for s in reversed(f.subcodes):
            sub = f"<{e}:Subcode><{e}:Value>ter:{s}</{e}:Value>{sub}</{e}:Subcode>"
        return (
            f"<{e}:Fault><{e}:Code><{e}:Value>{e}:{f.code}</{e}:Value>{sub}</{e}:Code>"
            f'<{e}:Reason><{e}:Text xml:lang="en">{escape(f.reason)}</{e}:Text></{e}:Reason></{e}:Fault>'
        )

    # -- request handling ---------------------------------------------------------------------------------
    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        path = request.path
        if self.spec.behaviour == "not_onvif":
            return self.plain_web(request)
        if request.method == "GET" and path == "/":
            return web.Response(text=LOGIN_HTML, content_type="text/html", headers=self.headers())
        if request.method == "GET" and path == urllib.parse.urlsplit(self.sh.snapshot).path:
            return await self.snapshot(request)
        services = {"/onvif/device_service", "/onvif/event_service"}
        if self.spec.media in ("media1", "both"):
            services.add("/onvif/media_service")
        if self.spec.media in ("media2", "both"):
            services.add("/onvif/media2_service")
        if path not in services:
            return web.Response(
                status=404, text=NOT_FOUND_HTML, content_type="text/html", headers=self.headers()
            )
        if request.method != "POST":
            return web.Response(status=405, text="Method Not Allowed", headers=self.headers())
        body = await request.read()
        if self.spec.auth == "http_digest":
            denied = self.digest_gate(request)
            if denied is not None:
                return denied
        try:
            status, xml = self.soap(request, body)
        except SoapFault as f:
            log.info("%s %s: fault %s/%s: %s", self.spec.ip, path, f.code, f.subcodes, f.reason)
            status, xml = f.status, self.envelope(self.fault_body(f))
        except DigestChallenge as c:
            return self.unauthorized(c.stale)
        return web.Response(
            status=status,
            body=xml,
            content_type="application/soap+xml",
            charset="utf-8",
            headers=self.headers(),
        )

    def headers(self) -> dict[str, str]:
        return {"Server": self.sh.server}

    def digest_gate(self, request: Any) -> Any:
        verdict, stale = check_digest(
            self.cam, request.headers.get("Authorization"), request.method, request.raw_path
        )
        if verdict == "ok":
            return None
        log.info("%s %s: HTTP digest %s", self.spec.ip, request.path, verdict)
        return self.unauthorized(stale)

    def unauthorized(self, stale: bool) -> Any:
        from aiohttp import web

        headers = {**self.headers(), "WWW-Authenticate": digest_challenge(self.cam, stale)}
        return web.Response(status=401, text=UNAUTHORIZED_HTML, content_type="text/html", headers=headers)

    def plain_web(self, request: Any) -> Any:
        """A router/NAS web UI on the camera's address: HTML, no SOAP."""
        from aiohttp import web

        headers = {"Server": "lighttpd/1.4.59"}
        if request.path in ("/", "/index.html") and request.method in ("GET", "HEAD"):
            return web.Response(text=LOGIN_HTML, content_type="text/html", headers=headers)
        if request.method in ("GET", "HEAD"):
            return web.Response(status=404, text=NOT_FOUND_HTML, content_type="text/html", headers=headers)
        if request.path == "/onvif/device_service":
            return web.Response(status=404, text=NOT_FOUND_HTML, content_type="text/html", headers=headers)
        return web.Response(status=405, text="<html><body>405 Method Not Allowed</body></html>",
                            content_type="text/html", headers=headers)  # fmt: skip

    async def snapshot(self, request: Any) -> Any:
        from aiohttp import web

        if self.spec.auth != "none":  # snapshots are plain GETs: cameras protect them with HTTP Digest
            denied = self.digest_gate(request)
            if denied is not None:
                return denied
        return web.Response(body=SNAPSHOT_JPEG, content_type="image/jpeg", headers=self.headers())

    def soap(self, request: Any, body: bytes) -> tuple[int, bytes]:
        from defusedxml import DefusedXmlException
        from defusedxml.ElementTree import fromstring

        try:
            root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except (ParseError, DefusedXmlException, ValueError) as e:
            raise SoapFault("Sender", ["WellFormed"], f"Well-formed Error: {type(e).__name__}") from None
        if root.tag != f"{{{SOAP_ENV}}}Envelope":
            raise SoapFault("VersionMismatch", [], "SOAP 1.2 envelope expected", status=500)
        header = root.find(f"{{{SOAP_ENV}}}Header")
        soap_body = root.find(f"{{{SOAP_ENV}}}Body")
        if soap_body is None or len(soap_body) == 0:
            raise SoapFault("Sender", ["InvalidArgs"], "empty Body")
        op_el = soap_body[0]
        ns, _, op = op_el.tag[1:].partition("}") if op_el.tag.startswith("{") else ("", "", op_el.tag)
        log.info("%s %s: {%s}%s", self.spec.ip, request.path, ns, op)
        if self.spec.behaviour == "bomb_http":
            inner = f"<{self.sh.env}:Bomb>&lol9;</{self.sh.env}:Bomb>"
            return 200, self.envelope(
                f'<tds:{op}Response xmlns:tds="{ns}">{inner}</tds:{op}Response>', BOMB_DTD
            )
        self.authorise(request, header, ns, op)
        handler = self.handlers().get((ns, op))
        if handler is None:
            raise SoapFault("Receiver", ["ActionNotSupported"], f"Optional Action Not Implemented: {op}")
        return 200, self.envelope(handler(op_el))

    def authorise(self, request: Any, header: Element | None, ns: str, op: str) -> None:
        auth = self.spec.auth
        digest_tried = stale = False
        if auth in ("none", "http_digest"):  # http_digest was checked before parsing
            return
        if auth == "either":
            verdict, stale = check_digest(
                self.cam, request.headers.get("Authorization"), request.method, request.raw_path
            )
            if verdict == "ok":
                return
            digest_tried = verdict == "bad"
        if ns == TDS and op in PRE_AUTH:
            return
        ws = check_wsse(self.cam, header)
        if ws == "ok":
            return
        if auth == "either" and ws == "absent":
            raise DigestChallenge(stale if digest_tried else False)
        raise SoapFault("Sender", ["NotAuthorized"], "Sender not Authorized")

    def handlers(self) -> dict[tuple[str, str], Callable[[Element], str]]:
        ops = DeviceOps(self.cam)
        table: dict[tuple[str, str], Callable[[Element], str]] = {
            (TDS, name): getattr(ops, name)
            for name in (
                "GetSystemDateAndTime", "GetDeviceInformation", "GetCapabilities", "GetServices", "GetScopes",
                "GetServiceCapabilities", "GetWsdlUrl", "GetEndpointReference", "GetHostname",
            )
        }  # fmt: skip
        if self.spec.media in ("media1", "both"):
            m1 = Media1Ops(self.cam)
            for name in ("GetProfiles", "GetProfile", "GetStreamUri", "GetSnapshotUri", "GetVideoSources",
                         "GetServiceCapabilities"):  # fmt: skip
                table[(TRT, name)] = getattr(m1, name)
        if self.spec.media in ("media2", "both"):
            m2 = Media2Ops(self.cam)
            for name in ("GetProfiles", "GetStreamUri", "GetSnapshotUri", "GetServiceCapabilities"):
                table[(TR2, name)] = getattr(m2, name)
        return table


class DigestChallenge(Exception):
    def __init__(self, stale: bool) -> None:
        super().__init__("digest challenge")
        self.stale = stale


async def start_http(cam: Camera) -> Callable[[], Any]:
    """Starts the camera's HTTP side; returns an async cleanup."""
    if cam.spec.behaviour == "hang":
        writers: set[asyncio.StreamWriter] = set()

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.add(writer)
            try:
                while await reader.read(65536):
                    pass  # accepted, read, never answered
            except OSError:
                pass
            finally:
                writers.discard(writer)
                writer.close()

        server = await asyncio.start_server(swallow, cam.spec.ip, cam.spec.port, reuse_address=True)

        async def close_hang() -> None:
            server.close()
            for w in list(writers):
                w.close()

        return close_hang

    from aiohttp import web

    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", SoapService(cam).handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, cam.spec.ip, cam.spec.port, reuse_address=True).start()
    return runner.cleanup
