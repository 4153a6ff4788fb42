"""Real recordings for tests and benchmarks, made by the real recorder.

* :func:`recording` / :func:`record`: a :class:`~edge.recorder.camera.CameraRecorder` on its own thread,
  recording a camera URL (usually the built-in synthetic camera, which paces in real time: keep it short).
* :func:`record_file`: the real :class:`~edge.recorder.segmenter.Segmenter` fed from a media file as fast as
  the disk allows, under a clock that follows media time. Makes long recordings (an hour of 720p) in
  seconds, for export benchmarks; the segments and index rows are exactly what a camera would leave.

Nothing here mocks the recorder: the files and rows are the recorder's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.stream

from edge.clock import NS_PER_S, Clock, SystemClock
from edge.logsetup import bind
from edge.recorder.camera import Backoff, CameraRecorder, CameraSpec, CameraStatus
from edge.recorder.fanout import Fanout
from edge.recorder.ringbuffer import RetentionPolicy, RingBuffer
from edge.recorder.segmenter import Segmenter, SegmentPolicy
from edge.store import Segment, Store

# 320x240 red synthetic camera, one keyframe a second.
SYNTHETIC_RED = "synthetic:?w=320&h=240&fps=15&gop=1&color=ff0000"
RED_BGR = (0, 0, 255)

log = logging.getLogger("tests.recordings")


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, *, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def add_camera(data_dir: Path, url: str = SYNTHETIC_RED, *, name: str = "test camera") -> int:
    store = Store.open(data_dir)
    try:
        return store.add_camera(
            name=name, url=url, username=None, password_blob=None, max_age_s=None, now_utc_ns=time.time_ns()
        ).id
    finally:
        store.close()


def segments(data_dir: Path, camera_id: int) -> list[Segment]:
    store = Store.open(data_dir)
    try:
        return store.segments(camera_id=camera_id)
    finally:
        store.close()


@dataclass
class Running:
    """A camera being recorded: its recorder, fan-out and the statuses it reported."""

    camera_id: int
    data_dir: Path
    recorder: CameraRecorder
    fanout: Fanout
    statuses: list[CameraStatus]
    started_utc_ns: int

    def indexed(self) -> list[Segment]:
        """This run's index rows so far (any thread may read the index)."""
        return [s for s in segments(self.data_dir, self.camera_id) if s.start_utc_ns >= self.started_utc_ns]

    def wait_recorded(self, media_s: float, timeout_s: float | None = None) -> list[Segment]:
        """Wait until the index holds at least ``media_s`` of this run's footage."""

        def enough() -> bool:
            return sum(s.media_duration_ns for s in self.indexed()) >= media_s * NS_PER_S

        wait_for(enough, timeout_s if timeout_s is not None else media_s + 10, f"{media_s} s of footage")
        return self.indexed()


@contextmanager
def recording(
    data_dir: Path,
    url: str = SYNTHETIC_RED,
    *,
    camera_id: int | None = None,
    segment_s: float = 2.0,
    clock: Clock | None = None,
) -> Iterator[Running]:
    """Record ``url`` until the block ends; then stop and join the recorder (its segment closes cleanly).

    ``camera_id`` records into an existing camera (a second run of the same camera leaves a gap).
    """
    if camera_id is None:
        camera_id = add_camera(data_dir, url)
    clock = clock or SystemClock()
    ring = RingBuffer(data_dir, RetentionPolicy(budget_bytes=lambda: 1 << 40, min_free_bytes=0), clock)
    fanout = Fanout(camera_id)
    statuses: list[CameraStatus] = []
    recorder = CameraRecorder(
        CameraSpec(id=camera_id, name=f"camera {camera_id}", url=url, username=None, password=None),
        data_dir=data_dir,
        policy=SegmentPolicy(segment_ns=int(segment_s * NS_PER_S)),
        backoff=Backoff(min_s=0.2, max_s=1.0),
        open_timeout_s=5.0,
        read_timeout_s=5.0,
        clock=clock,
        ring=ring,
        fanout=fanout,
        on_status=statuses.append,
    )
    started = clock.now_utc_ns()
    recorder.start()
    try:
        yield Running(camera_id, data_dir, recorder, fanout, statuses, started)
    finally:
        recorder.stop()
        if not recorder.join(timeout=15):
            raise RuntimeError(f"recorder of camera {camera_id} did not stop")


