"""A private LAN for the discovery tests: two network namespaces joined by a veth pair.

``box`` is the appliance (one LAN interface, ``lan0``, 10.231.0.1/24); ``cams`` is the shop's camera network
(``eth0``, 10.231.0.2/24 plus one address per simulated camera). Multicast (WS-Discovery, mDNS) crosses the
veth like it crosses a switch, and nothing can leave: neither namespace has a route anywhere else. Both
loopbacks are up, so a process in a namespace can still talk to itself.

Processes run inside with ``Lan.cmd(ns, argv)`` (an ``ip netns exec`` prefix). Needs root (CI runs as root)
and iproute2 (``make test`` installs it); a missing one fails loudly.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

SUBNET = "10.231.0"
BOX_IP = f"{SUBNET}.1"
CAMS_IP = f"{SUBNET}.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Lan:
    box: str
    cams: str
    camera_ips: list[str]

    @classmethod
    def create(cls, n_camera_ips: int = 40) -> Lan:
        tag = f"{os.getpid() % 100000}"
        box, cams = f"edge-box-{tag}", f"edge-cams-{tag}"
        for ns in (box, cams):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # a previous run that died
            _ip("netns", "add", ns)
        lan = cls(box, cams, [f"{SUBNET}.{10 + i}" for i in range(n_camera_ips)])
        try:
            _ip("link", "add", "lan0", "netns", box, "type", "veth", "peer", "name", "eth0", "netns", cams)
            for ns, dev, ip in ((box, "lan0", BOX_IP), (cams, "eth0", CAMS_IP)):
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                # The LAN's only multicast route: without a default route a group send needs one.
                _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
            for ip in lan.camera_ips:
                _ip("-n", cams, "addr", "add", f"{ip}/24", "dev", "eth0")
        except BaseException:
            lan.destroy()
            raise
        return lan

    def destroy(self) -> None:
        for ns in (self.box, self.cams):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def cmd(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``ns`` (``lan.box`` or ``lan.cams``)."""
        return ["ip", "netns", "exec", ns, *argv]
