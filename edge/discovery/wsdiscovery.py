"""WS-Discovery client for ONVIF cameras: multicast and directed Probes, and a Hello/Bye listener.

ONVIF devices speak WS-Discovery (the 2005/04 draft; 1.1's 2009/01 namespaces are accepted too) over
SOAP-over-UDP: a Probe goes to 239.255.255.250:3702 (or straight to one device's port 3702) and each matching
device answers with a unicast ProbeMatches to the probe's source address and port. Devices also multicast a
Hello when they join the network and a Bye when they leave.

We wrote this instead of using the ``wsdiscovery`` package because wsdiscovery 2.1.2 skips 127.x interfaces,
never reads the replies to directed (unicast) probes, its IPv6 thread throws on an IPv4 target, and it is
thread-based; here everything runs on the asyncio loop.

Everything that arrives is hostile until parsed: :func:`parse` is pure, never raises and returns ``None``
(with a debug log saying why) for anything but a well-formed ProbeMatches, Hello or Bye. Parsing uses
defusedxml with DTDs forbidden, sizes are capped, and a bad reply costs only itself: the other devices found
in the same probe are unaffected. Only IPv4.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import fcntl
import functools
import ipaddress
import logging
import random
import re
import socket
import struct
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

import defusedxml.ElementTree as _defused

from edge.errors import Malformed, SourceError

_log = logging.getLogger(__name__)
_P = TypeVar("_P", bound=asyncio.DatagramProtocol)

NVT = "{http://www.onvif.org/ver10/network/wsdl}NetworkVideoTransmitter"
DEVICE = "{http://www.onvif.org/ver10/device/wsdl}Device"

GROUP = "239.255.255.250"
PORT = 3702

_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
_WSD_2005 = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
_WSD_2009 = "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01"
_WSA_2004 = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
_WSA_2005 = "http://www.w3.org/2005/08/addressing"
_DISCOVERY_NS = (_WSD_2005, _WSD_2009)
_ADDRESSING_NS = (_WSA_2004, _WSA_2005)
_PREFIXES = {
    "http://www.onvif.org/ver10/network/wsdl": "dn",
    "http://www.onvif.org/ver10/device/wsdl": "tds",
}

# A camera's ProbeMatch is 1-3 KB. UDP allows 64 KiB, but anyone on the LAN can send us unauthenticated
# datagrams, so we refuse to spend parse time and memory on more than ten times anything genuine.
MAX_DATAGRAM_BYTES = 32 * 1024
MAX_DEVICES = 1024  # distinct EPRs one probe keeps: a flood of fake devices can't eat memory
_MAX_MATCHES = 32  # ProbeMatch elements in one message
_MAX_URI_CHARS = 2048  # EPR, each XAddr, scope, MessageID, RelatesTo
_MAX_XADDRS = 16
_MAX_SCOPES = 64
_MAX_TYPES = 16
_MAX_METADATA_VERSION = 2**32 - 1  # xs:unsignedInt
_INBOX_SIZE = 256  # datagrams waiting for the probe loop; beyond it they are dropped and counted
_SEEN_MESSAGE_IDS = 256  # Hello/Bye MessageIDs remembered to drop the SOAP-over-UDP repeat

# SOAP-over-UDP: a multicast or unicast message is sent once more (UDP_REPEAT 1) after a random delay
# between UDP_MIN_DELAY and UDP_MAX_DELAY.
_REPEAT_DELAY_S = (0.05, 0.25)

# Linux ioctls (linux/sockios.h) and interface flags (linux/if.h).
_SIOCGIFCONF = 0x8912
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFF_MULTICAST = 0x1000
_IFNAMSIZ = 16
# struct ifreq is the name plus a union whose biggest member (struct ifmap) is 24 bytes on 64-bit, 16 on 32.
_IFREQ_SIZE = _IFNAMSIZ + (24 if struct.calcsize("P") == 8 else 16)

# What we put in a Probe: printable ASCII without whitespace or XML-special characters, so the XML we send
# is well-formed whatever a caller passes (anything else is refused, not escaped).
_SAFE_TOKEN = re.compile(r"[!#-%(-;=?-~]+")
_NCNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_EXPANDED = re.compile(r"\{(?P<ns>[!#-%(-;=?-z|~]+)\}(?P<local>[A-Za-z_][A-Za-z0-9_.\-]*)")


@dataclass(frozen=True)
class Interface:
    name: str
    ip: str


@dataclass(frozen=True)
class Device:
    """One WS-Discovery target service, as announced in a ProbeMatch or Hello."""

    epr: str  # EndpointReference Address, e.g. urn:uuid:...; the device's stable identity
    xaddrs: tuple[str, ...]  # transport addresses of its device service
    types: tuple[str, ...]  # expanded "{namespace}local"
    scopes: tuple[str, ...]
    metadata_version: int
    source_ip: str  # where the datagram came from

    @property
    def name(self) -> str | None:
        return self._scope("name")

    @property
    def hardware(self) -> str | None:
        return self._scope("hardware")

    @property
    def location(self) -> str | None:
        return self._scope("location")

    @property
    def device_url(self) -> str | None:
        """The first http(s) XAddr, preferring one on the address the reply came from (a camera with two
        networks lists both, and only the one we heard it on is known to reach us)."""
        urls = [u for u in self.xaddrs if _scheme(u) in ("http", "https")]
        for url in urls:
            if _host(url) == self.source_ip:
                return url
        return urls[0] if urls else None

    def _scope(self, kind: str) -> str | None:
        prefix = f"onvif://www.onvif.org/{kind}/"
        for scope in self.scopes:
            if scope[: len(prefix)].lower() == prefix:
                value = _printable(unquote(scope[len(prefix) :], errors="replace")).strip()
                if value:
                    return value
        return None


@dataclass(frozen=True)
class ProbeMatches:
    relates_to: str  # the MessageID of the Probe this answers
    message_id: str | None
    devices: tuple[Device, ...]


@dataclass(frozen=True)
class Hello:
    device: Device
    message_id: str | None


@dataclass(frozen=True)
class Bye:
    epr: str
    message_id: str | None


Message = ProbeMatches | Hello | Bye


# --------------------------------------------------------------------------------------------------- probe


def build_probe(types: str, message_id: str) -> bytes:
    """A WS-Discovery 2005/04 Probe for ``types`` (one or more whitespace-separated expanded names,
    ``{namespace}local``, e.g. :data:`NVT`). Raises ValueError for anything that would not make well-formed
    XML."""
    decls: dict[str, str] = {}
    qnames: list[str] = []
    for expanded in types.split():
        m = _EXPANDED.fullmatch(expanded)
        if m is None:
            raise ValueError(f"not an expanded type name {{namespace}}local: {expanded!r}")
        prefix = decls.setdefault(m["ns"], _PREFIXES.get(m["ns"], f"t{len(decls)}"))
        qnames.append(f"{prefix}:{m['local']}")
    if not qnames:
        raise ValueError("a Probe needs at least one type")
    if not _SAFE_TOKEN.fullmatch(message_id) or len(message_id) > _MAX_URI_CHARS:
        raise ValueError(f"unsafe MessageID: {message_id!r}")
    xmlns = "".join(f' xmlns:{p}="{ns}"' for ns, p in decls.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{_SOAP12}" xmlns:a="{_WSA_2004}" xmlns:d="{_WSD_2005}"{xmlns}>'
        "<s:Header>"
        f'<a:Action s:mustUnderstand="1">{_WSD_2005}/Probe</a:Action>'
        f"<a:MessageID>{message_id}</a:MessageID>"
        f"<a:ReplyTo><a:Address>{_WSA_2004}/role/anonymous</a:Address></a:ReplyTo>"
        '<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>'
        "</s:Header>"
        f"<s:Body><d:Probe><d:Types>{' '.join(qnames)}</d:Types></d:Probe></s:Body>"
        "</s:Envelope>"
    ).encode()


async def probe(
    timeout_s: float = 3.0,
    *,
    interfaces: Sequence[Interface] | None = None,
    unicast: Sequence[str] = (),
    on_found: Callable[[Device], None] | None = None,
    multicast_ttl: int = 1,
) -> list[Device]:
    """Probe for ONVIF devices and collect the answers for ``timeout_s`` seconds.

    ``interfaces``: where to multicast (None: :func:`lan_interfaces`; empty: nowhere). ``unicast``: devices
    to probe directly, ``"host"`` or ``"host:port"`` (default port 3702); a malformed one raises Malformed,
    an unresolvable one SourceError. Separate Probes go out for NetworkVideoTransmitter and for Device (one
    Probe listing both only matches devices having both, and some cameras answer only the first), each sent
    twice. ``on_found`` runs on the loop the first time each device (by EPR) is heard; an exception from it
    ends the probe and propagates. Returns the devices in the order found, answers for the same EPR merged.
    With nothing to probe, returns [] at once.
    """
    if not 0 < timeout_s < float("inf"):
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    targets = [await _resolve(t, deadline) for t in unicast]
    ifaces = lan_interfaces() if interfaces is None else list(interfaces)
    ids = {kind: f"urn:uuid:{uuid.uuid4()}" for kind in (NVT, DEVICE)}
    messages = [build_probe(kind, mid) for kind, mid in ids.items()]
    inbox: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue(_INBOX_SIZE)
    results = _Results(set(ids.values()), on_found)
    routes: list[tuple[asyncio.DatagramTransport, _Inbox, list[tuple[str, int]]]] = []
    sender: asyncio.Task[None] | None = None
    try:
        plan: list[tuple[str, Callable[[], socket.socket], list[tuple[str, int]]]] = [
            (iface.name, functools.partial(_multicast_socket, iface, multicast_ttl), [(GROUP, PORT)])
            for iface in ifaces
        ]
        if targets:
            plan.append(("unicast", _unicast_socket, targets))
        for label, open_socket, destinations in plan:
            try:
                sock = open_socket()
            except OSError as e:  # e.g. the interface lost its address since it was listed
                _log.warning("WS-Discovery: cannot probe on %s: %s", label, e)
                continue
            transport, protocol = await _endpoint_for(sock, functools.partial(_Inbox, inbox, label))
            routes.append((transport, protocol, destinations))
        if not routes:
            return []
        sender = asyncio.create_task(_send_twice(routes, messages))
        await _collect(inbox, results, deadline)
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        for transport, _, _ in routes:
            transport.close()
    dropped = sum(proto.dropped for _, proto, _ in routes)
    _log.debug(
        "WS-Discovery probe: %d devices, %d datagrams ignored, %d dropped (inbox full), %d beyond the cap",
        len(results.devices),
        results.ignored,
        dropped,
        results.over_cap,
    )
    return list(results.devices.values())


async def _collect(inbox: asyncio.Queue[tuple[bytes, str]], results: _Results, deadline: float) -> None:
    window = asyncio.timeout_at(deadline)
    try:
        async with window:
            while True:
                data, source_ip = await inbox.get()
                results.add(data, source_ip)
    except TimeoutError:
        if not window.expired():
            raise  # on_found's own


async def _send_twice(
    routes: Sequence[tuple[asyncio.DatagramTransport, _Inbox, list[tuple[str, int]]]], messages: list[bytes]
) -> None:
    for attempt in range(2):
        if attempt:
            await asyncio.sleep(random.uniform(*_REPEAT_DELAY_S))
        for transport, _, destinations in routes:
            for destination in destinations:
                for message in messages:
                    transport.sendto(message, destination)  # a failure reaches _Inbox.error_received


class _Results:
    """The devices one probe heard: ours only (RelatesTo), merged by EPR, at most MAX_DEVICES."""

    def __init__(self, message_ids: set[str], on_found: Callable[[Device], None] | None) -> None:
        self._message_ids = message_ids
        self._on_found = on_found
        self.devices: dict[str, Device] = {}
        self.ignored = 0
        self.over_cap = 0

    def add(self, data: bytes, source_ip: str) -> None:
        message = parse(data, source_ip=source_ip)
        if not isinstance(message, ProbeMatches):
            self.ignored += 1
            return
        if message.relates_to not in self._message_ids:
            _log.debug("WS-Discovery: ProbeMatches from %s answers a probe that isn't ours", source_ip)
            self.ignored += 1
            return
        for device in message.devices:
            old = self.devices.get(device.epr)
            if old is not None:
                self.devices[device.epr] = _merge(old, device)
            elif len(self.devices) >= MAX_DEVICES:
                self.over_cap += 1
            else:
                self.devices[device.epr] = device
                if self._on_found is not None:
                    self._on_found(device)


def _merge(old: Device, new: Device) -> Device:
    """Both answers' XAddrs; the other fields from the newer metadata (on a tie, the later answer)."""
    newer, older = (new, old) if new.metadata_version >= old.metadata_version else (old, new)
    xaddrs = tuple(dict.fromkeys(newer.xaddrs + older.xaddrs))[:_MAX_XADDRS]
    return Device(newer.epr, xaddrs, newer.types, newer.scopes, newer.metadata_version, newer.source_ip)


