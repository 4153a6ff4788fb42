"""WS-Discovery client for ONVIF cameras: multicast and directed Probes, and a Hello/Bye listener.

ONVIF devices speak WS-Discovery over SOAP-over-UDP: a Probe goes to 239.255.255.250:3702 (or straight to one
device's port 3702) and each matching device answers with a unicast ProbeMatches to the probe's source address
and port. Devices also multicast a Hello when they join the network and a Bye when they leave.

We wrote this instead of using the ``wsdiscovery`` package because wsdiscovery 2.1.2 skips 127.x interfaces,
never reads the replies to directed (unicast) probes, its IPv6 thread throws on an IPv4 target, and it is
thread-based; here everything runs on the asyncio loop.

This module owns the sockets, the interfaces and the timing; the messages themselves are built and parsed,
without I/O, in :mod:`edge.discovery.wsd_messages`, whose public names are re-exported here. A bad reply
costs only itself: the other devices found in the same probe are unaffected. Only IPv4.
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
import socket
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from edge.discovery.wsd_messages import (
    DEVICE,
    MAX_DATAGRAM_BYTES,
    NVT,
    Bye,
    Device,
    Hello,
    Message,
    ProbeMatches,
    build_probe,
    merge,
    parse,
)
from edge.errors import Malformed, SourceError

__all__ = [
    "DEVICE",
    "GROUP",
    "MAX_DATAGRAM_BYTES",
    "MAX_DEVICES",
    "NVT",
    "PORT",
    "Announcements",
    "Bye",
    "Device",
    "Hello",
    "Interface",
    "Message",
    "ProbeMatches",
    "build_probe",
    "lan_interfaces",
    "parse",
    "probe",
]

_log = logging.getLogger(__name__)
_P = TypeVar("_P", bound=asyncio.DatagramProtocol)

GROUP = "239.255.255.250"
PORT = 3702

MAX_DEVICES = 1024  # distinct EPRs one probe keeps: a flood of fake devices can't eat memory
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


@dataclass(frozen=True)
class Interface:
    name: str
    ip: str


# --------------------------------------------------------------------------------------------------- probe


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
                self.devices[device.epr] = merge(old, device)
            elif len(self.devices) >= MAX_DEVICES:
                self.over_cap += 1
            else:
                self.devices[device.epr] = device
                if self._on_found is not None:
                    self._on_found(device)


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
