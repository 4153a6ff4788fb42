"""Ask one ONVIF camera who it is and what it streams: :func:`inspect` → :class:`DeviceReport`.

The report is what the installer needs (maker, model, firmware, serial, the media profiles with their RTSP and
snapshot URIs, which one is the main and the sub stream) or, when the camera cannot be read, one
:class:`State` and one human line saying why. :func:`inspect` never raises for anything a camera does.

The calls (LAN round trips are ~1 ms; the real price is CPU, since zeep builds and parses every message and
the box runs ~20 inquiries at once on 2 cores):

1. ``GetSystemDateAndTime`` without credentials (pre-auth in ONVIF Core). Proves an ONVIF device answers,
   gives the camera's clock offset (WS-Security's ``Created`` must be within seconds of the camera's clock,
   so a camera hours off still works), and tells an HTTP-Digest-only camera (it answers 401) from the rest.
2. Concurrently: ``GetDeviceInformation`` | ``GetServices`` (``GetCapabilities`` if that faults) →
   ``GetProfiles`` → per profile, concurrently, ``GetStreamUri`` (RTP unicast over RTSP: the recorder plays
   RTSP interleaved over TCP) and ``GetSnapshotUri``.

That is four sequential round trips and 4 + 2 x profiles messages, on one aiohttp session (≤4 connections,
keep-alive) per inquiry, closed before :func:`inspect` returns; the whole inquiry within ``timeout_s``.
Measured against the simulated farm on the 2-core box: ~0.8 ms of CPU per message (zeep build and parse plus
the defusedxml check), ~6 ms per inquiry of a two-profile camera, 20 cameras at once in ~0.12 s. Once per
process: importing onvif-zeep-async ~0.2 s, parsing its two WSDLs ~0.15 s (:func:`preload` does it early).

Authentication: WS-UsernameToken (password digest, the camera's clock offset applied) when credentials are
given; HTTP Digest when the camera answers 401 with a Digest challenge (``aiohttp.DigestAuthMiddleware`` on
the session; a camera that challenges even ``GetSystemDateAndTime`` then gets HTTP Digest alone). Without
credentials everything goes out bare and a camera that wants a password is ``NEEDS_PASSWORD``. The password
itself never leaves the box (both schemes send digests) and never appears in a report, log or exception.

Media2 (cameras without the ver10 media service): three calls written by hand — ``GetProfiles`` (Type All),
``GetStreamUri`` (Protocol RTSP), ``GetSnapshotUri`` — with the same WS-Security header (zeep's, applied to
our envelope) and the same transport, parsed with defusedxml. onvif-zeep-async ships no Media2 WSDL; the
official one may not be modified (its licence) yet imports ``../../../ver10/schema/onvif.xsd``, which does not
match the library's flat wsdl folder, so bringing it in would mean a copy of the whole schema tree or a
path-rewriting loader — more moving parts than three small, tested requests. Media1 is used when present.

Hostile cameras: every reply is read with a size cap, then parsed by defusedxml with DTDs, entities and
external references forbidden before zeep sees it (zeep's own parser also forbids DTDs and entities and
keeps libxml2's size limits); nothing is cached on disk (the WSDLs are the library's local files, parsed
once per process in a worker thread).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import os
import threading
import time
import traceback
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit
from xml.etree.ElementTree import Element, ParseError

import aiohttp
import defusedxml.ElementTree as _defused
from aiohttp import hdrs
from lxml import etree  # type: ignore[import-untyped]
from zeep.exceptions import Error as ZeepError
from zeep.exceptions import Fault
from zeep.settings import Settings
from zeep.wsdl import Document

from edge.redact import redact_text, redact_url

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

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_REPLY_BYTES: Final = 2 * 1024 * 1024  # an NVR's GetProfiles for 64 channels is a few hundred KB
MAX_PROFILES: Final = 64
MAX_CONNECTIONS: Final = 4  # per camera: embedded web servers choke on more

_WSDL_DIR = Path(_onvif_package.__file__).parent / "wsdl"
_DEVICE_NS = SERVICES["devicemgmt"]["ns"]
_MEDIA1_NS = SERVICES["media"]["ns"]
_MEDIA2_NS = "http://www.onvif.org/ver20/media/wsdl"
_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
_DEVICE_BINDING = f"{{{_DEVICE_NS}}}{SERVICES['devicemgmt']['binding']}"
_MEDIA1_BINDING = f"{{{_MEDIA1_NS}}}{SERVICES['media']['binding']}"
# Replies: well-formed XML only (defusedxml has already checked), no DTD, no entity, libxml2's size limits on.
_REPLY_SETTINGS: Final = Settings(
    strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True, forbid_external=True
)
# Fault codes that mean "who are you?" (ONVIF ter:NotAuthorized; WS-Security 1.1's own codes).
_AUTH_FAULTS: Final = frozenset(
    {"NotAuthorized", "FailedAuthentication", "InvalidSecurity", "InvalidSecurityToken", "FailedCheck"}
)


_FORBIDDEN: Final = {
    "DTDForbidden": "a DTD",
    "EntitiesForbidden": "entity declarations",
    "ExternalReferenceForbidden": "an external reference",
}
_CHALLENGES: Final = {"digest": "HTTP Digest", "basic": "HTTP Basic"}
_ERRNO_TEXT: Final = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "no route to the camera",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}


class State(StrEnum):
    OK = "ok"
    NEEDS_PASSWORD = "needs password"  # noqa: S105
    AUTH_FAILED = "auth failed"
    UNREACHABLE = "unreachable"
    NOT_ONVIF = "not ONVIF"
    ERROR = "error"  # a SOAP fault or a broken reply; ``detail`` says which


@dataclass(frozen=True)
class MediaProfile:
    token: str
    name: str
    encoding: str | None  # "H264", "H265", "JPEG", … as the camera names it
    width: int | None
    height: int | None
    fps: float | None
    stream_uri: str | None  # RTSP; may carry credentials some firmwares put in it (to_json redacts)
    snapshot_uri: str | None

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    def to_json(self) -> dict[str, object]:
        return {
            "token": self.token,
            "name": self.name,
            "encoding": self.encoding,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "stream_uri": redact_url(self.stream_uri) if self.stream_uri else None,
            "snapshot_uri": redact_url(self.snapshot_uri) if self.snapshot_uri else None,
        }


_VIDEO_CODECS = ("H264", "H265", "HEVC")


@dataclass(frozen=True)
class DeviceReport:
    xaddr: str  # the device service asked (credentials in it are dropped)
    state: State
    detail: str  # one human line, e.g. "camera refused the password (WS-Security)"
    manufacturer: str | None = None
    model: str | None = None
    firmware: str | None = None
    serial: str | None = None
    hardware_id: str | None = None
    media: str | None = None  # "media1" | "media2"
    # "ws-security" | "http-digest" | "none": the scheme the camera accepted. Given credentials, an open
    # camera reports "ws-security" (it took the header; telling would cost a call), without them "none".
    auth: str | None = None
    clock_offset_s: float | None = None  # camera clock minus ours
    profiles: tuple[MediaProfile, ...] = field(default=())

    @property
    def main(self) -> MediaProfile | None:
        """The highest-resolution profile with a stream URI (H.264/H.265 before others, then frame rate)."""
        playable = [p for p in self.profiles if p.stream_uri]
        return max(playable, key=_rank, default=None)

    @property
    def sub(self) -> MediaProfile | None:
        """The lowest-resolution other profile with a stream of its own, if any."""
        main = self.main
        if main is None:
            return None
        others = [p for p in self.profiles if p.stream_uri and p.stream_uri != main.stream_uri]
        # Unknown resolution sorts last: a sub stream is chosen for being small.
        return min(others, key=lambda p: (p.pixels or 1 << 62, -_rank(p)[1]), default=None)

    def to_json(self) -> dict[str, object]:
        main, sub = self.main, self.sub
        return {
            "xaddr": redact_url(self.xaddr),
            "state": self.state.value,
            "detail": self.detail,
            "manufacturer": self.manufacturer,
            "model": self.model,
            "firmware": self.firmware,
            "serial": self.serial,
            "hardware_id": self.hardware_id,
            "media": self.media,
            "auth": self.auth,
            "clock_offset_s": None if self.clock_offset_s is None else round(self.clock_offset_s, 1),
            "profiles": [p.to_json() for p in self.profiles],
            "main": main.token if main else None,
            "sub": sub.token if sub else None,
        }


def _rank(p: MediaProfile) -> tuple[int, int, float]:
    return p.pixels, int((p.encoding or "").upper() in _VIDEO_CODECS), p.fps or 0.0


async def inspect(
    xaddr: str, *, username: str | None = None, password: str | None = None, timeout_s: float = 5.0
) -> DeviceReport:
    """Everything the installer needs from the device service at ``xaddr``, within ``timeout_s``.

    Credentials count as given when ``username`` is (an empty password is a password). User and password in
    the URL itself are used when none are passed, and never sent as HTTP Basic.
    """
    inquiry = _Inquiry(xaddr, username, password, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            await inquiry.run()
    except _Stop as stop:
        inquiry.stopped(stop)
    except TimeoutError:
        inquiry.stopped(inquiry.timed_out())
    except Exception:  # a bug met on some camera's reply: that camera is reported, the scan goes on
        log.error("ONVIF inquiry of %s failed: %s", inquiry.where, inquiry.safe(traceback.format_exc()))
        inquiry.stopped(_Stop(State.ERROR, "internal error while reading the camera's replies (logged)"))
    finally:
        await inquiry.close()
    return inquiry.report()


async def preload() -> None:
    """Parse the two WSDLs now (≈0.15 s of CPU, once per process) rather than in the first inquiry."""
    await asyncio.gather(_document("devicemgmt.wsdl"), _document("media.wsdl"))


# --- internals ------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Ends the inquiry with this state; ``auth`` names the scheme that refused us, if that is why."""

    def __init__(self, state: State, detail: str, *, auth: str | None = None) -> None:
        super().__init__(detail)
        self.state, self.detail, self.auth = state, detail, auth


