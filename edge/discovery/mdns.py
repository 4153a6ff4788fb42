"""mDNS / DNS-SD: find cameras that announce themselves, and announce the box's own pairing page.

* :func:`browse` listens for ``timeout_s`` for the camera service types in :data:`CAMERA_TYPES`, resolves
  every instance it hears of (SRV, TXT, A) and returns them as :class:`Service`. It only asks: it registers
  nothing, so it never answers for anything either.
* :class:`Advertiser` announces the box as ``<name>._http._tcp.local.`` on host ``<name>.local.``, so the
  owner can type ``http://edge-1a2b.local:<port>/`` to reach the pairing page. ``close`` sends the goodbye.

Everything here is IPv4 and runs on the asyncio loop (python-zeroconf's asyncio API). What arrives from the
LAN is untrusted: zeroconf parses the packets (and drops what it cannot parse); this module only turns a
resolved record into a :class:`Service`, and that step tolerates any record shape (missing fields, undecodable
TXT, addresses a LAN device has no business claiming such as loopback or multicast) by leaving the part out,
never by raising.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import ifaddr
from zeroconf import (
    BadTypeInNameException,
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

import edge
from edge.errors import ConfigError, Error, NotFound

log = logging.getLogger(__name__)

# What cameras announce. ``_rtsp._tcp`` is the DNS-SD type for RTSP (open firmwares such as Thingino, many
# NVR/encoder boxes, GStreamer/ESP32 cameras; TXT ``path`` is the stream's path). ``_rtsps._tcp`` is the same
# over TLS, announced next to it by firmwares that offer both (Thingino does). ``_axis-video._tcp`` is what
# Axis cameras (and DoorBird) announce; its port is the camera's HTTP port, not a stream, so such a Service
# has no ``url`` — its address is still a camera worth asking over ONVIF. ``_onvif._tcp`` is left out: ONVIF
# devices are found by WS-Discovery, and no camera we know of announces it over mDNS.
RTSP_TYPE = "_rtsp._tcp.local."
RTSPS_TYPE = "_rtsps._tcp.local."
AXIS_TYPE = "_axis-video._tcp.local."
CAMERA_TYPES: tuple[str, ...] = (RTSP_TYPE, RTSPS_TYPE, AXIS_TYPE)
_URL_SCHEMES = {RTSP_TYPE: "rtsp", RTSPS_TYPE: "rtsps"}

HTTP_TYPE = "_http._tcp.local."

# A LAN flooding us with made-up instances gets this many resolved and no more.
MAX_SERVICES = 512

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Characters left as they are in a TXT path: RFC 3986 pchar plus "/" and "?" (a path may carry a query, as
# "/live?channel=1" does). Anything else (spaces, "#", control characters, non-ASCII) is percent-encoded.
_PATH_SAFE = "/?:@!$&'()*+,;=-._~%"
_TXT_ENTRY_MAX_BYTES = 255  # one TXT string (RFC 6763 §6.1)


@dataclass(frozen=True)
class Service:
    """One resolved DNS-SD instance. ``instance`` is the instance label ("Camera-17"), ``type`` the service
    type ("_rtsp._tcp.local."), ``server`` the host name it runs on, ``addresses`` its usable IPv4 addresses
    (then IPv6), ``properties`` its TXT record (keys lower-cased; a key without ``=`` maps to "")."""

    instance: str
    type: str
    server: str
    addresses: tuple[str, ...]
    port: int
    properties: dict[str, str] = field(hash=False)

    @property
    def url(self) -> str | None:
        """``rtsp://<first IPv4>:<port>/<TXT path>`` (``rtsps://`` for ``_rtsps._tcp``); None for a type that
        does not announce a stream, or with no IPv4 address."""
        scheme = _URL_SCHEMES.get(self.type)
        ipv4 = next((a for a in self.addresses if ipaddress.ip_address(a).version == 4), None)
        if scheme is None or ipv4 is None:
            return None
        path = self.properties.get("path", "")
        if not path.startswith("/"):
            path = "/" + path
        return f"{scheme}://{ipv4}:{self.port}{quote(path, safe=_PATH_SAFE)}"


async def browse(
    timeout_s: float = 3.0,
    types: Sequence[str] = CAMERA_TYPES,
    *,
    interfaces: Sequence[str] | None = None,
    on_found: Callable[[Service], None] | None = None,
) -> list[Service]:
    """Listen for ``timeout_s`` and return every instance of ``types`` that resolved in that time.

    ``interfaces``: the IPv4 addresses of the interfaces to use (None: all). ``on_found`` is called on the
    loop once per instance, as soon as it resolves. An instance that says goodbye before the end is dropped.
    Instances whose records never complete (no SRV, no usable address) are left out.

    Raises ConfigError for an interface that is not an IPv4 address, Error(kind="unavailable") when the
    sockets cannot be opened (no such interface here). Nothing the LAN sends makes it raise.
    """
    if not types:
        return []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    # Both by instance name, lower-cased (DNS names are case-insensitive); an instance that left is dropped.
    found: dict[str, Service] = {}
    resolving: dict[str, asyncio.Task[None]] = {}
    tasks: list[asyncio.Task[None]] = []  # every resolve started, awaited at the end

    async def resolve(zc: Zeroconf, info: AsyncServiceInfo) -> None:
        remaining_ms = max(0.0, deadline - loop.time()) * 1000
        if not await info.async_request(zc, remaining_ms, question_type=DNSQuestionType.QM):
            log.debug("mDNS instance %r did not resolve in time", info.name)
            return
        service = _service_from_info(info)
        if service is None or info.key in found:
            return
        found[info.key] = service
        if on_found is not None:
            on_found(service)

    # Called by zeroconf for every PTR it hears of: must not raise, whatever the LAN sent.
    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            found.pop(key, None)
            task = resolving.pop(key, None)
            if task is not None:
                task.cancel()
            return
        if key in resolving:
            return
        if len(tasks) >= MAX_SERVICES:
            log.debug("mDNS: more than %d instances, ignoring %r", MAX_SERVICES, name)
            return
        try:
            # A PTR may point anywhere; zeroconf refuses a name that is not "<instance>.<type>".
            info = AsyncServiceInfo(service_type, name)
        except BadTypeInNameException:
            log.debug("mDNS: ignoring instance %r of %s: bad name", name, service_type)
            return
        task = loop.create_task(resolve(zeroconf, info))
        resolving[key] = task
        tasks.append(task)

    aiozc = _open_zeroconf(interfaces)
    try:
        # QM questions only (zeroconf's default asks QU first, for a unicast reply): a unicast reply to
        # port 5353 reaches just one of the sockets bound there, and the box has several (the Advertiser,
        # maybe avahi-daemon). Measured with the Advertiser running: QM finds cameras in ~0.2 s, the
        # default only at ~1.2 s, from its second (QM) query.
        browser = AsyncServiceBrowser(
            aiozc.zeroconf, list(types), handlers=[on_change], question_type=DNSQuestionType.QM
        )
        try:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
        finally:
            await browser.async_cancel()
            for task in tasks:
                task.cancel()
            # Unfinished resolves end cancelled; any other exception (a bug, or on_found's own) is raised.
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    raise outcome
    finally:
        await aiozc.async_close()
    return list(found.values())


def _service_from_info(info: AsyncServiceInfo) -> Service | None:
    """A resolved record as a Service, or None if it is unusable (no port, no usable address)."""
    port = info.port
    if not port:
        log.debug("mDNS instance %r has no port", info.name)
        return None
    addresses = _usable_addresses(info.parsed_addresses(IPVersion.All))
    if not addresses:
        log.debug("mDNS instance %r has no usable address", info.name)
        return None
    properties: dict[str, str] = {}
    for key, value in info.decoded_properties.items():  # decoded with errors="replace"
        properties.setdefault(key.lower(), value or "")
    type_ = info.type
    instance = info.name.removesuffix("." + type_) if info.name.endswith("." + type_) else info.name
    return Service(
        instance=instance,
        type=type_,
        server=info.server or "",
        addresses=addresses,
        port=port,
        properties=properties,
    )


def _usable_addresses(parsed: Sequence[str]) -> tuple[str, ...]:
    """IPv4 first, then IPv6; never loopback, unspecified, multicast or broadcast: a device on the LAN that
    claims those would have us connect to ourselves or to nobody."""
    keep: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in parsed:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address(0xFFFFFFFF):
            log.debug("mDNS: ignoring address %s", ip)
            continue
        if ip not in keep:
            keep.append(ip)
    keep.sort(key=lambda ip: ip.version)  # stable: the responder's order within a family stays
    return tuple(str(ip) for ip in keep)


def _open_zeroconf(interfaces: Sequence[str] | None) -> AsyncZeroconf:
    """Sockets on port 5353 of the given interfaces (None: all), IPv4 only; on the running loop."""
    choice = _interface_choice(interfaces)
    try:
        return AsyncZeroconf(interfaces=choice, ip_version=IPVersion.V4Only)
    except (OSError, RuntimeError) as e:  # RuntimeError: zeroconf found no interface at all
        where = "interface " + ", ".join(interfaces) if interfaces is not None else "any interface"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise Error(f"mDNS cannot listen on {where}: {reason}", kind="unavailable") from e


def _interface_choice(interfaces: Sequence[str] | None) -> list[str] | InterfaceChoice:
    if interfaces is None:
        return InterfaceChoice.All
    for address in interfaces:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise ConfigError(f"mDNS interface {address!r} is not an IPv4 address") from None
    return list(interfaces)


def default_name(device_id: bytes) -> str:
    """``edge-`` and 4 hex digits of SHA-256(device_id): stable across restarts, short enough to type."""
    return "edge-" + hashlib.sha256(device_id).hexdigest()[:4]


def _lan_ipv4_addresses() -> list[str]:
    """Every IPv4 address of this host but loopback: the ones the pairing page is reachable on."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback and ip.ip not in found:
                found.append(ip.ip)
    return found


