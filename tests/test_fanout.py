"""Fan-out: a live viewer starts at a keyframe at once; a slow one is dropped, never the recorder."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path

import pytest

from edge.recorder.fanout import Fanout, MediaPacket
from tests.recordings import recording

SYNTH_GOP2 = "synthetic:?w=320&h=240&fps=15&gop=2&color=00ff00"


async def test_new_subscriber_starts_with_the_cached_gop(tmp_path: Path) -> None:
    with recording(tmp_path, SYNTH_GOP2) as cam:
        await asyncio.to_thread(cam.wait_recorded, 2.5)
        await asyncio.sleep(0.7)  # somewhere inside a 2 s GOP
        joined = time.monotonic_ns()
        sub = cam.fanout.subscribe()
        got: list[MediaPacket] = []
        async with asyncio.timeout(5):
            async for pkt in sub:
                got.append(pkt)
                if len(got) >= 40:
                    break
        sub.close()
    assert got[0].kind == "video" and got[0].keyframe
    assert sub.description is not None
    # The cached packets arrived at once: the first ones were received before the subscriber joined.
    assert got[0].received_mono_ns < joined
    dts = [p.dts for p in got]
    assert dts == sorted(dts) and len(set(dts)) == len(dts)


async def test_slow_subscriber_is_dropped_and_recording_continues(tmp_path: Path) -> None:
    with recording(tmp_path, SYNTH_GOP2, segment_s=1.0) as cam:
        await asyncio.to_thread(cam.wait_recorded, 1.0)
        slow = cam.fanout.subscribe(queue_packets=4)  # never read
        fast = cam.fanout.subscribe()
        seen = 0
        async with asyncio.timeout(10):
            async for _ in fast:
                seen += 1
                if slow.closed_reason is not None and seen > 30:
                    break
        assert slow.dropped and slow.closed_reason == "slow subscriber: queue full"
        assert cam.fanout.dropped_subscribers == 1
        assert not fast.dropped
        recorded = sum(s.media_duration_ns for s in cam.indexed())
        await asyncio.to_thread(cam.wait_recorded, recorded / 1e9 + 1.5)
        # The slow subscriber's iterator ends instead of hanging.
        async with asyncio.timeout(2):
            rest = [p async for p in slow]
        assert len(rest) <= 4 + 30
        fast.close()
    assert cam.fanout.subscriber_count == 0


async def test_a_cancelled_consumer_stops_even_if_a_packet_arrives_at_that_moment() -> None:
    """A media session cancels its pump to end within a second. Python 3.11's asyncio.wait_for would hand the
    pump the packet that arrived in the same loop iteration and swallow the cancellation (the pump then ran
    on until max_dur); Subscription.next must raise CancelledError and leave the packet queued."""
    fanout = Fanout(1)
    sub = fanout.subscribe()
    pkt = MediaPacket("video", b"\x00", 0, 0, 0, Fraction(1, 90000), True, 0)
    for _ in range(20):
        task = asyncio.create_task(sub.next(5))
        await asyncio.sleep(0)  # the consumer now waits on the queue
        sub.queue.put_nowait(pkt)  # its getter is resolved …
        task.cancel()  # … and the cancellation comes in the same iteration
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sub.queue.get_nowait() is pkt
