"""The SOAP plumbing of one ONVIF inquiry: how a request reaches a camera and how its reply gets back, safely.

onvif-zeep-async imported without its logging side effect; its two WSDLs parsed once per process; one aiohttp
session per inquiry (≤4 connections, keep-alive, HTTP Digest per origin when the camera asks for it); zeep
service proxies over that session; and the three Media2 calls we write by hand.

Hostile cameras: every reply is read with a size cap, then parsed by defusedxml with DTDs, entities and
external references forbidden before zeep sees it (zeep's own parser also forbids DTDs and entities and
keeps libxml2's size limits); nothing is cached on disk (the WSDLs are the library's local files, parsed
once per process in a worker thread). No redirect is followed and zeep may fetch nothing over HTTP.

Media2 (cameras without the ver10 media service): three calls written by hand — ``GetProfiles`` (Type All),
``GetStreamUri`` (Protocol RTSP), ``GetSnapshotUri`` — with the same WS-Security header (zeep's, applied to
our envelope) and the same transport, parsed with defusedxml (:mod:`edge.discovery.onvif_replies`).
onvif-zeep-async ships no Media2 WSDL; the official one may not be modified (its licence) yet imports
``../../../ver10/schema/onvif.xsd``, which does not match the library's flat wsdl folder, so bringing it in
would mean a copy of the whole schema tree or a path-rewriting loader — more moving parts than three small,
tested requests.

The failures here are this module's own exceptions (:class:`Unauthorized`, :class:`NotSoap`,
:class:`Refused`) beside zeep's and aiohttp's; :mod:`edge.discovery.onvif` turns them all into a state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final
from xml.etree.ElementTree import Element, ParseError

import aiohttp
import defusedxml.ElementTree as _defused
from aiohttp import hdrs
from lxml import etree  # type: ignore[import-untyped]
from zeep.settings import Settings
from zeep.wsdl import Document

from edge.discovery.onvif_replies import local_name, media2_response

# onvif.client calls logging.basicConfig(level=INFO) when it is imported; how logging is set up is the
# application's decision (edge.logsetup), so undo whatever that added.
_root_handlers, _root_level = list(logging.root.handlers), logging.root.level
import onvif as _onvif_package  # noqa: E402
from onvif.client import (  # noqa: E402
    AsyncTransportProtocolErrorHandler,
    UsernameDigestTokenDtDiff,
    ZeepAsyncClient,
)
from onvif.definition import SERVICES  # noqa: E402
from onvif.settings import DEFAULT_SETTINGS  # noqa: E402
from onvif.transport import ASYNC_TRANSPORT  # noqa: E402

for _handler in logging.root.handlers[len(_root_handlers) :]:
    logging.root.removeHandler(_handler)
logging.root.setLevel(_root_level)

MAX_REPLY_BYTES: Final = 2 * 1024 * 1024  # an NVR's GetProfiles for 64 channels is a few hundred KB
MAX_CONNECTIONS: Final = 4  # per camera: embedded web servers choke on more

_WSDL_DIR = Path(_onvif_package.__file__).parent / "wsdl"
_DEVICE_NS: Final[str] = SERVICES["devicemgmt"]["ns"]
MEDIA1_NS: Final[str] = SERVICES["media"]["ns"]
MEDIA2_NS: Final = "http://www.onvif.org/ver20/media/wsdl"
DEVICE_BINDING: Final = f"{{{_DEVICE_NS}}}{SERVICES['devicemgmt']['binding']}"
MEDIA1_BINDING: Final = f"{{{MEDIA1_NS}}}{SERVICES['media']['binding']}"
_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
# Replies: well-formed XML only (defusedxml has already checked), no DTD, no entity, libxml2's size limits on.
_REPLY_SETTINGS: Final = Settings(
    strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True, forbid_external=True
)

_FORBIDDEN: Final = {
    "DTDForbidden": "a DTD",
    "EntitiesForbidden": "entity declarations",
    "ExternalReferenceForbidden": "an external reference",
}
_CHALLENGES: Final = {"digest": "HTTP Digest", "basic": "HTTP Basic"}


class Unauthorized(Exception):
    """HTTP 401 (after the digest middleware's retry, if it had credentials)."""

    def __init__(self, scheme: str) -> None:
        super().__init__(scheme)
        self.scheme = scheme


class NotSoap(Exception):
    def __init__(self, status: int, content_type: str) -> None:
        super().__init__(f"HTTP {status} {content_type}")
        self.status, self.content_type = status, content_type


class Refused(Exception):
    """A reply we will not read: too big, or XML with a DTD/entities (an entity bomb, or worse)."""


# --- the WSDLs -------------------------------------------------------------------------------------------

_documents: dict[str, Any] = {}
_documents_lock = threading.Lock()


def _load_wsdl(name: str) -> Any:
    # One parse per process even when 20 inquiries start at once: the others wait on the lock, then share it.
    # The library's lenient settings are for its own trusted local files; camera replies get _REPLY_SETTINGS.
    with _documents_lock:
        doc = _documents.get(name)
        if doc is None:
            doc = _documents[name] = Document(
                str(_WSDL_DIR / name), ASYNC_TRANSPORT, settings=DEFAULT_SETTINGS
            )
        return doc


async def wsdl(name: str) -> Any:
    """The library's WSDL ``name`` (``devicemgmt.wsdl``, ``media.wsdl``), parsed in a worker thread once."""
    doc = _documents.get(name)
    return doc if doc is not None else await asyncio.to_thread(_load_wsdl, name)


# --- one camera's session --------------------------------------------------------------------------------


class Digest:
    """HTTP Digest for every origin of one camera, remembering whether the camera asked for it.

    Why a session middleware of our own session rather than onvif-zeep-async's ONVIFService: that class builds
    its ClientSession inside ``__init__`` with no hook for middlewares (and parses replies with
    ``xml_huge_tree=True``). Its transport, however, takes a session by design, so each inquiry owns one
    session carrying this middleware and hands it to the library's transport class. One session also means
    one connection pool and one digest challenge, reused preemptively by every later request instead of a 401
    round trip per service. aiohttp pins a DigestAuthMiddleware to the first origin it sees; the media service
    may listen on another port, hence one per origin.
    """

    def __init__(self, username: str, password: str) -> None:
        self._username, self._password = username, password
        self._by_origin: dict[Any, aiohttp.DigestAuthMiddleware] = {}
        self.used = False

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        origin = request.url.origin()
        middleware = self._by_origin.get(origin)
        if middleware is None:
            middleware = self._by_origin[origin] = aiohttp.DigestAuthMiddleware(
                self._username, self._password
            )
        response = await middleware(request, handler)
        if hdrs.AUTHORIZATION in request.headers:
            self.used = True
        return response


def new_session(timeout_s: float, digest: Digest | None) -> aiohttp.ClientSession:
    """The one session of an inquiry that has ``timeout_s`` to finish (it must be closed)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=False),  # LAN cameras: self-signed
        timeout=aiohttp.ClientTimeout(total=timeout_s + 1),  # a backstop: inspect() keeps the time
        middlewares=(digest,) if digest is not None else (),
        auto_decompress=False,  # no gzip bombs: we ask for identity below
        headers={hdrs.ACCEPT_ENCODING: "identity"},
    )


class Exchange:
    """One SOAP request/reply on the inquiry's session: the reply capped in size, checked to be SOAP, and
    parsed by defusedxml (DTDs refused) before anyone else reads it."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def post(
        self, url: str, data: bytes, headers: dict[str, str]
    ) -> tuple[aiohttp.ClientResponse, bytes, Element]:
        # No redirects: a 307 would re-send the signed request to wherever the camera points.
        async with self.session.post(url, data=data, headers=headers, allow_redirects=False) as response:
            if (response.content_length or 0) > MAX_REPLY_BYTES:
                raise Refused(f"a {response.content_length}-byte reply (limit {MAX_REPLY_BYTES})")
            chunks, size = [], 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise Refused(f"a reply over {MAX_REPLY_BYTES} bytes")
                chunks.append(chunk)
        body = b"".join(chunks)
        if response.status == 401:
            challenge = response.headers.get(hdrs.WWW_AUTHENTICATE, "").split(" ", 1)[0].lower()
            if challenge in _CHALLENGES:
                raise Unauthorized(_CHALLENGES[challenge])
            # No challenge: a SOAP fault in the body (ter:NotAuthorized, usually) says more; zeep reads it.
        content_type = response.headers.get(hdrs.CONTENT_TYPE, "no content type").split(";", 1)[0]
        try:
            root = _defused.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except ValueError as e:  # defusedxml's DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
            what = _FORBIDDEN.get(type(e).__name__, "forbidden XML")
            raise Refused(f"XML with {what}, refused unread (no entity is ever expanded)") from None
        except (ParseError, LookupError):  # LookupError: an unknown encoding
            root = None
        if root is None or local_name(root.tag) != "Envelope":
            if response.status == 401:
                raise Unauthorized("HTTP")
            raise NotSoap(response.status, content_type)
        return response, body, root


