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

Media2 (cameras without the ver10 media service) goes by three hand-written calls; Media1 is used when
present. The SOAP plumbing — session, HTTP Digest, zeep proxies, the size cap and the defusedxml check every
reply passes before anyone reads it, the Media2 requests — is :mod:`edge.discovery.onvif_soap`'s; the pure
readers of replies and the cleaners of every field a camera sends are :mod:`edge.discovery.onvif_replies`'.
This module runs the inquiry and decides what each failure means.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit
from xml.etree.ElementTree import Element

import aiohttp
from zeep.exceptions import Error as ZeepError
from zeep.exceptions import Fault

from edge.discovery.onvif_replies import (
    Media2Profile,
    child_text,
    clean_text,
    clean_uri,
    clock_offset_s,
    dimension,
    fault_text,
    frame_rate,
    is_auth_fault,
    items,
    media2_response,
    parse_media2_profiles,
    printable,
)
from edge.discovery.onvif_soap import (
    DEVICE_BINDING,
    MAX_REPLY_BYTES,
    MEDIA1_BINDING,
    MEDIA1_NS,
    MEDIA2_NS,
    Digest,
    Exchange,
    NotSoap,
    Refused,
    Transport,
    Unauthorized,
    media2_call,
    new_session,
    proxy,
    wsdl,
    wsse_token,
)
from edge.redact import redact_text, redact_url

# Re-exported: the tests read the cap and the Media2 parsers through this module.
__all__ = [
    "MAX_PROFILES",
    "MAX_REPLY_BYTES",
    "DeviceReport",
    "Media2Profile",
    "MediaProfile",
    "State",
    "inspect",
    "media2_response",
    "parse_media2_profiles",
    "preload",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_PROFILES: Final = 64

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
    await asyncio.gather(wsdl("devicemgmt.wsdl"), wsdl("media.wsdl"))


# --- internals ------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Ends the inquiry with this state; ``auth`` names the scheme that refused us, if that is why."""

    def __init__(self, state: State, detail: str, *, auth: str | None = None) -> None:
        super().__init__(detail)
        self.state, self.detail, self.auth = state, detail, auth


# Which failure a report shows when two concurrent branches fail differently.
_SEVERITY = (State.NEEDS_PASSWORD, State.AUTH_FAILED, State.UNREACHABLE, State.NOT_ONVIF, State.ERROR)


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
            Digest(username, self.password or "") if username is not None and ":" not in username else None
        )
        self.session = new_session(timeout_s, self.digest)
        self.exchange = Exchange(self.session)
        self.transport = Transport(self.exchange)

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
        offset_s = clock_offset_s(reply, (sent + time.time()) / 2)
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
            self.report_fields[name] = clean_text(getattr(info, attr, None))

    async def _media(self, device: Any) -> None:
        services = await self._services(device)
        if MEDIA1_NS in services:
            media, profiles = "media1", await self._media1(services[MEDIA1_NS])
        elif MEDIA2_NS in services:
            media, profiles = "media2", await self._media2(services[MEDIA2_NS])
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
            for service in items(services)[:256]:
                url = self._service_url(getattr(service, "XAddr", None))
                namespace = clean_text(getattr(service, "Namespace", None))
                if url is not None and namespace is not None:
                    found[namespace] = url
            if found:
                return found
        caps = await self._call("GetCapabilities", device.GetCapabilities(Category="All"))
        url = self._service_url(getattr(getattr(caps, "Media", None), "XAddr", None))
        return {MEDIA1_NS: url} if url is not None else {}

    async def _media1(self, url: str) -> tuple[MediaProfile, ...]:
        media = self._proxy(await wsdl("media.wsdl"), MEDIA1_BINDING, url, secure=True)
        replies = await self._call("GetProfiles", media.GetProfiles())
        setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}

        async def one(profile: Any) -> MediaProfile | None:
            token = clean_text(getattr(profile, "token", None))
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
                name=clean_text(getattr(profile, "Name", None)) or token,
                encoding=clean_text(getattr(encoder, "Encoding", None), 32),
                width=dimension(getattr(resolution, "Width", None)),
                height=dimension(getattr(resolution, "Height", None)),
                fps=frame_rate(getattr(getattr(encoder, "RateControl", None), "FrameRateLimit", None)),
                stream_uri=clean_uri(getattr(stream, "Uri", None)),
                snapshot_uri=clean_uri(getattr(snapshot, "Uri", None)),
            )

        return await self._profiles(one(p) for p in items(replies)[:MAX_PROFILES])

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
                stream_uri=clean_uri(child_text(stream, "Uri")),
                snapshot_uri=clean_uri(child_text(snapshot, "Uri")),
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
        except (Unauthorized, NotSoap, Refused, ZeepError, aiohttp.ClientError, OSError) as e:
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
        if isinstance(e, Unauthorized):
            return self._refused(e.scheme)
        if isinstance(e, Fault):
            if is_auth_fault(e):
                return self._refused("WS-Security")
            return _Stop(State.ERROR, f"{op} failed: {fault_text(e)}")
        if isinstance(e, NotSoap):
            if self.answered:
                return _Stop(State.ERROR, f"{op}: HTTP {e.status} {e.content_type} instead of SOAP")
            if e.status >= 400:
                return _Stop(State.NOT_ONVIF, f"HTTP {e.status} from a non-ONVIF web server")
            return _Stop(State.NOT_ONVIF, f"HTTP {e.status} {e.content_type}, not SOAP: not an ONVIF device")
        if isinstance(e, Refused):
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
        return wsse_token(self.username, self.password, offset_s)

    async def _device(self, *, secure: bool) -> Any:
        return self._proxy(await wsdl("devicemgmt.wsdl"), DEVICE_BINDING, self.xaddr, secure=secure)

    def _proxy(self, document: Any, binding: str, url: str, *, secure: bool) -> Any:
        return proxy(document, binding, url, self.transport, self.wsse if secure else None)

    async def _soap2(self, url: str, op: str, children: Sequence[tuple[str, str]]) -> Element:
        """One hand-written Media2 call: the response element, or zeep's Fault for a SOAP fault."""
        return await media2_call(self.exchange, url, op, children, self.wsse)

    def _service_url(self, advertised: object) -> str | None:
        """A service XAddr the camera advertised, on the host we were asked to talk to: cameras behind NAT
        or with two interfaces advertise addresses we may not reach, and no request (not even a digest)
        goes to a host the caller did not name."""
        text = clean_text(advertised, 1024)
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
        return DeviceReport(xaddr=self.xaddr, state=self.state, detail=printable(detail), **fields)


def _short(e: BaseException) -> str:
    # str(), not repr(): aiohttp's repr carries the request headers, digest response included.
    return f"{type(e).__name__}: {e}"[:300]


def _os_text(e: OSError) -> str:
    if e.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[e.errno]
    return os.strerror(e.errno).lower() if e.errno else f"connection failed ({type(e).__name__})"


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
