"""The whole chain for end-to-end tests: the reference hub (in this process, on its own event-loop thread,
real TLS 1.3 on 127.0.0.1), and a real box — `edge cameras add`, `edge consent set`, `edge pair`, `edge run`
as subprocesses — recording the real GStreamer RTSP server.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np

from edge.hub.media import MediaHub
from edge.hub.requests import RequestResult, make_request
from edge.hub.server import RunningHub
from edge.hub.state import HubState
from edge.uplink.enroll import make_code
from tests.harness import Daemon, edge_cli, write_config
from tests.hubworld import SHOP, start_hub
from tests.peers.media import dominant_colour, nearest_clip
from tests.peers.rtsp_server import RtspPeer

T = TypeVar("T")


class HubThread:
    """The reference hub on its own loop, so blocking test code (subprocesses, polling) never stalls it."""

    def __init__(self, data: Path) -> None:
        self.state = HubState.create(
            data, hub_id="met-hub-1", agency="Metropolitan Police", now_utc_ns=time.time_ns()
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hub-loop", daemon=True)
        self._thread.start()
        self.hub: RunningHub = self.call(self._start())

    async def _start(self) -> RunningHub:
        # keep_sealed: the hub also keeps each stream as it crossed the wire, to show what a relay would see.
        return await start_hub(self.state, media=MediaHub(self.state, keep_sealed=True))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, device_id: str, cameras: Sequence[int], mode: str = "live", **kw: Any) -> RequestResult:
        kw.setdefault("max_dur", 60)
        args: dict[str, Any] = dict(
            case="2026/0042", reason="crime_in_progress", sub="PC 4512",
            incident={"lat": SHOP[0], "lon": SHOP[1], "kind": "robbery"},
        )  # fmt: skip
        args |= kw
        coro = make_request(
            self.state,
            self.hub.control,
            self.hub.media,
            device_id=device_id,
            cameras=cameras,
            mode=mode,
            **args,
        )
        return self.call(coro)

    def close(self) -> None:
        self.call(self.hub.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class Box:
    cfg: Path
    data: Path
    daemon: Daemon
    device_id: str
    daemon_started: float  # time.time() when the daemon was recording every camera

    def cli(self, *args: str, check: bool = True) -> Any:
        return edge_cli(self.cfg, *args, check=check)

    def audit(self, *types: str) -> list[dict[str, Any]]:
        args = ["audit", "show", "--json"] + [a for t in types for a in ("--type", t)]
        return [json.loads(line) for line in self.cli(*args).stdout.splitlines() if line.strip()]


def make_box(
    tmp: Path,
    hub: HubThread,
    rtsp: RtspPeer,
    mounts: Sequence[str],
    *,
    consent: str = "integrated",
    **uplink: Any,
) -> Box:
    """A box recording ``mounts`` (cameras 1, 2, … at the shop), each at ``consent``, paired with the hub, its
    daemon running, its control channel up."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = write_config(tmp / "edge.toml", tmp / "data", uplink={"recorded_rate_mbit": 200.0, **uplink})
    for i, mount in enumerate(mounts, 1):
        edge_cli(cfg, "cameras", "add", rtsp.url(mount), "--name", mount)
        edge_cli(
            cfg, "cameras", "set", str(i), "--lat", str(SHOP[0]), "--lon", str(SHOP[1]), "--location", "door"
        )
        edge_cli(cfg, "consent", "set", str(i), "--level", consent)
    token = hub.state.issue_token(ttl_s=600, now_utc_ns=time.time_ns())
    code = make_code(hub.hub.url, token, hub.state.root_fingerprint)
    edge_cli(cfg, "pair", code, "--confirm-fingerprint", hub.state.keyset_fingerprint())
    device_id = json.loads(edge_cli(cfg, "identity", "--json").stdout)["device_id"]
    daemon = Daemon(cfg, tmp / "data", tmp / "daemon.log").start(wait_recording=len(mounts))
    hub.call(hub.hub.control.wait_connected(device_id, timeout=20))
    return Box(cfg, tmp / "data", daemon, device_id, time.time())


def decoded(video: Path) -> list[tuple[float, str | None]]:
    """(time, nearest test clip by background colour) of every decoded frame of a received video."""
    out = []
    with av.open(io.BytesIO(video.read_bytes()), "r") as c:
        for f in c.decode(video=0):
            img = f.to_ndarray(format="bgr24").astype(np.uint8)
            out.append((float(f.time or 0.0), nearest_clip(dominant_colour(img))))
    return out
