"""Retention: a tiny byte budget and a per-camera max age, through the real daemon."""

from __future__ import annotations

import time
from pathlib import Path

from edge.store import Store
from tests.harness import Daemon, edge_cli, index_problems, write_config

CAM = "synthetic:?w=640&h=360&fps=15&gop=1&color=4080c0"


def _disk_bytes(data: Path) -> tuple[int, int]:
    """(total bytes of segment files, count)."""
    files = list((data / "recordings").rglob("*.mp4"))
    return sum(f.stat().st_size for f in files if f.exists()), len(files)


def test_tiny_budget_deletes_oldest_and_never_overshoots_by_more_than_a_segment(tmp_path: Path) -> None:
    data = tmp_path / "data"
    budget = 300_000
    cfg = write_config(
        tmp_path / "edge.toml",
        data,
        storage={"budget": budget, "min_free_bytes": "1 MiB"},
        recording={"segment_s": 1},
    )
    edge_cli(cfg, "cameras", "add", CAM)
    samples: list[int] = []
    largest_segment = 0
    first_paths: set[str] = set()
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=1)
        first_paths = {s.path for s in Store.open(data).segments()}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            total, _ = _disk_bytes(data)
            samples.append(total)
            for s in Store.open(data).segments():
                largest_segment = max(largest_segment, s.bytes)
            time.sleep(0.1)
        assert d.stop() == 0
        log = d.log_text()
    assert max(samples) > budget / 2, "the test recorded too little to exercise the budget"
    overshoot = max(samples) - budget
    assert overshoot <= largest_segment, (max(samples), budget, largest_segment)
    remaining = Store.open(data).segments()
    assert remaining and not first_paths & {s.path for s in remaining}, "the oldest segments must go first"
    assert sum(s.bytes for s in remaining) <= budget + largest_segment
    starts = [s.start_utc_ns for s in remaining]
    assert starts == sorted(starts)
    assert index_problems(data) == []
    assert " ERROR " not in log, log


def test_per_camera_max_age(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = write_config(
        tmp_path / "edge.toml",
        data,
        storage={"budget": "1 GB", "min_free_bytes": "1 MiB"},
        recording={"segment_s": 1},
    )
    edge_cli(cfg, "cameras", "add", CAM, "--name", "short", "--max-age", "3s")
    edge_cli(cfg, "cameras", "add", CAM, "--name", "keep")
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=2)
        t0 = time.time_ns()
        time.sleep(9)
        now = time.time_ns()
        assert d.stop() == 0
    store = Store.open(data)
    short, keep = store.segments(camera_id=1), store.segments(camera_id=2)
    store.close()
    # Age is checked at least every 5 s and whenever a segment closes.
    assert all(s.end_utc_ns >= now - (3 + 6) * 1_000_000_000 for s in short), [
        s.end_utc_ns - now for s in short
    ]
    assert min(s.start_utc_ns for s in short) > t0
    assert min(s.start_utc_ns for s in keep) < t0, "the camera without a max age keeps everything"