# Which failure a report shows when two concurrent branches fail differently.
_SEVERITY = (State.NEEDS_PASSWORD, State.AUTH_FAILED, State.UNREACHABLE, State.NOT_ONVIF, State.ERROR)


class _Unauthorized(Exception):
    """HTTP 401 (after the digest middleware's retry, if it had credentials)."""

    def __init__(self, scheme: str) -> None:
        super().__init__(scheme)
        self.scheme = scheme


class _NotSoap(Exception):
    def __init__(self, status: int, content_type: str) -> None:
        super().__init__(f"HTTP {status} {content_type}")
        self.status, self.content_type = status, content_type


class _Refused(Exception):
    """A reply we will not read: too big, or XML with a DTD/entities (an entity bomb, or worse)."""


_documents: dict[str, Any] = {}
_documents_lock = threading.Lock()


def _load_document(name: str) -> Any:
    # One parse per process even when 20 inquiries start at once: the others wait on the lock, then share it.
    # The library's lenient settings are for its own trusted local files; camera replies get _REPLY_SETTINGS.
    with _documents_lock:
        doc = _documents.get(name)
        if doc is None:
            doc = _documents[name] = Document(
                str(_WSDL_DIR / name), ASYNC_TRANSPORT, settings=DEFAULT_SETTINGS
            )
        return doc


