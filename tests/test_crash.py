"""`kill -9` at random instants while three cameras record (one with a 4 s GOP): after each restart every
segment decodes, the index matches the files exactly, and each camera lost at most ~1 s.

(`kill -9` keeps the page cache, so this shows recovery and loss, not durability: test_write_order.py
proves the fsync order.)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.clock import NS_PER_S
from edge.store import Store
from tests.harness import Daemon, decodes, edge_cli, index_problems, write_config
from tests.peers.rtsp_server import RtspPeer

KILLS = 5
MAX_LOSS_S = 1.0


def _all_writing_since(started_utc_ns: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda cams: all((c["newest_utc_ns"] or 0) > started_utc_ns for c in cams)


@pytest.mark.slow
def test_kill_9_at_random_instants_loses_at_most_a_second(tmp_path: Path, rtsp_server: RtspPeer) -> None:
    data = tmp_path / "data"
    cfg = write_config(
        tmp_path / "edge.toml",
        data,
        storage={"budget": "2 GB", "min_free_bytes": "16 MiB"},
        recording={"segment_s": 4},
    )
    for mount in ("h264_720p", "h264_gop4", "h265"):
        edge_cli(cfg, "cameras", "add", rtsp_server.url(mount), "--name", mount)
    rng = random.Random(20261121)
    losses: dict[int, list[float]] = {1: [], 2: [], 3: []}
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        for _ in range(KILLS):
            started = time.time_ns()
            d.start(wait_recording=3, timeout_s=60)
            # Loss is what was received but not kept: wait until every camera writes in this run (a 4 s GOP
            # camera has nothing decodable to record before its first keyframe).
            d.wait_for(_all_writing_since(started), timeout_s=20, what="every camera writing")
            time.sleep(rng.uniform(0.3, 6.0))  # a random instant: inside a fragment, at a cut, mid-segment
            killed_at = d.kill9()
            store = Store.open(data)
            before = {cid: store.segments(camera_id=cid) for cid in losses}
            store.close()
            d.start(wait_recording=0)  # recovery runs before the recorders start
            d.wait_for(lambda cams: True, timeout_s=5)
            store = Store.open(data)
            for cid, values in losses.items():
                segs = [s for s in store.segments(camera_id=cid) if s.start_utc_ns < killed_at]
                assert segs, f"camera {cid} recorded nothing before the kill"
                last_end = max(s.end_utc_ns for s in segs)
                values.append((killed_at - last_end) / NS_PER_S)
                # Recovery never shortens what the index already said was durable.
                assert last_end >= max(s.end_utc_ns for s in before[cid])
            store.close()
            assert d.stop() == 0
            assert index_problems(data) == []
        log = d.log_text()
    assert "recovered segment" in log
    for cid, values in losses.items():
        assert max(values) <= MAX_LOSS_S, f"camera {cid} lost {values}"
    store = Store.open(data)
    segs = store.segments()
    store.close()
    assert {s.state for s in segs} == {"closed"}
    for s in segs:
        assert decodes(data / s.path) is None, s.path
    print("loss per kill (s):", {cid: [round(v, 3) for v in vals] for cid, vals in losses.items()})
