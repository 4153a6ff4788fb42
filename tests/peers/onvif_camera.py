"""A faithful simulated ONVIF camera farm: N cameras in one process, real WS-Discovery and SOAP on the wire.

Two halves live in this file:

* ``OnvifPeer``, the launcher the tests import (with ``CameraSpec``, ``Profile`` and ``MANUFACTURERS``,
  re-exported from onvif_spec.py and onvif_shapes.py), and
* the farm process, run as ``python tests/peers/onvif_camera.py --spec FILE --group-ip IP --max-delay S`` with
  the venv's python (asyncio + aiohttp + defusedxml): it opens the sockets and starts every camera. It prints
  exactly ``READY`` on stdout once every camera listens, logs to stderr, and on SIGTERM/SIGINT (or EOF on
  stdin with ``--watch-stdin``) multicasts a Bye per camera and exits 0.

What each camera does, modelled on the ONVIF Core spec, Profile S/T, WS-Discovery (2005/04) and SOAP-over-UDP,
and on captures of real cameras, and where it lives:

* WS-Discovery (onvif_discovery.py): a farm socket bound to 239.255.255.250:3702 (joined on ``--group-ip``)
  takes multicast Probes; each camera has its own socket on (ip, 3702) for directed Probes and for sending. A
  matching Probe gets a unicast ProbeMatches (after a random delay in [0, max_delay] when multicast) from the
  camera's address. Probes are parsed with defusedxml (no DTDs, no entities); anything else is ignored with a
  debug log.
* HTTP/SOAP 1.2 on (ip, port) (onvif_http.py, operations in onvif_ops.py): device service, Media (ver10)
  and/or Media2 (ver20), a JPEG snapshot. Requests are dispatched on the SOAP body's first child (namespace +
  local name). Auth (onvif_auth.py): WS-UsernameToken PasswordDigest checked against the camera's clock (real
  clock + ``clock_offset_s``, ±5 s) and/or HTTP Digest (RFC 7616, MD5, qop=auth).
* Makers differ the way real ones do (onvif_shapes.py): namespace prefixes, header order, XAddrs with an IPv6
  link-local address, extra scopes, repeated UDP replies (SOAP-over-UDP UNICAST_UDP_REPEAT), snapshot paths,
  time zones.
* Misbehaviours (``behaviour``) make the hostile and broken cameras a client must survive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve()
if not __package__:  # run as a script, as the launcher does: make ``tests.peers`` importable
    sys.path.insert(0, str(HERE.parents[2]))

from tests.peers.onvif_discovery import Camera, Unparsable, parse_discovery  # noqa: E402
from tests.peers.onvif_http import start_http  # noqa: E402
from tests.peers.onvif_shapes import MANUFACTURERS, MULTICAST_GROUP, WSD_PORT  # noqa: E402
from tests.peers.onvif_spec import CameraSpec, Profile, check_safe_address, xaddr_of  # noqa: E402

__all__ = ["MANUFACTURERS", "CameraSpec", "OnvifPeer", "Profile", "main"]

EXIT_BIND_FAILED = 3

log = logging.getLogger("onvif_camera")


# ----------------------------------------------------------------------------------------------------------
# Test side: the launcher.
# ----------------------------------------------------------------------------------------------------------


class OnvifPeer:
    """Runs the farm in a subprocess (``prefix`` e.g. ``lan.cmd(lan.cams, [])`` to run it in a namespace)."""

    def __init__(
        self,
        cameras: list[CameraSpec],
        *,
        prefix: Sequence[str] = (),
        group_ip: str = "10.231.0.2",
        log: IO[str] | None = None,
        max_delay_s: float = 0.5,
    ) -> None:
        ips = [c.ip for c in cameras]
        for ip in [*ips, group_ip]:
            check_safe_address(ip)
        if len(set(ips)) != len(ips):
            raise ValueError(f"two cameras share an address: {ips}")
        self.cameras = list(cameras)
        self.prefix = tuple(prefix)
        self.group_ip = group_ip
        self.max_delay_s = max_delay_s
        self._log = log
        self._proc: subprocess.Popen[str] | None = None
        self._spec_path: Path | None = None
        self.exit_code: int | None = None  # of the last process stopped

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self.running else None

    def xaddr(self, cam: CameraSpec) -> str:
        return xaddr_of(cam)

    def start(self, timeout: float = 20.0) -> None:
        """Returns once every camera listens (each has multicast its Hello); raises if the farm fails."""
        if self.running:
            return
        fd, name = tempfile.mkstemp(prefix="onvif-farm-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"cameras": [dataclasses.asdict(c) for c in self.cameras]}, f)
        self._spec_path = Path(name)
        cmd = [
            *self.prefix, sys.executable, str(HERE), "--spec", name, "--group-ip", self.group_ip,
            "--max-delay", str(self.max_delay_s), "--watch-stdin",
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log is not None else None,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                break
            if proc.poll() is not None:
                break
        if line.strip() == "READY":
            self._proc = proc
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        code = _reap(proc)
        self._remove_spec()
        raise RuntimeError(f"ONVIF farm failed to start: exit code {code}, stdout {line!r}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM: each camera multicasts a Bye, then the farm exits (SIGKILL after ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
            self.exit_code = _reap(proc)
        self._remove_spec()

    def _remove_spec(self) -> None:
        if self._spec_path is not None:
            self._spec_path.unlink(missing_ok=True)
            self._spec_path = None

    def __enter__(self) -> OnvifPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reap(proc: subprocess.Popen[str]) -> int:
    code = proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
    return code


# ----------------------------------------------------------------------------------------------------------
# The farm process.
# ----------------------------------------------------------------------------------------------------------


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, name: str, cams: list[Camera], *, multicast: bool) -> None:
        self.name = name
        self.cams = cams
        self.multicast = multicast

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = parse_discovery(data)
        except Unparsable as e:
            log.debug("%s: ignored %d-byte datagram from %s: %s", self.name, len(data), addr, e)
            return
        for cam in self.cams:
            try:
                cam.on_discovery(msg, addr, multicast=self.multicast)
            except Exception:
                log.exception("%s: cannot answer %s", cam.spec.ip, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: %s", self.name, exc)


def _group_socket(group_ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((MULTICAST_GROUP, WSD_PORT))
    mreq = struct.pack("4s4s", socket.inet_aton(MULTICAST_GROUP), socket.inet_aton(group_ip))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    s.setblocking(False)
    return s


def _camera_socket(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, WSD_PORT))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setblocking(False)
    return s


async def _serve(args: argparse.Namespace) -> int:
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    specs = [CameraSpec(**c) for c in spec["cameras"]]
    try:
        for ip in [*(s.ip for s in specs), args.group_ip]:
            check_safe_address(ip)
    except ValueError as e:
        log.error("%s", e)
        return 2
    instance_id = int(time.time())
    cams = [Camera(s, instance_id, args.max_delay) for s in specs]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.watch_stdin:

        def on_stdin() -> None:
            try:
                data = os.read(sys.stdin.fileno(), 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(sys.stdin.fileno())
                log.info("stdin closed: parent gone, stopping")
                stop.set()

        loop.add_reader(sys.stdin.fileno(), on_stdin)

    transports: list[asyncio.DatagramTransport] = []
    cleanups: list[Callable[[], Any]] = []
    try:
        group, _ = await loop.create_datagram_endpoint(
            functools.partial(_Udp, "multicast", cams, multicast=True), sock=_group_socket(args.group_ip)
        )
        transports.append(group)
        for cam in cams:
            own, _ = await loop.create_datagram_endpoint(
                functools.partial(_Udp, cam.spec.ip, [cam], multicast=False), sock=_camera_socket(cam.spec.ip)
            )
            cam.udp = own
            transports.append(own)
            cleanups.append(await start_http(cam))
    except OSError as e:
        log.error("cannot listen: %s", e)
        return EXIT_BIND_FAILED
    for cam in cams:
        cam.multicast(cam.hello())
    log.info("%d cameras listening: %s", len(cams), ", ".join(f"{c.spec.ip}:{c.spec.port}" for c in cams))
    print("READY", flush=True)
    await stop.wait()
    for cam in cams:
        cam.multicast(cam.bye())
    await asyncio.sleep(0.05)  # let the Byes leave before the sockets close
    for cleanup in cleanups:
        await cleanup()
    for t in transports:
        t.close()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--spec", required=True, type=Path, help='JSON {"cameras": [CameraSpec as dict, ...]}')
    ap.add_argument("--group-ip", required=True, help="interface address to join 239.255.255.250 on")
    ap.add_argument("--max-delay", type=float, default=0.5, help="ProbeMatch random delay bound, seconds")
    ap.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF (parent died)")
    args = ap.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="onvif_camera[%(process)d] %(levelname)s %(message)s"
    )
    log.setLevel(logging.DEBUG)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