async def _document(name: str) -> Any:
    doc = _documents.get(name)
    return doc if doc is not None else await asyncio.to_thread(_load_document, name)


class _Digest:
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


class _Exchange:
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
                raise _Refused(f"a {response.content_length}-byte reply (limit {MAX_REPLY_BYTES})")
            chunks, size = [], 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise _Refused(f"a reply over {MAX_REPLY_BYTES} bytes")
                chunks.append(chunk)
        body = b"".join(chunks)
        if response.status == 401:
            challenge = response.headers.get(hdrs.WWW_AUTHENTICATE, "").split(" ", 1)[0].lower()
            if challenge in _CHALLENGES:
                raise _Unauthorized(_CHALLENGES[challenge])
            # No challenge: a SOAP fault in the body (ter:NotAuthorized, usually) says more; zeep reads it.
        content_type = response.headers.get(hdrs.CONTENT_TYPE, "no content type").split(";", 1)[0]
        try:
            root = _defused.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except ValueError as e:  # defusedxml's DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
            what = _FORBIDDEN.get(type(e).__name__, "forbidden XML")
            raise _Refused(f"XML with {what}, refused unread (no entity is ever expanded)") from None
        except (ParseError, LookupError):  # LookupError: an unknown encoding
            root = None
        if root is None or _local(root.tag) != "Envelope":
            if response.status == 401:
                raise _Unauthorized("HTTP")
            raise _NotSoap(response.status, content_type)
        return response, body, root


