"""An mDNS peer for the discovery tests, run with the venv's python inside a test network namespace.

It uses python-zeroconf directly (never edge's code), so it is an independent other side:

* ``announce --address IP [--address IP ...]`` — one ``_rtsp._tcp`` service per address, as a camera announces
  itself: instance ``Camera-<last octet>``, host ``camera-<last octet>.local.``, TXT ``path=/h264_aac``
  (``--port``, ``--path``, ``--type``, ``--prefix`` change them). Goodbye on exit.
* ``browse --instance NAME`` — resolves ``NAME._http._tcp.local.`` and prints its record as one JSON line
  (``{"event": "resolved", "name", "server", "port", "addresses", "properties"}``, TXT values exactly as
  received, a key without ``=`` as null), then keeps watching and prints ``{"event": "removed", ...}`` when
  the instance goes away (a goodbye, or its TTL running out), with whether its SRV record is still cached.
* ``hostile --address IP`` — every 0.3 s, multicasts malformed packets (junk, a lying header, a compression
  loop, a 60 KB datagram) and well-formed responses announcing nasty ``_rtsp._tcp`` instances (see
  ``HOSTILE_INSTANCES``), from ``IP``:5353. It never answers queries.
* ``sniff --interface IP`` — joins the mDNS group and prints one JSON line per packet heard: source address,
  whether it is a response, its section counts.

Each mode prints exactly ``READY`` once it is up, then JSON lines. Exits 0 on SIGTERM, SIGINT or EOF on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import random
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

from zeroconf import (
    DNSAddress,
    DNSOutgoing,
    DNSPointer,
    DNSService,
    DNSText,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.const import (
    _CLASS_IN,
    _CLASS_UNIQUE,
    _FLAGS_AA,
    _FLAGS_QR_RESPONSE,
    _TYPE_A,
    _TYPE_PTR,
    _TYPE_SRV,
    _TYPE_TXT,
)

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
RTSP = "_rtsp._tcp.local."
HTTP = "_http._tcp.local."

# The well-formed but nasty instances ``hostile`` announces, and what a careful browser makes of them.
# (instance label, SRV target, port, A address or None, raw TXT rdata)
HOSTILE_INSTANCES: list[tuple[str, str, int, str | None, bytes]] = [
    # Undecodable key and value, a key without "=", a length byte running past the end, the path twice.
    (
        "Bad-TXT",
        "bad-txt.local.",
        554,
        "10.231.0.40",
        b"\x05\xff\xfe=\x80x" + b"\x04flag" + b"\x0dPATH=/a b#c\x00d" + b"\x0cpath=/second" + b"\x40ab",
    ),
    ('Caméra 1 "quoted"', "unicode.local.", 8554, "10.231.0.41", b"\x0bpath=/live1"),
    ("Loopback", "loopback.local.", 554, "127.0.0.1", b"\x06path=/"),  # would have us connect to ourselves
    ("Zero-port", "zero.local.", 0, "10.231.0.42", b"\x06path=/"),
    ("No-address", "nowhere.local.", 554, None, b"\x06path=/"),  # an SRV whose host never resolves
    # 8 KB of TXT in 255-byte strings, and no path.
    (
        "Big-TXT",
        "big.local.",
        554,
        "10.231.0.43",
        b"".join(b"\xfe" + f"k{i:03d}=".encode() + b"v" * 249 for i in range(32)),
    ),
]
HOSTILE_EXPECTED_URLS = {
    "Bad-TXT": "rtsp://10.231.0.40:554/a%20b%23c%00d",
    'Caméra 1 "quoted"': "rtsp://10.231.0.41:8554/live1",
    "Big-TXT": "rtsp://10.231.0.43:554/",
}


def _ready() -> None:
    print("READY", flush=True)


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def _exit_on_signal_or_eof(on_eof: Callable[[], None]) -> None:
    """SIGTERM/SIGINT raise SystemExit in the main thread; stdin EOF calls ``on_eof`` from a reader thread."""

    def _stop(_signo: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def _watch() -> None:
        while sys.stdin.readline():
            pass
        on_eof()

    threading.Thread(target=_watch, name="stdin", daemon=True).start()


def _wait_until_stopped() -> None:
    done = threading.Event()
    _exit_on_signal_or_eof(done.set)
    while not done.wait(0.2):  # short waits: the SIGTERM handler runs between them
        pass


async def _register_all(zc: Zeroconf, infos: list[ServiceInfo]) -> None:
    # No probing (cooperating responders), all at once; READY only once the announcements have gone out.
    announcements = [await zc.async_register_service(info, cooperating_responders=True) for info in infos]
    await asyncio.gather(*announcements)


def announce(args: argparse.Namespace) -> int:
    zc = Zeroconf(interfaces=[args.interface or args.address[0]])
    infos = []
    for address in args.address:
        octet = address.rsplit(".", 1)[-1]
        infos.append(
            ServiceInfo(
                args.type,
                f"{args.prefix}-{octet}.{args.type}",
                port=args.port,
                properties={"path": args.path},
                server=f"{args.prefix.lower()}-{octet}.local.",
                parsed_addresses=[address],
            )
        )
    try:
        assert zc.loop is not None
        asyncio.run_coroutine_threadsafe(_register_all(zc, infos), zc.loop).result(10)
        _ready()
        _wait_until_stopped()
    finally:
        zc.unregister_all_services()  # the goodbye
        zc.close()
    return 0


def browse(args: argparse.Namespace) -> int:
    wanted = f"{args.instance}.{args.type}"
    events: queue.Queue[tuple[str, str]] = queue.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if name.lower() == wanted.lower():
            events.put((state_change.name, name))

    _exit_on_signal_or_eof(lambda: events.put(("eof", "")))
    zc = Zeroconf(interfaces=[args.interface])
    try:
        browser = ServiceBrowser(zc, args.type, handlers=[on_change])
        _ready()
        while True:
            try:
                kind, name = events.get(timeout=0.2)  # short waits: the SIGTERM handler runs between them
            except queue.Empty:
                continue
            if kind == "eof":
                break
            if kind in ("Added", "Updated"):
                info = zc.get_service_info(args.type, name, timeout=3000)
                if info is None:
                    _emit({"event": "unresolved", "name": name})
                    continue
                _emit(
                    {
                        "event": "resolved",
                        "name": info.name,
                        "server": info.server,
                        "port": info.port,
                        "addresses": info.parsed_addresses(),
                        "properties": {
                            k.decode(): None if v is None else v.decode() for k, v in info.properties.items()
                        },
                    }
                )
            elif kind == "Removed":
                cached = zc.cache.get_all_by_details(name, _TYPE_SRV, _CLASS_IN)
                _emit(
                    {"event": "removed", "name": name, "srv_cached": any(not r.is_expired(0) for r in cached)}
                )
        browser.cancel()
    finally:
        zc.close()
    return 0


def _junk_packets(rng: random.Random) -> list[bytes]:
    header = struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0)  # a response with one answer
    name_loop = header + b"\xc0\x0c" + struct.pack("!HHIH", 12, 1, 120, 2)
    return [
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1400))),
        struct.pack("!HHHHHH", 0, 0x8400, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF),  # counts and no body
        name_loop,  # an answer whose name points at itself
        b"\x00" * 5,  # shorter than a header
        header + bytes(rng.randrange(256) for _ in range(60_000)),
    ]


def _hostile_responses(ttl: int = 120) -> list[bytes]:
    unique = _CLASS_IN | _CLASS_UNIQUE
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    for label, target, port, address, txt in HOSTILE_INSTANCES:
        name = f"{label}.{RTSP}"
        out.add_answer_at_time(DNSPointer(RTSP, _TYPE_PTR, _CLASS_IN, ttl, name), 0)
        out.add_answer_at_time(DNSService(name, _TYPE_SRV, unique, ttl, 0, 0, port, target), 0)
        out.add_answer_at_time(DNSText(name, _TYPE_TXT, unique, ttl, txt), 0)
        if address is not None:
            out.add_answer_at_time(DNSAddress(target, _TYPE_A, unique, ttl, socket.inet_aton(address)), 0)
    # A PTR for the camera type that points outside it: not "<instance>._rtsp._tcp.local.".
    out.add_answer_at_time(DNSPointer(RTSP, _TYPE_PTR, _CLASS_IN, ttl, "evil.example."), 0)
    return out.packets()


def hostile(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(args.address))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    sock.bind((args.address, MDNS_PORT))  # responses come from port 5353
    rng = random.Random(0xBAD)
    done = threading.Event()
    _exit_on_signal_or_eof(done.set)
    first = True
    try:
        while not done.is_set():
            for packet in _junk_packets(rng) + _hostile_responses():
                sock.sendto(packet, (MDNS_GROUP, MDNS_PORT))
            if first:
                _ready()
                first = False
            done.wait(0.3)
    finally:
        sock.close()
    return 0


def sniff(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("", MDNS_PORT))
    mreq = socket.inet_aton(MDNS_GROUP) + socket.inet_aton(args.interface)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    sock.settimeout(0.2)  # short waits: the SIGTERM handler runs between them
    done = threading.Event()
    _exit_on_signal_or_eof(done.set)
    _ready()
    try:
        while not done.is_set():
            try:
                data, (src, _port) = sock.recvfrom(65535)
            except TimeoutError:
                continue
            if len(data) < 12:
                _emit({"src": src, "short": True})
                continue
            _id, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
            _emit({"src": src, "response": bool(flags & 0x8000), "qd": qd, "an": an, "ns": ns, "ar": ar})
    finally:
        sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("announce")
    a.add_argument("--address", action="append", required=True)
    a.add_argument("--interface", help="the address to send from (default: the first --address)")
    a.add_argument("--port", type=int, default=8554)
    a.add_argument("--path", default="/h264_aac")
    a.add_argument("--type", default=RTSP)
    a.add_argument("--prefix", default="Camera")
    b = sub.add_parser("browse")
    b.add_argument("--instance", required=True)
    b.add_argument("--type", default=HTTP)
    b.add_argument("--interface", default="10.231.0.2")
    h = sub.add_parser("hostile")
    h.add_argument("--address", required=True)
    s = sub.add_parser("sniff")
    s.add_argument("--interface", default="10.231.0.2")
    args = ap.parse_args(argv)
    modes = {"announce": announce, "browse": browse, "hostile": hostile, "sniff": sniff}
    return modes[args.mode](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