class Transport(AsyncTransportProtocolErrorHandler):  # type: ignore[misc]
    """onvif-zeep-async's aiohttp transport for zeep (it retries once when a kept-alive connection was
    dropped), posting through :class:`Exchange`. zeep never loads anything through it: WSDLs are local."""

    def __init__(self, exchange: Exchange) -> None:
        super().__init__(session=exchange.session, verify_ssl=False, cache=None)
        self._exchange = exchange

    async def _post_internal(
        self, address: str, message: str | bytes, headers: dict[str, str]
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        data = message.encode("utf-8") if isinstance(message, str) else message
        response, body, _root = await self._exchange.post(address, data, headers)
        return response, body

    async def get(self, address: str, params: Any = None, headers: Any = None) -> Any:
        raise Refused("zeep tried to fetch a document over HTTP")


# --- calls -----------------------------------------------------------------------------------------------


def wsse_token(username: str | None, password: str | None, offset_s: float | None) -> Any:
    """A WS-UsernameToken (password digest) dated by the camera's clock: ours plus ``offset_s`` (None:
    ours, unadjusted)."""
    offset = None if offset_s is None else dt.timedelta(seconds=offset_s)
    return UsernameDigestTokenDtDiff(username, password, dt_diff=offset, use_digest=True)


def proxy(document: Any, binding: str, url: str, transport: Transport, wsse: Any) -> Any:
    """A zeep service proxy for ``binding`` at ``url``, signing with ``wsse`` (None: unsigned)."""
    client = ZeepAsyncClient(wsdl=document, wsse=wsse, transport=transport, settings=_REPLY_SETTINGS)
    return client.create_service(binding, url)


async def media2_call(
    exchange: Exchange, url: str, op: str, children: Sequence[tuple[str, str]], wsse: Any
) -> Element:
    """One hand-written Media2 call: the response element, or zeep's Fault for a SOAP fault."""
    envelope = etree.Element(f"{{{_SOAP12}}}Envelope", nsmap={"s": _SOAP12, "tr2": MEDIA2_NS})
    etree.SubElement(envelope, f"{{{_SOAP12}}}Header")
    request = etree.SubElement(etree.SubElement(envelope, f"{{{_SOAP12}}}Body"), f"{{{MEDIA2_NS}}}{op}")
    for name, value in children:
        etree.SubElement(request, f"{{{MEDIA2_NS}}}{name}").text = value
    if wsse is not None:
        wsse.apply(envelope, {})
    data = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
    action = f'application/soap+xml; charset=utf-8; action="{MEDIA2_NS}/{op}"'
    response, _body, root = await exchange.post(url, data, {hdrs.CONTENT_TYPE: action})
    return media2_response(root, op, response.status)