class _Transport(AsyncTransportProtocolErrorHandler):  # type: ignore[misc]
    """onvif-zeep-async's aiohttp transport for zeep (it retries once when a kept-alive connection was
    dropped), posting through :class:`_Exchange`. zeep never loads anything through it: WSDLs are local."""

    def __init__(self, exchange: _Exchange) -> None:
        super().__init__(session=exchange.session, verify_ssl=False, cache=None)
        self._exchange = exchange

    async def _post_internal(
        self, address: str, message: str | bytes, headers: dict[str, str]
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        data = message.encode("utf-8") if isinstance(message, str) else message
        response, body, _root = await self._exchange.post(address, data, headers)
        return response, body

    async def get(self, address: str, params: Any = None, headers: Any = None) -> Any:
        raise _Refused("zeep tried to fetch a document over HTTP")


class _Inquiry:
    """The state of one :func:`inspect`: what was learnt so far, and the session to close."""

    def __init__(self, xaddr: str, username: str | None, password: str | None, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.xaddr, url_user, url_password = _split_userinfo(xaddr)
        if username is None and url_user is not None:
            username, password = url_user, url_password
        self.username = username
        self.password = None if username is None else password or ""
        self.secrets = [s for s in (password, url_password) if s]
        self.report_fields: dict[str, Any] = {}
        self.state, self.detail = State.OK, ""
        self.pending: set[str] = set()  # calls sent and not yet answered, for the timeout's detail
        self.answered = False  # the camera has sent one SOAP reply: later non-SOAP replies are errors
        self.wsse: Any = None  # the WS-Security token, once the clock offset is known
        # RFC 7616: a digest user name cannot hold ":"; such a camera account can only use WS-Security.
        self.digest = (
            _Digest(username, self.password or "") if username is not None and ":" not in username else None
        )
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=False),  # LAN cameras: self-signed
            timeout=aiohttp.ClientTimeout(total=timeout_s + 1),  # a backstop: inspect() keeps the time
            middlewares=(self.digest,) if self.digest is not None else (),
            auto_decompress=False,  # no gzip bombs: we ask for identity below
            headers={hdrs.ACCEPT_ENCODING: "identity"},
        )
        self.exchange = _Exchange(self.session)
        self.transport = _Transport(self.exchange)

    async def close(self) -> None:
        await self.session.close()

    # --- the inquiry ---

    async def run(self) -> None:
        _check_url(self.xaddr)
        await self._clock()
        device = await self._device(secure=True)
        results = await asyncio.gather(self._identity(device), self._media(device), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, _Stop):
                raise result
        stops = [r for r in results if isinstance(r, _Stop)]
        if stops:
            raise min(stops, key=lambda s: _SEVERITY.index(s.state))
        profiles: tuple[MediaProfile, ...] = self.report_fields.get("profiles", ())
        self.detail = f"{len(profiles)} profile{'s' * (len(profiles) != 1)} via {self.report_fields['media']}"

    async def _clock(self) -> None:
        device = await self._device(secure=False)
        sent = time.time()
        try:
            reply = await self._call("GetSystemDateAndTime", device.GetSystemDateAndTime())
        except _Stop as stop:
            # Some firmwares want credentials even here (onvif-zeep-async saw it on Axis): ask again, signed
            # with our own clock, and hope it is close enough.
            if stop.auth != "WS-Security" or self.username is None:
                raise
            self.wsse = self._token(None)
            device = await self._device(secure=True)
            sent = time.time()
            reply = await self._call("GetSystemDateAndTime", device.GetSystemDateAndTime())
        offset_s = _clock_offset_s(reply, (sent + time.time()) / 2)
        self.report_fields["clock_offset_s"] = offset_s
        # A camera that wants HTTP Digest even for the clock authenticates at the HTTP layer only: a second,
        # redundant credential in the body can only hurt.
        if self.username is not None and not (self.digest is not None and self.digest.used):
            self.wsse = self._token(offset_s)

    async def _identity(self, device: Any) -> None:
        info = await self._call("GetDeviceInformation", device.GetDeviceInformation())
        for name, attr in (
            ("manufacturer", "Manufacturer"),
            ("model", "Model"),
            ("firmware", "FirmwareVersion"),
            ("serial", "SerialNumber"),
            ("hardware_id", "HardwareId"),
        ):
            self.report_fields[name] = _text(getattr(info, attr, None))

    async def _media(self, device: Any) -> None:
        services = await self._services(device)
        if _MEDIA1_NS in services:
            media, profiles = "media1", await self._media1(services[_MEDIA1_NS])
        elif _MEDIA2_NS in services:
            media, profiles = "media2", await self._media2(services[_MEDIA2_NS])
        else:
            raise _Stop(State.ERROR, "the camera offers no media service")
        self.report_fields.update(media=media, profiles=profiles)

    async def _services(self, device: Any) -> dict[str, str]:
        """Service namespace → XAddr, from GetServices (GetCapabilities for firmwares without it)."""
        try:
            services = await self._call("GetServices", device.GetServices(IncludeCapability=False))
        except _Stop as stop:
            if stop.state is not State.ERROR:
                raise  # refused or gone: asking again another way will not help
        else:
            found = {}
            for service in _items(services)[:256]:
                url = self._service_url(getattr(service, "XAddr", None))
                namespace = _text(getattr(service, "Namespace", None))
                if url is not None and namespace is not None:
                    found[namespace] = url
            if found:
                return found
        caps = await self._call("GetCapabilities", device.GetCapabilities(Category="All"))
        url = self._service_url(getattr(getattr(caps, "Media", None), "XAddr", None))
        return {_MEDIA1_NS: url} if url is not None else {}

    async def _media1(self, url: str) -> tuple[MediaProfile, ...]:
        media = self._proxy(await _document("media.wsdl"), _MEDIA1_BINDING, url, secure=True)
        replies = await self._call("GetProfiles", media.GetProfiles())
        setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}

        async def one(profile: Any) -> MediaProfile | None:
            token = _text(getattr(profile, "token", None))
            if token is None:
                return None
            stream, snapshot = await asyncio.gather(
                self._optional("GetStreamUri", media.GetStreamUri(StreamSetup=setup, ProfileToken=token)),
                self._optional("GetSnapshotUri", media.GetSnapshotUri(ProfileToken=token)),
            )
            encoder = getattr(profile, "VideoEncoderConfiguration", None)
            resolution = getattr(encoder, "Resolution", None)
            return MediaProfile(
                token=token,
                name=_text(getattr(profile, "Name", None)) or token,
                encoding=_text(getattr(encoder, "Encoding", None), 32),
                width=_dimension(getattr(resolution, "Width", None)),
                height=_dimension(getattr(resolution, "Height", None)),
                fps=_fps(getattr(getattr(encoder, "RateControl", None), "FrameRateLimit", None)),
                stream_uri=_uri(getattr(stream, "Uri", None)),
                snapshot_uri=_uri(getattr(snapshot, "Uri", None)),
            )

        return await self._profiles(one(p) for p in _items(replies)[:MAX_PROFILES])

    async def _media2(self, url: str) -> tuple[MediaProfile, ...]:
        reply = await self._call("GetProfiles", self._soap2(url, "GetProfiles", [("Type", "All")]))

        async def one(profile: Media2Profile) -> MediaProfile:
            token = [("ProfileToken", profile.token)]
            stream, snapshot = await asyncio.gather(
                self._optional(
                    "GetStreamUri", self._soap2(url, "GetStreamUri", [("Protocol", "RTSP"), *token])
                ),
                self._optional("GetSnapshotUri", self._soap2(url, "GetSnapshotUri", token)),
            )
            return MediaProfile(
                token=profile.token,
                name=profile.name or profile.token,
                encoding=profile.encoding,
                width=profile.width,
                height=profile.height,
                fps=profile.fps,
                stream_uri=_uri(_child_text(stream, "Uri")),
                snapshot_uri=_uri(_child_text(snapshot, "Uri")),
            )

        return await self._profiles(one(p) for p in parse_media2_profiles(reply)[:MAX_PROFILES])

    async def _profiles(self, pending: Any) -> tuple[MediaProfile, ...]:
        profiles = tuple(p for p in await asyncio.gather(*pending) if p is not None)
        if not profiles:
            raise _Stop(State.ERROR, "the camera has no media profiles")
        return profiles

    # --- one call ---

    async def _call(self, op: str, call: Awaitable[_T]) -> _T:
        """Await one SOAP call; anything that goes wrong becomes a :class:`_Stop` saying what."""
        self.pending.add(op)  # left there if the inquiry's time runs out: timed_out() names it
        try:
            result = await call
        except (_Unauthorized, _NotSoap, _Refused, ZeepError, aiohttp.ClientError, OSError) as e:
            self.pending.discard(op)
            raise self._stop(op, e) from None
        except (ValueError, TypeError, AttributeError, LookupError) as e:  # zeep choking on a reply
            self.pending.discard(op)
            log.debug("%s: %s: unreadable reply: %s", self.where, op, self.safe(_short(e)))
            raise _Stop(State.ERROR, f"unreadable reply to {op}") from None
        self.pending.discard(op)
        self.answered = True
        return result

    async def _optional(self, op: str, call: Awaitable[_T]) -> _T | None:
        """A call whose failure costs only its own answer (a URI): a fault, a broken reply, or a refusal
        (the credentials already worked for GetProfiles; this user may just lack the right)."""
        try:
            return await self._call(op, call)
        except _Stop as stop:
            if stop.state is State.UNREACHABLE:
                raise
            log.debug("%s: %s: %s", self.where, op, self.safe(stop.detail))
            return None

    def _stop(self, op: str, e: BaseException) -> _Stop:
        log.debug("%s: %s failed: %s", self.where, op, self.safe(_short(e)))
        if isinstance(e, _Unauthorized):
            return self._refused(e.scheme)
        if isinstance(e, Fault):
            if _is_auth_fault(e):
                return self._refused("WS-Security")
            return _Stop(State.ERROR, f"{op} failed: {_fault_text(e)}")
        if isinstance(e, _NotSoap):
            if self.answered:
                return _Stop(State.ERROR, f"{op}: HTTP {e.status} {e.content_type} instead of SOAP")
            if e.status >= 400:
                return _Stop(State.NOT_ONVIF, f"HTTP {e.status} from a non-ONVIF web server")
            return _Stop(State.NOT_ONVIF, f"HTTP {e.status} {e.content_type}, not SOAP: not an ONVIF device")
        if isinstance(e, _Refused):
            return _Stop(State.ERROR, f"{op}: the camera sent {e}")
        if isinstance(e, aiohttp.ClientConnectorDNSError):
            return _Stop(State.UNREACHABLE, f"cannot resolve {urlsplit(self.xaddr).hostname}")
        if isinstance(e, aiohttp.ClientConnectorError):
            return _Stop(State.UNREACHABLE, _os_text(e.os_error))
        if isinstance(e, aiohttp.ServerDisconnectedError):
            return _Stop(State.UNREACHABLE, f"the camera closed the connection without answering {op}")
        if isinstance(e, TimeoutError):
            return self.timed_out()
        if isinstance(e, OSError):  # aiohttp.ClientOSError too: reset, unreachable network
            return _Stop(State.UNREACHABLE, f"{_os_text(e)} during {op}")
        if isinstance(e, aiohttp.ClientError) and not self.answered:  # not HTTP at all
            return _Stop(State.NOT_ONVIF, f"no HTTP answer at this address ({type(e).__name__})")
        return _Stop(State.ERROR, f"{op}: broken reply ({type(e).__name__})")

    def _refused(self, scheme: str) -> _Stop:
        if self.username is None:
            return _Stop(State.NEEDS_PASSWORD, f"the camera asks for a password ({scheme})", auth=scheme)
        if scheme == "HTTP Basic":
            return _Stop(State.AUTH_FAILED, "the camera wants HTTP Basic, which sends the password in clear")
        return _Stop(State.AUTH_FAILED, f"the camera refused the password ({scheme})", auth=scheme)

    def timed_out(self) -> _Stop:
        waiting = ", ".join(sorted(self.pending))
        if not self.answered:
            return _Stop(State.UNREACHABLE, f"no answer within {self.timeout_s:g} s")
        return _Stop(State.UNREACHABLE, f"no answer to {waiting} within {self.timeout_s:g} s")

    # --- plumbing ---

    def _token(self, offset_s: float | None) -> Any:
        offset = None if offset_s is None else dt.timedelta(seconds=offset_s)
        return UsernameDigestTokenDtDiff(self.username, self.password, dt_diff=offset, use_digest=True)

    async def _device(self, *, secure: bool) -> Any:
        return self._proxy(await _document("devicemgmt.wsdl"), _DEVICE_BINDING, self.xaddr, secure=secure)

    def _proxy(self, document: Any, binding: str, url: str, *, secure: bool) -> Any:
        wsse = self.wsse if secure else None
        client = ZeepAsyncClient(wsdl=document, wsse=wsse, transport=self.transport, settings=_REPLY_SETTINGS)
        return client.create_service(binding, url)

    async def _soap2(self, url: str, op: str, children: Sequence[tuple[str, str]]) -> Element:
        """One hand-written Media2 call: the response element, or zeep's Fault for a SOAP fault."""
        envelope = etree.Element(f"{{{_SOAP12}}}Envelope", nsmap={"s": _SOAP12, "tr2": _MEDIA2_NS})
        etree.SubElement(envelope, f"{{{_SOAP12}}}Header")
        request = etree.SubElement(etree.SubElement(envelope, f"{{{_SOAP12}}}Body"), f"{{{_MEDIA2_NS}}}{op}")
        for name, value in children:
            etree.SubElement(request, f"{{{_MEDIA2_NS}}}{name}").text = value
        if self.wsse is not None:
            self.wsse.apply(envelope, {})
        data = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
        action = f'application/soap+xml; charset=utf-8; action="{_MEDIA2_NS}/{op}"'
        response, _body, root = await self.exchange.post(url, data, {hdrs.CONTENT_TYPE: action})
        return media2_response(root, op, response.status)

    def _service_url(self, advertised: object) -> str | None:
        """A service XAddr the camera advertised, on the host we were asked to talk to: cameras behind NAT
        or with two interfaces advertise addresses we may not reach, and no request (not even a digest)
        goes to a host the caller did not name."""
        text = _text(advertised, 1024)
        if text is None:
            return None
        try:
            parts, device = urlsplit(text.split()[0]), urlsplit(self.xaddr)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return None
            if parts.hostname != device.hostname:
                parts = parts._replace(scheme=device.scheme, netloc=device.netloc)
            return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        except ValueError:
            return None

    @property
    def where(self) -> str:
        return redact_url(self.xaddr)

    def safe(self, text: str) -> str:
        return redact_text(text, self.secrets)

    def stopped(self, stop: _Stop) -> None:
        self.state, self.detail = stop.state, stop.detail

    def report(self) -> DeviceReport:
        fields = dict(self.report_fields)
        if self.state is State.OK or (self.state is State.ERROR and self.answered):
            if self.digest is not None and self.digest.used:
                fields["auth"] = "http-digest"
            else:
                fields["auth"] = "ws-security" if self.wsse is not None else "none"
        detail = " ".join(self.safe(self.detail).split())[:300] or self.state.value
        return DeviceReport(xaddr=self.xaddr, state=self.state, detail=_printable(detail), **fields)


