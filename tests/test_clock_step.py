"""A wall-clock step (NTP fixing a Pi that booted without an RTC), through the injected clock."""

from __future__ import annotations

import time
from pathlib import Path

from edge.clock import NS_PER_S, SteppableClock
from tests.harness import decodes, index_problems
from tests.recordings import SYNTHETIC_RED, recording, segments


def test_clock_steps_forward_and_back_start_new_segments_and_rewrite_nothing(tmp_path: Path) -> None:
    clock = SteppableClock()
    with recording(tmp_path, SYNTHETIC_RED, segment_s=30.0, clock=clock) as cam:
        cam.wait_recorded(2.5)
        clock.step(+3600 * NS_PER_S)  # NTP jumps an hour ahead
        time.sleep(3.0)
        before_back = {s.id: s for s in segments(tmp_path, cam.camera_id) if s.state == "closed"}
        clock.step(-2 * 3600 * NS_PER_S)  # ... and later an hour behind where we started
        time.sleep(3.0)
    segs = segments(tmp_path, cam.camera_id)
    assert len(segs) >= 3, segs
    assert {s.state for s in segs} == {"closed"}
    assert index_problems(tmp_path) == []
    assert len({s.path for s in segs}) == len(segs)  # no file was reused, none overwritten
    for s in segs:
        assert s.end_utc_ns >= s.start_utc_ns and s.media_duration_ns > 0
        assert decodes(tmp_path / s.path) is None
    by_start = sorted(segs, key=lambda s: s.id)
    first, ahead, behind = by_start[0], by_start[1], by_start[-1]
    # The forward step: a new segment about an hour after the first one ended.
    assert 3590 * NS_PER_S < ahead.start_utc_ns - first.end_utc_ns < 3610 * NS_PER_S
    # The backward step: a new segment that starts before the earlier ones ended (overlap is allowed) ...
    assert behind.start_utc_ns < first.start_utc_ns
    # ... and rows closed before it were never rewritten.
    after = {s.id: s for s in segs}
    for sid, row in before_back.items():
        assert after[sid] == row
    # Each segment's media time is its real length (no negative or absurd durations from the steps).
    for s in segs:
        assert s.media_duration_ns < 10 * NS_PER_S