class Advertiser:
    """Announces the box's pairing page as ``<name>._http._tcp.local.`` on ``<name>.local.``.

    The TXT record is exactly ``path`` and ``version``. Nothing about pairing state, owners or police
    programmes goes on the LAN: anyone on the shop's network hears mDNS, and whether (and with whom) this box
    shares footage is the owner's business, shown to them behind the pairing page, not broadcast.

    If another device already holds the instance name, zeroconf renames ours (``edge-1a2b-2``; see
    :attr:`instance_name`); the host name stays. Addresses are taken once, at :meth:`start`.
    """

    def __init__(
        self,
        port: int,
        *,
        name: str,
        path: str = "/",
        version: str = edge.__version__,
        interfaces: Sequence[str] | None = None,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"mDNS name {name!r}: use 1-63 characters a-z, 0-9 and '-', not starting or ending with '-'"
            )
        if not 0 < port < 65536:
            raise ConfigError(f"mDNS port {port} is not a TCP port")
        if not path.startswith("/"):
            raise ConfigError(f"mDNS path {path!r} must start with '/'")
        for key, value in (("path", path), ("version", version)):
            if len(f"{key}={value}".encode()) > _TXT_ENTRY_MAX_BYTES:
                raise ConfigError(f"mDNS TXT {key} is longer than a TXT entry holds")
        _interface_choice(interfaces)  # refuse a bad one now, not at start()
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._port = port
        self._name = name
        self._properties = {"path": path, "version": version}
        self._aiozc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    @property
    def instance_name(self) -> str:
        """The instance label as announced: ``name``, or ``name-2`` … if another device held it."""
        if self._info is not None:
            return self._info.name.removesuffix("." + HTTP_TYPE)
        return self._name

    @property
    def hostname(self) -> str:
        return f"{self._name}.local."

    async def start(self) -> None:
        """Probe for the name, then announce; returns once the announcements are sent (about 2 s).

        Raises NotFound when this host has no IPv4 address to announce, Error(kind="unavailable") when the
        interfaces cannot be used.
        """
        if self._aiozc is not None:
            return
        addresses = self._interfaces if self._interfaces is not None else _lan_ipv4_addresses()
        if not addresses:
            raise NotFound("no IPv4 address to announce the pairing page on")
        info = AsyncServiceInfo(
            HTTP_TYPE,
            f"{self._name}.{HTTP_TYPE}",
            port=self._port,
            properties=dict(self._properties),
            server=self.hostname,
            parsed_addresses=addresses,
        )
        aiozc = _open_zeroconf(self._interfaces)
        try:
            announced: Awaitable[object] = await aiozc.async_register_service(info, allow_name_change=True)
            await announced
        except BaseException:
            await aiozc.async_close()
            raise
        self._aiozc, self._info = aiozc, info
        log.info("announcing %s on %s (%s)", info.name, self.hostname, ", ".join(addresses))

    async def close(self) -> None:
        """Send the goodbye (TTL 0) and stop answering. Safe to call twice."""
        aiozc, info = self._aiozc, self._info
        self._aiozc = None
        if aiozc is None or info is None:
            return
        try:
            goodbye: Awaitable[object] = await aiozc.async_unregister_service(info)
            await goodbye
        finally:
            await aiozc.async_close()