# --- Media2 by hand, and small parsers (pure: bytes or elements in, values out) ---------------------------


@dataclass(frozen=True)
class Media2Profile:
    token: str
    name: str | None
    encoding: str | None
    width: int | None
    height: int | None
    fps: float | None


def media2_response(root: Element, op: str, status: int) -> Element:
    """The ``<op>Response`` element of a SOAP envelope; zeep's :class:`Fault` for a SOAP fault (1.2 or 1.1),
    so that hand-written and zeep calls fail alike; :class:`ValueError` for anything else."""
    body = _child(root, "Body")
    first = next(iter(body), None) if body is not None else None
    if first is None:
        raise ValueError(f"HTTP {status}: an empty SOAP body")
    if _local(first.tag) == "Fault":
        raise media2_fault(first)
    if status != 200 or _local(first.tag) != f"{op}Response":
        raise ValueError(f"HTTP {status}: {_local(first.tag)[:64]} instead of {op}Response")
    return first


def media2_fault(fault: Element) -> Fault:
    code_el = _child(fault, "Code")
    if code_el is None:  # SOAP 1.1
        return _fault(_child_text(fault, "faultstring"), _child_text(fault, "faultcode"), [])
    subcodes: list[str] = []
    sub = _child(code_el, "Subcode")
    while sub is not None and len(subcodes) < 8:
        subcodes.append(_child_text(sub, "Value") or "")
        sub = _child(sub, "Subcode")
    return _fault(_child_text(_child(fault, "Reason"), "Text"), _child_text(code_el, "Value"), subcodes)


