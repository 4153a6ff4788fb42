"""mDNS: the box's announcement and the camera browse, across the test LAN (two network namespaces).

Edge code runs in ``lan.box`` and the other side (tests/peers/mdns_peer.py, plain python-zeroconf) in
``lan.cams``, each as a subprocess: multicast never touches the host's own interfaces. The pure parts
(names, URLs, argument checks) run in-process and send nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import edge
from edge.discovery import mdns
from edge.errors import ConfigError
from tests.lan import BOX_IP, CAMS_IP, Lan
from tests.peers.mdns_peer import HOSTILE_EXPECTED_URLS, HOSTILE_INSTANCES
from tests.peers.rtsp_server import RtspPeer

ROOT = Path(__file__).resolve().parent.parent
PEER = str(ROOT / "tests" / "peers" / "mdns_peer.py")

# Edge's side, run with the venv's python inside lan.box.
ADVERTISE = """
import asyncio, sys
from edge.discovery.mdns import Advertiser

async def main():
    interfaces = sys.argv[4].split(",") if sys.argv[4:] else None
    adv = Advertiser(int(sys.argv[1]), name=sys.argv[2], path=sys.argv[3], interfaces=interfaces)
    await adv.start()
    print("READY", adv.instance_name, adv.hostname, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "close" or EOF
    await adv.close()
    print("CLOSED", flush=True)

asyncio.run(main())
"""

BROWSE = """
import asyncio, json, logging, sys, time
from edge.discovery import mdns, probe

# Whatever the LAN sends, nothing may go wrong loudly: an exception in a zeroconf callback surfaces only
# as an asyncio "Exception in callback" log record (and the rest of that packet is lost).
problems = []
class Collect(logging.Handler):
    def emit(self, record):
        problems.append(record.getMessage())
logging.getLogger().addHandler(Collect(logging.WARNING))

def found(s):
    print("FOUND", json.dumps([s.instance, time.monotonic() - start]), flush=True)

start = time.monotonic()
services = asyncio.run(mdns.browse(float(sys.argv[1]), on_found=found))
elapsed = time.monotonic() - start
rows = []
for s in services:
    row = {"instance": s.instance, "type": s.type, "server": s.server, "addresses": list(s.addresses),
           "port": s.port, "properties": s.properties, "url": s.url}
    if sys.argv[2:] == ["probe"] and s.url:
        p = probe.probe_stream(s.url, timeout_s=5)
        row["probe"] = [p.ok, p.error, p.video_codec, p.width, p.height, p.audio_codec]
    rows.append(row)
print("RESULT", json.dumps({"elapsed_s": elapsed, "services": rows, "problems": problems}), flush=True)
"""


class Proc:
    """A subprocess whose stdout lines arrive on a queue, so a test can wait for one with a deadline."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _fail(self, why: str) -> None:
        self._stderr.seek(0)
        pytest.fail(f"{why}; stderr:\n{self._stderr.read()[-3000:]}")

    def line(self, timeout_s: float) -> str:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            self._fail(f"no output within {timeout_s} s")
            raise  # not reached: pytest.fail raises
        if line is None:
            self._fail(f"exited ({self.proc.wait()}) before the expected output")
            raise AssertionError  # not reached
        return line

    def until(self, match: Callable[[str], bool], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.line(max(0.01, deadline - time.monotonic()))
            if match(line):
                return line

    def json_event(self, event: str, timeout_s: float) -> dict[str, Any]:
        line = self.until(lambda ln: ln.startswith("{") and json.loads(ln).get("event") == event, timeout_s)
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def lines_so_far(self) -> list[str]:
        out = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return out
            if line is not None:
                out.append(line)

    def stop(self) -> int:
        """EOF on stdin (every script here exits on it), then SIGTERM, then SIGKILL."""
        try:
            if self.proc.poll() is None:
                try:
                    assert self.proc.stdin is not None
                    self.proc.stdin.close()
                    return self.proc.wait(5)
                except (subprocess.TimeoutExpired, BrokenPipeError):
                    self.proc.terminate()
                    try:
                        return self.proc.wait(3)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
            return self.proc.wait()
        finally:
            self._stderr.close()


@contextmanager
def running(argv: Sequence[str], *, ready_timeout_s: float = 10.0) -> Iterator[Proc]:
    """Start ``argv``, wait for its ``READY`` line, stop it afterwards."""
    proc = Proc(argv)
    try:
        proc.until(lambda ln: ln.startswith("READY"), ready_timeout_s)
        yield proc
    finally:
        proc.stop()


def octet(ip: str) -> str:
    return ip.rsplit(".", 1)[1]


def peer(lan: Lan, *args: str) -> list[str]:
    return lan.cmd(lan.cams, [sys.executable, PEER, *args])


def box_browse(lan: Lan, timeout_s: float, *extra: str) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    """edge's browse() run in lan.box: its result, and what on_found saw (instance, seconds in)."""
    proc = Proc(lan.cmd(lan.box, [sys.executable, "-c", BROWSE, str(timeout_s), *extra]))
    try:
        found: list[tuple[str, float]] = []
        while True:
            line = proc.line(timeout_s + 15)
            if line.startswith("FOUND "):
                instance, after_s = json.loads(line.removeprefix("FOUND "))
                found.append((instance, after_s))
            elif line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
                assert result["problems"] == []
                return result, found
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------------------------
# Pure parts: no packets.
# ---------------------------------------------------------------------------------------------------------


def test_default_name_is_stable_short_and_valid() -> None:
    a = mdns.default_name(b"\x01" * 32)
    assert a == mdns.default_name(b"\x01" * 32)
    assert a != mdns.default_name(b"\x02" * 32)
    assert a.startswith("edge-")
    assert len(a) == 9
    assert all(c in "0123456789abcdef" for c in a[5:])
    mdns.Advertiser(80, name=a)  # accepted as a name


@pytest.mark.parametrize(
    "name", ["", "Edge-1a2b", "edge_1a2b", "edge.1a2b", "-edge", "edge-", "édge", "edge 1", "a" * 64]
)
def test_advertiser_refuses_a_bad_name(name: str) -> None:
    with pytest.raises(ConfigError, match="mDNS name"):
        mdns.Advertiser(8080, name=name)


def test_advertiser_names_and_other_arguments() -> None:
    adv = mdns.Advertiser(8080, name="edge-1a2b")
    assert adv.instance_name == "edge-1a2b"
    assert adv.hostname == "edge-1a2b.local."
    mdns.Advertiser(8080, name="a" * 63)
    mdns.Advertiser(8080, name="7")
    for kwargs in ({"port": 0}, {"port": 70000}, {"path": "pair"}, {"version": "x" * 300}):
        args: dict[str, Any] = {"port": 8080, "name": "edge-1a2b", **kwargs}
        with pytest.raises(ConfigError):
            mdns.Advertiser(**args)
    with pytest.raises(ConfigError, match="IPv4"):
        mdns.Advertiser(8080, name="edge-1a2b", interfaces=["lan0"])


def test_browse_refuses_a_bad_interface_before_opening_anything() -> None:
    with pytest.raises(ConfigError, match="IPv4"):
        asyncio.run(mdns.browse(0.1, interfaces=["fe80::1"]))


def _service(
    type_: str = mdns.RTSP_TYPE, addresses: tuple[str, ...] = ("10.0.0.5",), **props: str
) -> mdns.Service:
    return mdns.Service("Cam", type_, "cam.local.", addresses, 554, dict(props))


def test_service_url() -> None:
    assert _service(path="/h264_aac").url == "rtsp://10.0.0.5:554/h264_aac"
    assert _service().url == "rtsp://10.0.0.5:554/"
    assert _service(path="live/1").url == "rtsp://10.0.0.5:554/live/1"
    assert _service(path="/live?channel=1&subtype=0").url == "rtsp://10.0.0.5:554/live?channel=1&subtype=0"
    assert _service(path="/a b#c").url == "rtsp://10.0.0.5:554/a%20b%23c"
    assert _service(mdns.RTSPS_TYPE, path="/x").url == "rtsps://10.0.0.5:554/x"
    assert _service(addresses=("fd00::5", "10.0.0.6")).url == "rtsp://10.0.0.6:554/"
    assert _service(addresses=("fd00::5",)).url is None  # IPv4 only
    assert _service(mdns.AXIS_TYPE).url is None  # its port is the camera's web server, not a stream
    hash(_service(path="/x"))  # frozen and usable in a set, dict field notwithstanding


# ---------------------------------------------------------------------------------------------------------
# On the test LAN.
# ---------------------------------------------------------------------------------------------------------


def test_advertiser_is_resolvable_from_the_lan_and_says_goodbye(lan: Lan) -> None:
    with running(peer(lan, "browse", "--instance", "edge-1a2b", "--interface", CAMS_IP)) as browser:
        box = Proc(lan.cmd(lan.box, [sys.executable, "-c", ADVERTISE, "8080", "edge-1a2b", "/pair"]))
        try:
            assert box.until(lambda ln: ln.startswith("READY"), 15) == "READY edge-1a2b edge-1a2b.local."
            record = browser.json_event("resolved", 10)
            assert record == {
                "event": "resolved",
                "name": "edge-1a2b._http._tcp.local.",
                "server": "edge-1a2b.local.",
                "port": 8080,
                "addresses": [BOX_IP],
                "properties": {"path": "/pair", "version": edge.__version__},  # exactly these
            }
            box.send("close\n")
            assert box.line(10) == "CLOSED"
            closed_at = time.monotonic()
            removed = browser.json_event("removed", 5)
            # A goodbye has TTL 0, which the browser honours 1 s later (RFC 6762 §10.1); without it the
            # record would linger for its 75-minute TTL.
            assert time.monotonic() - closed_at < 3
            assert removed == {"event": "removed", "name": "edge-1a2b._http._tcp.local.", "srv_cached": False}
        finally:
            box.stop()


def test_a_second_box_with_the_same_name_gets_another_instance_name(lan: Lan) -> None:
    """Two boxes on one LAN (the other one in lan.cams): the later one probes, hears the name taken, and
    announces itself as ``<name>-2``; its host name stays."""
    first = ["8080", "edge-dup0", "/", CAMS_IP]
    with running(lan.cmd(lan.cams, [sys.executable, "-c", ADVERTISE, *first]), ready_timeout_s=15):
        second = Proc(lan.cmd(lan.box, [sys.executable, "-c", ADVERTISE, "8081", "edge-dup0", "/"]))
        try:
            assert second.until(lambda ln: ln.startswith("READY"), 15) == "READY edge-dup0-2 edge-dup0.local."
        finally:
            assert second.stop() == 0


def test_an_interface_the_box_does_not_have_is_a_clear_error(lan: Lan) -> None:
    script = """
import asyncio
from edge.discovery import mdns
from edge.errors import Error
async def main():
    for attempt in (mdns.browse(0.5, interfaces=["10.231.0.77"]),
                    mdns.Advertiser(8080, name="edge-x", interfaces=["10.231.0.77"]).start()):
        try:
            await attempt
        except Error as e:
            print(e.kind, e, flush=True)
asyncio.run(main())
"""
    out = subprocess.run(lan.cmd(lan.box, [sys.executable, "-c", script]), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    expected = "unavailable mDNS cannot listen on interface 10.231.0.77: No such device"
    assert out.stdout.splitlines() == [expected, expected]  # browse, then the Advertiser


def test_browse_finds_announced_cameras(lan: Lan) -> None:
    ips, secure_ip = lan.camera_ips[:3], lan.camera_ips[3]
    rtsp_args = [a for ip in ips for a in ("--address", ip)]
    rtsps_args = ["--address", secure_ip, "--type", mdns.RTSPS_TYPE, "--port", "322", "--path", "/secure"]
    with (
        running(peer(lan, "announce", *rtsp_args, "--port", "8554", "--path", "/h264_aac")),
        running(peer(lan, "announce", *rtsps_args, "--prefix", "Secure")),
    ):
        result, found = box_browse(lan, 2.0)
    services = {s["instance"]: s for s in result["services"]}
    assert set(services) == {f"Camera-{octet(ip)}" for ip in ips} | {f"Secure-{octet(secure_ip)}"}
    for ip in ips:
        assert services[f"Camera-{octet(ip)}"] == {
            "instance": f"Camera-{octet(ip)}",
            "type": "_rtsp._tcp.local.",
            "server": f"camera-{octet(ip)}.local.",
            "addresses": [ip],
            "port": 8554,
            "properties": {"path": "/h264_aac"},
            "url": f"rtsp://{ip}:8554/h264_aac",
        }
    assert services[f"Secure-{octet(secure_ip)}"]["url"] == f"rtsps://{secure_ip}:322/secure"
    assert sorted(instance for instance, _after_s in found) == sorted(services)  # on_found: once per instance
    assert 2.0 <= result["elapsed_s"] < 4.0  # browse listens for its whole window, then stops


def test_browse_next_to_the_advertiser(lan: Lan) -> None:
    """The daemon announces the pairing page all the time, so discovery browses next to an Advertiser: two
    sockets on the box's port 5353. A unicast reply would reach only one of them (zeroconf's default first
    question asks for one); browse asks for multicast replies and hears the cameras at once."""
    ips = lan.camera_ips[8:11]
    advertiser = lan.cmd(lan.box, [sys.executable, "-c", ADVERTISE, "8080", "edge-next", "/"])
    with (
        running(advertiser, ready_timeout_s=15),
        running(peer(lan, "announce", *[a for ip in ips for a in ("--address", ip)])),
    ):
        time.sleep(1.0)  # a responder delays answers to a record it multicast within the last second
        result, found = box_browse(lan, 0.9)
    assert sorted(s["instance"] for s in result["services"]) == sorted(f"Camera-{octet(ip)}" for ip in ips)
    assert max(after_s for _instance, after_s in found) < 0.9


def test_browse_shrugs_off_hostile_traffic(lan: Lan) -> None:
    """Junk datagrams, a lying header, a compression loop, 60 KB of noise, and well-formed records with
    undecodable TXT, a loopback address, port 0, an unresolvable host, a PTR out of its type: the real camera
    is still found, the odd-but-usable instances come out sanitised, the unusable ones not at all."""
    camera = lan.camera_ips[5]
    with (
        running(peer(lan, "hostile", "--address", lan.camera_ips[4])),
        running(peer(lan, "announce", "--address", camera)),
    ):
        result, _found = box_browse(lan, 2.0)
    urls = {s["instance"]: s["url"] for s in result["services"]}
    assert urls == {f"Camera-{octet(camera)}": f"rtsp://{camera}:8554/h264_aac", **HOSTILE_EXPECTED_URLS}
    bad_txt = next(s for s in result["services"] if s["instance"] == "Bad-TXT")
    # RFC 6763: keys are case-insensitive and the first occurrence wins; a key alone has an empty value.
    assert bad_txt["properties"]["path"] == "/a b#c\x00d"
    assert bad_txt["properties"]["flag"] == ""
    assert "\ufffd\ufffd" in bad_txt["properties"]  # undecodable bytes replaced, not fatal
    big = next(s for s in result["services"] if s["instance"] == "Big-TXT")
    assert len(big["properties"]) == 32
    assert {i[0] for i in HOSTILE_INSTANCES} - set(urls) == {"Loopback", "Zero-port", "No-address"}


def test_browse_only_asks(lan: Lan) -> None:
    """browse() sends queries and never a response: it announces nothing, not even when asked."""
    with (
        running(peer(lan, "announce", "--address", lan.camera_ips[6])),
        running(peer(lan, "sniff", "--interface", CAMS_IP)) as sniffer,
    ):
        result, _ = box_browse(lan, 1.5)
        time.sleep(0.3)
        heard = [json.loads(ln) for ln in sniffer.lines_so_far() if ln.startswith("{")]
    assert result["services"], "the browse found the camera, so it did talk to the LAN"
    from_box = [p for p in heard if p["src"] == BOX_IP]
    assert from_box, "the sniffer heard the box's queries"
    assert all(p["response"] is False and p["qd"] > 0 for p in from_box), from_box


def test_an_announced_camera_plays(lan: Lan, lan_rtsp: RtspPeer) -> None:
    """End to end from the box: browse finds the camera's announcement, the URL it builds plays."""
    ip = lan.camera_ips[7]
    with running(peer(lan, "announce", "--address", ip, "--port", str(lan_rtsp.port), "--path", "/h264_aac")):
        result, _ = box_browse(lan, 1.5, "probe")
    (service,) = result["services"]
    assert service["url"] == f"rtsp://{ip}:{lan_rtsp.port}/h264_aac"
    assert service["probe"] == [True, None, "h264", 640, 360, "aac"]