class _Inbox(asyncio.DatagramProtocol):
    """Queues datagrams for the probe loop without ever waiting: when full, drops and counts."""

    def __init__(self, inbox: asyncio.Queue[tuple[bytes, str]], label: str) -> None:
        self._inbox = inbox
        self._label = label
        self.dropped = 0

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self._inbox.put_nowait((data, str(addr[0])))
        except asyncio.QueueFull:
            self.dropped += 1

    def error_received(self, exc: Exception) -> None:
        _log.warning("WS-Discovery probe on %s: %s", self._label, exc)


def _multicast_socket(iface: Interface, ttl: int) -> socket.socket:
    """Sends to the group through ``iface`` and receives the unicast answers to its address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface.ip))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.bind((iface.ip, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unicast_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - an ephemeral port for the replies, the OS picks the route
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _resolve(target: str, deadline: float) -> tuple[str, int]:
    """``host`` or ``host:port`` to an IPv4 (address, port)."""
    host, sep, port_text = target.strip().rpartition(":")
    if not sep:
        host, port_text = target.strip(), str(PORT)
    if not host or ":" in host or any(c.isspace() for c in host):
        raise Malformed(f"WS-Discovery target must be host or host:port (IPv4), got {target!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Malformed(f"WS-Discovery target {target!r}: bad port")
    port = int(port_text)
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv4Address(host)), port
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(deadline):
            infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    except (OSError, TimeoutError) as e:
        raise SourceError(f"cannot resolve WS-Discovery target {host!r}: {e}", kind="not_found") from e
    return str(infos[0][4][0]), port


# ----------------------------------------------------------------------------------------- announcements


class Announcements:
    """Hello/Bye listener while the daemon runs.

    Binds the group address itself, 239.255.255.250:3702, with SO_REUSEADDR and SO_REUSEPORT, so other
    listeners on the box coexist and no unicast datagram meant for another socket on port 3702 is taken
    (Linux spreads unicast over REUSEPORT sockets; multicast goes to all of them). ``on_hello`` is called for
    Hellos of ONVIF devices (types NetworkVideoTransmitter or Device), ``on_bye`` with the EPR of every Bye;
    the SOAP-over-UDP repeat of a message is dropped. Both run on the loop; an exception from one goes to
    the loop's exception handler and the listener keeps listening.
    """

    def __init__(
        self,
        on_hello: Callable[[Device], None],
        on_bye: Callable[[str], None],
        interfaces: Sequence[Interface] | None = None,
    ) -> None:
        self._on_hello = on_hello
        self._on_bye = on_bye
        self._interfaces = interfaces
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        if self._transport is not None:
            return
        ifaces = lan_interfaces() if self._interfaces is None else list(self._interfaces)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((GROUP, PORT))
            sock.setblocking(False)
            for iface in ifaces:
                mreq = socket.inet_aton(GROUP) + socket.inet_aton(iface.ip)
                try:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                except OSError as e:
                    # EADDRINUSE: already joined on that link through another of its addresses.
                    level = logging.DEBUG if e.errno == errno.EADDRINUSE else logging.WARNING
                    _log.log(level, "WS-Discovery: cannot listen on %s (%s): %s", iface.name, iface.ip, e)
        except BaseException:
            sock.close()
            raise
        transport, _ = await _endpoint_for(sock, lambda: _Listener(self._on_hello, self._on_bye))
        self._transport = transport

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


async def _endpoint_for(
    sock: socket.socket, factory: Callable[[], _P]
) -> tuple[asyncio.DatagramTransport, _P]:
    try:
        return await asyncio.get_running_loop().create_datagram_endpoint(factory, sock=sock)
    except BaseException:
        sock.close()
        raise


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, on_hello: Callable[[Device], None], on_bye: Callable[[str], None]) -> None:
        self._on_hello = on_hello
        self._on_bye = on_bye
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        message = parse(data, source_ip=str(addr[0]))
        if message is None or isinstance(message, ProbeMatches) or self._repeated(message.message_id):
            return
        if isinstance(message, Bye):
            self._on_bye(message.epr)
        elif NVT in message.device.types or DEVICE in message.device.types:
            self._on_hello(message.device)
        else:
            _log.debug("WS-Discovery: Hello from %s is not an ONVIF device", addr[0])

    def _repeated(self, message_id: str | None) -> bool:
        if message_id is None:
            return False
        if message_id in self._seen:
            return True
        self._seen[message_id] = None
        if len(self._seen) > _SEEN_MESSAGE_IDS:
            self._seen.popitem(last=False)
        return False

    def error_received(self, exc: Exception) -> None:
        _log.warning("WS-Discovery listener: %s", exc)


# ------------------------------------------------------------------------------------------- interfaces


def lan_interfaces() -> list[Interface]:
    """IPv4 addresses of the interfaces that are UP and MULTICAST-capable, one entry per address (an
    interface with two subnets probes from both). Loopback is included only if it has MULTICAST. Linux."""
    found: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name, ip in _ipv4_addresses(sock):
            request = struct.pack(f"{_IFNAMSIZ}sH", name.encode(), 0).ljust(_IFREQ_SIZE, b"\0")
            try:
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
            except OSError:  # gone since SIOCGIFCONF
                continue
            flags = struct.unpack_from("H", reply, _IFNAMSIZ)[0]
            if flags & _IFF_UP and flags & _IFF_MULTICAST:
                found.append(Interface(name, ip))
    return found


def _ipv4_addresses(sock: socket.socket) -> list[tuple[str, str]]:
    """(interface name, address) for every IPv4 address (SIOCGIFCONF), growing the buffer until it fits."""
    size = 64 * _IFREQ_SIZE
    while True:
        buf = array.array("B", bytes(size))
        ifc = struct.pack("iP", size, buf.buffer_info()[0])
        used = struct.unpack("iP", fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, ifc))[0]
        if used < size:
            break
        size *= 2
    raw = buf.tobytes()[:used]
    out = []
    for off in range(0, used - _IFREQ_SIZE + 1, _IFREQ_SIZE):
        family = struct.unpack_from("H", raw, off + _IFNAMSIZ)[0]
        if family == socket.AF_INET:
            name = raw[off : off + _IFNAMSIZ].split(b"\0", 1)[0].decode(errors="replace")
            out.append((name, socket.inet_ntoa(raw[off + _IFNAMSIZ + 4 : off + _IFNAMSIZ + 8])))
    return out


# ---------------------------------------------------------------------------------------------- parsing


class _Reject(Exception):
    """Why a message (or one ProbeMatch in it) is ignored; internal to parsing."""


@dataclass
class _Scope:
    """Namespace declarations made on one element, chained to the enclosing element's."""

    parent: _Scope | None
    decls: dict[str, str] = field(default_factory=dict)

    def lookup(self, prefix: str) -> str | None:
        scope: _Scope | None = self
        while scope is not None:
            if prefix in scope.decls:
                return scope.decls[prefix]
            scope = scope.parent
        return None