def _fault(reason: str | None, code: str | None, subcodes: list[str]) -> Fault:
    return Fault(reason or "", code=code, subcodes=subcodes)  # type: ignore[no-untyped-call]


def parse_media2_profiles(response: Element) -> list[Media2Profile]:
    """``tr2:GetProfilesResponse`` → profiles (those without a token skipped). Namespaces are matched
    loosely (local names): firmwares get them wrong more often than the element names."""
    found = []
    for el in response:
        token = _text(el.get("token"))
        if _local(el.tag) != "Profiles" or token is None:
            continue
        encoder = _path(el, "Configurations", "VideoEncoder")
        found.append(
            Media2Profile(
                token=token,
                name=_text(_child_text(el, "Name")),
                encoding=_text(_child_text(encoder, "Encoding"), 32),
                width=_dimension(_child_text(_path(encoder, "Resolution"), "Width")),
                height=_dimension(_child_text(_path(encoder, "Resolution"), "Height")),
                fps=_fps(_child_text(_path(encoder, "RateControl"), "FrameRateLimit")),
            )
        )
    return found


def _items(value: object) -> list[Any]:
    """A zeep list answer as a list, whatever shape a firmware gave it."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _local(tag: object) -> str:
    """``{ns}Name``, ``prefix:Name`` or a QName → ``Name``."""
    return str(tag).rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def _child(el: Element | None, local: str) -> Element | None:
    if el is None:
        return None
    return next((c for c in el if _local(c.tag) == local), None)


def _path(el: Element | None, *locals_: str) -> Element | None:
    for local in locals_:
        el = _child(el, local)
    return el


def _child_text(el: Element | None, local: str) -> str | None:
    child = _child(el, local)
    return child.text if child is not None else None


def _is_auth_fault(fault: Fault) -> bool:
    codes = [fault.code, *(fault.subcodes or [])]
    return any(_local(c) in _AUTH_FAULTS for c in codes if c is not None)


def _fault_text(fault: Fault) -> str:
    codes = "/".join(_local(c) for c in [fault.code, *(fault.subcodes or [])] if c)
    reason = " ".join(str(fault.message or "").split())[:160]
    return ": ".join(x for x in (codes, reason) if x) or "a SOAP fault"


def _clock_offset_s(reply: Any, local_mid_s: float) -> float | None:
    """Camera clock minus ours, from GetSystemDateAndTime's UTCDateTime (None without one). The camera
    counts whole seconds, so its clock is on average half a second past what it says."""
    try:
        utc = reply.UTCDateTime
        d, t = utc.Date, utc.Time
        camera = dt.datetime(
            int(d.Year), int(d.Month), int(d.Day), int(t.Hour), int(t.Minute), int(t.Second), tzinfo=dt.UTC
        )
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    return camera.timestamp() + 0.5 - local_mid_s


def _short(e: BaseException) -> str:
    # str(), not repr(): aiohttp's repr carries the request headers, digest response included.
    return f"{type(e).__name__}: {e}"[:300]


def _os_text(e: OSError) -> str:
    if e.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[e.errno]
    return os.strerror(e.errno).lower() if e.errno else f"connection failed ({type(e).__name__})"


def _text(value: object, limit: int = 256) -> str | None:
    if value is None:
        return None
    text = _printable(" ".join(str(value).split()))[:limit]
    return text or None


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable())


def _dimension(value: object) -> int | None:
    try:
        n = int(str(value))
    except ValueError:
        return None
    return n if 0 < n <= 16384 else None


def _fps(value: object) -> float | None:
    try:
        n = float(str(value))
    except ValueError:
        return None
    return n if 0 < n <= 1000 else None


def _uri(value: object) -> str | None:
    text = _text(value, 2048)
    if text is None or " " in text:
        return None
    try:
        parts = urlsplit(text)
        ok = parts.scheme.lower() in ("rtsp", "rtsps", "http", "https") and bool(parts.hostname)
    except ValueError:
        return None
    return text if ok else None


def _split_userinfo(xaddr: str) -> tuple[str, str | None, str | None]:
    """The URL without ``user:password@`` (aiohttp would send it as HTTP Basic), and the two, decoded."""
    try:
        parts = urlsplit(xaddr.strip())
    except ValueError:
        return xaddr, None, None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return urlunsplit(parts), None, None
    user, colon, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), unquote(user), unquote(password) if colon else None


def _check_url(xaddr: str) -> None:
    try:
        parts = urlsplit(xaddr)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port
    except ValueError:
        ok = False
    if not ok:
        raise _Stop(State.ERROR, "not an http(s) URL of a device service")
