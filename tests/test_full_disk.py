"""A real full disk: record onto a small tmpfs with a byte budget larger than the filesystem."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.store import Store
from tests.harness import Daemon, decodes, edge_cli, index_problems, write_config
from tests.peers.rtsp_server import RtspPeer

TMPFS_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    assert os.geteuid() == 0, "mounting a tmpfs needs root (make test runs as root in CI)"
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0755", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("min_free", ["3 MiB", 0], ids=["free-space-guard", "enospc-make-room"])
def test_full_disk_never_stops_recording(
    tmp_path: Path, small_disk: Path, rtsp_server: RtspPeer, min_free: str | int
) -> None:
    data = small_disk / "edge"
    cfg = write_config(
        tmp_path / "edge.toml",
        data,
        storage={"budget": "10 GB", "min_free_bytes": min_free},  # far more than the 24 MB disk
        recording={"segment_s": 2},
    )
    for i in range(4):  # 4 x 1080p at ~3.2 Mbit/s fill the disk in about 15 s
        edge_cli(cfg, "cameras", "add", rtsp_server.url(f"bench/h264_1080p/{i}"), "--name", f"cam{i}")
    states: set[str] = set()
    min_free_seen = TMPFS_MB << 20
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=4, timeout_s=60)
        deadline = time.monotonic() + 35
        while time.monotonic() < deadline:
            states |= {c["state"] for c in d.status()}
            min_free_seen = min(min_free_seen, shutil.disk_usage(small_disk).free)
            time.sleep(0.2)
        assert d.stop() == 0
        log = d.log_text()
    assert states == {"recording"}, f"a camera left the recording state: {states}"
    assert "No space left" not in log and "ENOSPC" not in log and "Traceback" not in log
    assert " ERROR " not in log, log
    store = Store.open(data)
    segs = store.segments()
    store.close()
    written = sum(s.bytes for s in segs)
    assert segs[0].start_utc_ns > 0 and written < TMPFS_MB << 20
    assert "deleted" in log or min_free == "3 MiB"  # the ENOSPC path logs what it deleted
    assert index_problems(data) == []
    for s in segs:
        assert decodes(data / s.path) is None, s.path
    # The disk really filled: retention had to delete (the first segments are gone).
    assert min(s.id for s in segs) > 4, "nothing was deleted: the disk never filled"
    print(f"min free seen: {min_free_seen / 1e6:.1f} MB; segments kept: {len(segs)}")


@pytest.mark.slow
def test_budget_as_a_share_of_the_partition(tmp_path: Path, small_disk: Path, rtsp_server: RtspPeer) -> None:
    data = small_disk / "edge"
    budget = (TMPFS_MB << 20) // 4
    cfg = write_config(
        tmp_path / "edge.toml",
        data,
        storage={"budget": "25%", "min_free_bytes": "1 MiB"},
        recording={"segment_s": 1},
    )
    for i in range(2):
        edge_cli(cfg, "cameras", "add", rtsp_server.url(f"bench/h264_1080p/{i}"), "--name", f"cam{i}")
    peak = 0
    largest = 0
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=2, timeout_s=60)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            peak = max(
                peak, sum(f.stat().st_size for f in (data / "recordings").rglob("*.mp4") if f.exists())
            )
            largest = max([largest, *(s.bytes for s in Store.open(data).segments())])
            time.sleep(0.2)
        assert d.stop() == 0
    store = Store.open(data)
    segs = store.segments()
    store.close()
    assert min(s.id for s in segs) > 2, "the budget never made retention delete"
    # Two cameras each have one segment open, which retention cannot delete.
    assert peak <= budget + 2 * largest, (peak, budget, largest)
    assert index_problems(data) == []