class _Builder:
    """An ElementTree target that also remembers the namespaces in scope on each Types element, whose
    QName values (``dn:NetworkVideoTransmitter``) resolve against them; ElementTree forgets them."""

    def __init__(self) -> None:
        self._tree = TreeBuilder()
        self._pending: dict[str, str] = {}
        self._stack: list[_Scope] = [_Scope(None)]
        self.types_scopes: dict[Element, _Scope] = {}

    def start_ns(self, prefix: str, uri: str) -> None:
        self._pending[prefix] = uri

    def start(self, tag: str, attrs: dict[str, str]) -> Element:
        scope = self._stack[-1]
        if self._pending:
            scope, self._pending = _Scope(scope, self._pending), {}
        self._stack.append(scope)
        elem = self._tree.start(tag, attrs)
        if tag.endswith("}Types"):
            self.types_scopes[elem] = scope
        return elem

    def end(self, tag: str) -> Element:
        self._stack.pop()
        return self._tree.end(tag)

    def data(self, data: str) -> None:
        self._tree.data(data)

    def close(self) -> Element:
        return self._tree.close()


def parse(data: bytes, *, source_ip: str = "") -> Message | None:
    """A ProbeMatches, Hello or Bye from one datagram, or None (debug log with the reason) for anything
    else: garbage, truncated or oversized XML, DTDs (refused before any entity expands: a DTD in a
    discovery message is never legitimate), other namespaces, a missing EPR, absurd field sizes. A
    ProbeMatch that is bad on its own is dropped and the others kept. Pure; never raises."""
    if len(data) > MAX_DATAGRAM_BYTES:
        _log.debug("WS-Discovery: ignored a %d-byte datagram from %s (too big)", len(data), source_ip)
        return None
    builder = _Builder()
    try:
        parser: Any = _defused.DefusedXMLParser(
            target=builder, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        parser.feed(data)
        root: Element = parser.close()
    except (ParseError, ValueError, LookupError) as e:  # ValueError: defusedxml's refusals; Lookup: encoding
        _log.debug("WS-Discovery: ignored a datagram from %s: not acceptable XML (%s)", source_ip, _short(e))
        return None
    try:
        return _message(root, builder.types_scopes, source_ip)
    except _Reject as e:
        _log.debug("WS-Discovery: ignored a datagram from %s: %s", source_ip, e)
        return None


def _message(root: Element, scopes: dict[Element, _Scope], source_ip: str) -> Message:
    if root.tag != f"{{{_SOAP12}}}Envelope":
        raise _Reject("not a SOAP 1.2 envelope")
    body = root.find(f"{{{_SOAP12}}}Body")
    item = body[0] if body is not None and len(body) else None
    if item is None:
        raise _Reject("empty SOAP body")
    ns, _, kind = item.tag[1:].partition("}")
    if ns not in _DISCOVERY_NS:
        raise _Reject("not a WS-Discovery message")
    header = root.find(f"{{{_SOAP12}}}Header")
    message_id = _header(header, "MessageID")
    if kind == "Hello":
        return Hello(_device(item, ns, scopes, source_ip), message_id)
    if kind == "Bye":
        return Bye(_epr(item), message_id)
    if kind != "ProbeMatches":
        raise _Reject(f"a {kind[:40]!r}, not ProbeMatches/Hello/Bye")
    relates_to = _header(header, "RelatesTo")
    if relates_to is None:
        raise _Reject("ProbeMatches without RelatesTo")
    matches = item.findall(f"{{{ns}}}ProbeMatch")
    if len(matches) > _MAX_MATCHES:
        raise _Reject(f"{len(matches)} ProbeMatch elements")
    devices = []
    for match in matches:
        try:
            devices.append(_device(match, ns, scopes, source_ip))
        except _Reject as e:
            _log.debug("WS-Discovery: dropped a ProbeMatch from %s: %s", source_ip, e)
    return ProbeMatches(relates_to, message_id, tuple(devices))


def _header(header: Element | None, name: str) -> str | None:
    if header is None:
        return None
    for wsa in _ADDRESSING_NS:
        elem = header.find(f"{{{wsa}}}{name}")
        if elem is not None:
            return _uri(elem.text or "", name)
    return None


def _device(elem: Element, ns: str, scopes: dict[Element, _Scope], source_ip: str) -> Device:
    return Device(
        epr=_epr(elem),
        xaddrs=_uri_list(elem.find(f"{{{ns}}}XAddrs"), _MAX_XADDRS, "XAddrs"),
        types=_types(elem.find(f"{{{ns}}}Types"), scopes),
        scopes=_uri_list(elem.find(f"{{{ns}}}Scopes"), _MAX_SCOPES, "Scopes"),
        metadata_version=_metadata_version(elem.find(f"{{{ns}}}MetadataVersion")),
        source_ip=source_ip,
    )


def _epr(elem: Element) -> str:
    for wsa in _ADDRESSING_NS:
        address = elem.find(f"{{{wsa}}}EndpointReference/{{{wsa}}}Address")
        if address is not None:
            return _uri(address.text or "", "EPR")
    raise _Reject("no EndpointReference Address")


def _uri(text: str, what: str) -> str:
    value = text.strip()
    if not value:
        raise _Reject(f"empty {what}")
    if len(value) > _MAX_URI_CHARS:
        raise _Reject(f"{what} of {len(value)} characters")
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in value):
        raise _Reject(f"{what} with whitespace or control characters")
    return value


