"""Durability is about order, which `kill -9` cannot show (the page cache survives it). So run the real
daemon under strace and check, per recording thread, that a segment's bytes are fsync'd — and its directory
too, the first time — before any index commit that could describe them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from tests.harness import EDGE, edge_cli, write_config

LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")
FD_PATH = re.compile(r"^(?:\d+)<([^>]*)>")


def _events(trace: Path) -> dict[int, list[tuple[str, str]]]:
    """tid → [(syscall, path)] in order. Uses the completion of each call ("resumed" lines for calls that
    were interrupted by another thread's output), so per-thread order is exact."""
    by_tid: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for raw in trace.read_text(errors="replace").splitlines():
        m = LINE.match(raw)
        if not m or raw.endswith("<unfinished ...>"):
            continue
        tid, call, rest = int(m.group(1)), m.group(2) or m.group(3), m.group(4)
        if call == "openat":
            # openat(AT_FDCWD<...>, "path", flags) = 5</abs/path>
            target = re.search(r"= \d+<([^>]*)>", rest)
            if target:
                by_tid[tid].append(("openat", target.group(1)))
            continue
        arg = rest.lstrip("(").split(",")[0].strip(") ")
        fd = FD_PATH.match(arg)
        if fd:
            by_tid[tid].append((call, fd.group(1)))
    return by_tid


def test_segment_data_then_dir_are_fsynced_before_the_index_commits(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = write_config(
        tmp_path / "edge.toml",
        data,
        storage={"budget": "1 GB", "min_free_bytes": "1 MiB"},
        recording={"segment_s": 2},
    )
    edge_cli(cfg, "cameras", "add", "synthetic:?w=320&h=240&fps=15&gop=1", "--name", "a")
    trace = tmp_path / "trace.txt"
    proc = subprocess.Popen(
        [
            "strace",
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=openat,write,pwrite64,fsync,fdatasync",
            "-o",
            str(trace),
            *EDGE,
            "--config",
            str(cfg),
            "run",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(9)  # several segments and fragment batches (startup under strace is slow)
    finally:
        # Signal the daemon itself (strace's child), not strace: the daemon must shut down cleanly.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for pid in children:
            os.kill(int(pid), signal.SIGTERM)
        assert proc.wait(60) == 0

    wal = str(data / "edge.db-wal")
    recordings = str(data / "recordings")
    checked_commits = 0
    segments_seen: set[str] = set()
    for tid, events in _events(trace).items():
        if not any(p.startswith(recordings) and p.endswith(".mp4") for _, p in events):
            continue  # not a camera thread
        current: str | None = None  # the segment file this thread writes
        dirty = False  # bytes written to it since its last fsync
        dir_synced = False
        for call, path in events:
            if call == "openat" and path.startswith(recordings) and path.endswith(".mp4"):
                current, dirty, dir_synced = path, False, False
                segments_seen.add(path)
            elif current and path == current and call == "write":
                dirty = True
            elif current and path == current and call in ("fsync", "fdatasync"):
                dirty = False
            elif current and call == "fsync" and path == str(Path(current).parent):
                dir_synced = True
            elif path == wal and call in ("write", "pwrite64"):
                assert current is not None, f"thread {tid} committed an index row before creating a segment"
                assert not dirty, f"thread {tid}: index commit while {current} had un-fsynced bytes"
                assert dir_synced, f"thread {tid}: index commit before the directory of {current} was fsynced"
                checked_commits += 1
    assert len(segments_seen) >= 3, segments_seen
    assert checked_commits >= 5, "too few index commits observed to prove anything"
    # Batches, not packets: a segment is fsync'd at most once per write of new fragment bytes.
    calls = [
        (call, path) for events in _events(trace).values() for call, path in events if path in segments_seen
    ]
    writes = sum(call == "write" for call, _ in calls)
    fsyncs = sum(call in ("fsync", "fdatasync") for call, _ in calls)
    assert 0 < fsyncs <= writes, (fsyncs, writes)