def record(
    data_dir: Path,
    url: str = SYNTHETIC_RED,
    seconds: float = 3.0,
    *,
    camera_id: int | None = None,
    segment_s: float = 2.0,
) -> int:
    """Record at least ``seconds`` of indexed footage, stop cleanly, return the camera id."""
    with recording(data_dir, url, camera_id=camera_id, segment_s=segment_s) as cam:
        cam.wait_recorded(seconds)
    return cam.camera_id


# --- faster than real time -------------------------------------------------------------------------


class _MediaClock:
    """Wall and monotonic time that follow the media being fed (set by :func:`record_file`)."""

    def __init__(self, start_utc_ns: int) -> None:
        self.start_utc_ns = start_utc_ns
        self.media_ns = 0

    def now_utc_ns(self) -> int:
        return self.start_utc_ns + self.media_ns

    def monotonic_ns(self) -> int:
        return self.media_ns


def record_file(
    data_dir: Path,
    media: Path,
    seconds: float,
    *,
    camera_id: int | None = None,
    start_utc_ns: int | None = None,
    segment_s: float = 60.0,
) -> int:
    """Feed ``media`` (looped, timestamps kept increasing) through the real segmenter until ``seconds`` of
    media are recorded, as fast as the disk allows. Wall time starts at ``start_utc_ns`` (default: now minus
    ``seconds``, so the recording ends about now). Returns the camera id."""
    if camera_id is None:
        camera_id = add_camera(data_dir, f"file://{media}")
    clock = _MediaClock(
        start_utc_ns if start_utc_ns is not None else time.time_ns() - int(seconds * NS_PER_S)
    )
    store = Store.open(data_dir, durable=False)
    container = av.open(str(media))
    try:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        if audio is not None and audio.codec_context.name != "aac":
            audio = None
        segmenter = Segmenter(
            camera_id=camera_id,
            data_dir=data_dir,
            video=video,
            audio=audio,
            policy=SegmentPolicy(segment_ns=int(segment_s * NS_PER_S)),
            clock=clock,
            store=store,
            on_disk_full=lambda need: False,
            log=bind(log, camera=camera_id),
        )
        wanted = [video] + ([audio] if audio is not None else [])
        # One pass of the file is the video's span; audio outside it is dropped, so both loop together.
        first_ns, period_ns = _video_span_ns(container, video)
        limit_ns = int(seconds * NS_PER_S)
        loop = 0
        while clock.media_ns < limit_ns:
            container.seek(0)
            base_ns = loop * period_ns
            for pkt in container.demux(wanted):
                if pkt.dts is None or pkt.time_base is None:
                    continue
                tb = pkt.time_base
                t_ns = _ticks_ns(pkt.dts, tb) - first_ns
                is_video = pkt.stream.index == video.index
                if not is_video and not 0 <= t_ns < period_ns:
                    continue
                if is_video:
                    clock.media_ns = base_ns + t_ns
                    if clock.media_ns >= limit_ns and pkt.is_keyframe:
                        break
                off = base_ns * tb.denominator // (tb.numerator * NS_PER_S)
                pkt.dts += off
                if pkt.pts is not None:
                    pkt.pts += off
                segmenter.push(pkt, is_video=is_video)
            loop += 1
        segmenter.close()
    finally:
        container.close()
        store.close()
    return camera_id


def _video_span_ns(container: av.container.InputContainer, video: av.stream.Stream) -> tuple[int, int]:
    """(first video dts, video length) in ns."""
    first: int | None = None
    end = 0
    for pkt in container.demux(video):
        if pkt.dts is not None and pkt.time_base is not None:
            first = _ticks_ns(pkt.dts, pkt.time_base) if first is None else first
            end = max(end, _ticks_ns(pkt.dts + (pkt.duration or 1), pkt.time_base))
    if first is None:
        raise ValueError("media file has no video")
    return first, end - first


def _ticks_ns(ticks: int, tb: Fraction) -> int:
    return ticks * NS_PER_S * tb.numerator // tb.denominator