def _uri_list(elem: Element | None, limit: int, what: str) -> tuple[str, ...]:
    if elem is None:
        return ()
    items = (elem.text or "").split()
    if len(items) > limit:
        raise _Reject(f"{len(items)} {what}")
    return tuple(_uri(item, what) for item in items)


def _types(elem: Element | None, scopes: dict[Element, _Scope]) -> tuple[str, ...]:
    if elem is None:
        return ()
    qnames = (elem.text or "").split()
    if len(qnames) > _MAX_TYPES:
        raise _Reject(f"{len(qnames)} Types")
    scope = scopes.get(elem)
    out = []
    for qname in qnames:
        prefix, _, local = qname.rpartition(":")
        uri = scope.lookup(prefix) if scope is not None else None
        if uri and _NCNAME.fullmatch(local) and len(uri) <= _MAX_URI_CHARS:
            out.append(f"{{{uri}}}{local}")
        else:  # an undeclared prefix: that type is unknowable, the device may still be fine
            _log.debug("WS-Discovery: unresolvable type %r", qname[:80])
    return tuple(dict.fromkeys(out))


def _metadata_version(elem: Element | None) -> int:
    if elem is None:
        return 0  # required by the spec, omitted by some firmwares
    text = (elem.text or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > _MAX_METADATA_VERSION:
        raise _Reject("MetadataVersion is not an unsigned int")
    return int(text)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:120]}"


def _printable(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf"))


def _scheme(url: str) -> str:
    return url.partition(":")[0].lower()


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None
