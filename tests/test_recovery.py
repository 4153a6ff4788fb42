"""Start-up recovery on damage a crash (or a bad disk) leaves: trim, adopt, quarantine, finish deletes."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from edge.clock import SystemClock
from edge.recorder.ringbuffer import RetentionPolicy, RingBuffer
from edge.store import Store
from tests.harness import decodes, index_problems
from tests.recordings import record


def _ring(data: Path) -> RingBuffer:
    return RingBuffer(data, RetentionPolicy(budget_bytes=lambda: 1 << 40, min_free_bytes=0), SystemClock())


def test_recovery_trims_adopts_quarantines_and_finishes_deletes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cam = record(tmp_path, seconds=6.0, segment_s=2.0)
    store = Store.open(tmp_path)
    segs = store.segments(camera_id=cam)
    assert len(segs) >= 3
    torn, orphan, doomed = segs[-1], segs[-2], segs[0]
    # 1. The last segment was being written: row open, file with a torn half-written tail.
    with store.transaction() as c:
        c.execute("UPDATE segments SET state = 'open' WHERE id = ?", (torn.id,))
    with (tmp_path / torn.path).open("ab") as f:
        f.write(b"\x00\x00\x10\x00moof" + os.urandom(300))
    # 2. A file whose row never committed.
    with store.transaction() as c:
        c.execute("DELETE FROM segments WHERE id = ?", (orphan.id,))
    # 3. A delete interrupted after the mark.
    assert store.mark_deleting(doomed.id)
    # 4. Garbage where a segment should be, next to the real ones.
    day = (tmp_path / torn.path).parent
    junk = day / "1795000000000000000.mp4"
    junk.write_bytes(os.urandom(5000))
    caplog.set_level(logging.INFO, logger="edge")

    report = _ring(tmp_path).recover(store)

    assert report.trimmed == [torn.path]
    assert report.adopted == [orphan.path]
    assert report.finished_deletes == 1
    assert report.quarantined == [f"quarantine/{cam}/{junk.name}"]
    assert report.lost_bytes == 308
    assert not junk.exists() and (tmp_path / "quarantine" / str(cam) / junk.name).read_bytes()
    assert not (tmp_path / doomed.path).exists()
    assert any("moved to quarantine" in r.getMessage() for r in caplog.records)
    after = {s.path: s for s in store.segments(camera_id=cam)}
    store.close()
    assert after[torn.path].state == "closed" and after[torn.path].bytes == torn.bytes
    assert after[orphan.path].media_duration_ns == orphan.media_duration_ns
    assert after[orphan.path].start_utc_ns == orphan.start_utc_ns
    assert index_problems(tmp_path) == []
    for p in after:
        assert decodes(tmp_path / p) is None


def test_open_segment_with_a_broken_header_is_quarantined_not_deleted(tmp_path: Path) -> None:
    cam = record(tmp_path, seconds=3.0, segment_s=2.0)
    store = Store.open(tmp_path)
    seg = store.segments(camera_id=cam)[-1]
    with store.transaction() as c:
        c.execute("UPDATE segments SET state = 'open' WHERE id = ?", (seg.id,))
    path = tmp_path / seg.path
    original = path.read_bytes()
    path.write_bytes(b"\x00\x00\x00\x08ftyp" + original[40:])  # a bad-disk scramble of the header
    report = _ring(tmp_path).recover(store)
    assert report.quarantined and not path.exists()
    kept = tmp_path / report.quarantined[0]
    assert kept.stat().st_size == len(original) - 32  # moved as it was, not trimmed or deleted
    assert seg.path not in {s.path for s in store.segments()}
    store.close()
    shutil.rmtree(tmp_path / "quarantine")
    assert index_problems(tmp_path) == []
