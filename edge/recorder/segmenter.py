"""Packets in, crash-safe fragmented-MP4 segments and their index rows out. Remux only.

Runs on the camera thread. Invariants (see docs/design/recorder.md):

1. A segment file is created with O_EXCL: a new file never overwrites another.
2. Fragments are at most ``fragment_ms`` long whatever the GOP (the muxer's ``frag_duration`` cuts inside
   a GOP); segments are cut at video keyframes once ``segment_s`` of media is written.
3. Order per batch: fragment bytes written → fsync(file) → (first batch only) fsync(directory) → index row
   committed. So an index row never claims bytes that are not durable; the row of the segment being
   written is *open* from its first fragment and its end advances with every batch.
4. Wall time: a segment starts at the box clock at its first keyframe; within a continuous run the next
   segment starts exactly where the previous one ended (media time), so a steady run has no gaps. A wall
   clock step of more than ``clock_step_ns`` from what media time predicts starts a new run (and segment);
   earlier rows are never rewritten.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import av
import av.container
import av.error
import av.stream

from edge.clock import NS_PER_MS, NS_PER_S, Clock
from edge.errors import DiskFull, SourceError, StorageError
from edge.fsutil import create_exclusive, fsync_dir, makedirs_durable
from edge.recorder.fmp4 import InitInfo
from edge.recorder.fmp4stream import FragmentComplete, FragmentTracker, InitComplete
from edge.store import NewSegment, SegmentState, Store

DISK_FULL_RETRIES = 3
log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class SegmentPolicy:
    segment_ns: int = 60 * NS_PER_S
    fragment_ms: int = 500
    flush_interval_ns: int = 500 * NS_PER_MS
    clock_step_ns: int = 2 * NS_PER_S
    io_buffer_bytes: int = 256 * 1024


def segment_relpath(camera_id: int, start_utc_ns: int) -> str:
    day = datetime.fromtimestamp(start_utc_ns // NS_PER_S, UTC).strftime("%Y-%m-%d")
    return f"recordings/{camera_id}/{day}/{start_utc_ns}.mp4"


def to_ns(ts: int, tb: Fraction) -> int:
    return ts * NS_PER_S * tb.numerator // tb.denominator


def from_ns(ns: int, tb: Fraction) -> int:
    return ns * tb.denominator // (NS_PER_S * tb.numerator)


class _FileSink:
    """libav's output: writes straight to the fd and tracks box boundaries as the bytes pass."""

    def __init__(self, fd: int, on_disk_full: Callable[[int], bool]) -> None:
        self.fd = fd
        self.tracker = FragmentTracker()
        self.events: list[InitComplete | FragmentComplete] = []
        self.offset = 0
        self.error: OSError | None = None
        self._on_disk_full = on_disk_full

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        retries = 0
        while view:
            try:
                n = os.write(self.fd, view)
            except OSError as e:
                # The free-space guard should have kept room; if not, make room now and retry, so a
                # full disk never stops the recording.
                if e.errno == errno.ENOSPC and retries < DISK_FULL_RETRIES and self._room_made(len(view)):
                    retries += 1
                    continue
                log.warning("write failed after %d attempts to make room: %s", retries, e.strerror,
                            extra={"event": "segment.write_failed"})  # fmt: skip
                self.error = e
                raise
            view = view[n:]
        self.offset += len(data)
        self.events.extend(self.tracker.feed(data))
        return len(data)

    def _room_made(self, need: int) -> bool:
        try:
            return self._on_disk_full(need)
        except StorageError:
            return False  # the write's own ENOSPC is what gets reported


@dataclass
class _Open:
    path: Path
    relpath: str
    fd: int
    sink: _FileSink
    container: av.container.OutputContainer
    vstream: av.stream.Stream
    astream: av.stream.Stream | None
    start_utc_ns: int
    origin_dts: int  # video dts (source time base) that maps to media time 0
    audio_origin: int | None  # the same instant in the audio time base
    init: InitInfo | None = None
    row_id: int | None = None
    complete_end: int = 0  # end offset of the last complete fragment
    synced_end: int = 0  # complete_end at the last fsync + index commit
    media_ns: int = 0
    fragments: int = 0
    last_sync_mono_ns: int = 0
    last_audio_dts: int | None = None


class Segmenter:
    """One per camera connection. Not thread-safe: the camera thread owns it."""

    def __init__(
        self,
        *,
        camera_id: int,
        data_dir: Path,
        video: av.stream.Stream,
        audio: av.stream.Stream | None,
        policy: SegmentPolicy,
        clock: Clock,
        store: Store,
        on_disk_full: Callable[[int], bool],
        log: logging.LoggerAdapter[logging.Logger],
        on_segment_closed: Callable[[], None] | None = None,
    ) -> None:
        self.camera_id = camera_id
        self._data_dir = data_dir
        self._video = video
        self._audio = audio
        # Time bases come from the first packet (an encoder's stream, as in the synthetic camera, has none
        # before it runs) and are kept: PyAV builds a new Fraction on every access.
        self._vtb: Fraction | None = None
        self._policy = policy
        self._clock = clock
        self._store = store
        self._on_disk_full = on_disk_full
        self._on_segment_closed = on_segment_closed
        self._log = log
        self._seg: _Open | None = None
        self._held: av.Packet[Any] | None = None  # one video packet held back to learn its duration
        self._last_frame_dur = 0
        self._run_wall_ns: int | None = None  # run anchor: wall time ...
        self._run_dts = 0  # ... at this video dts
        self.segments_closed = 0

    @staticmethod
    def _codec(stream: av.stream.Stream) -> str:
        """The format's name for the codec ("h264"), not the encoder's ("libx264")."""
        return str(stream.codec_context.codec.canonical_name)

    # --- packets -------------------------------------------------------------------------------

    def push(self, pkt: av.Packet[Any], *, is_video: bool) -> None:
        if is_video:
            self._push_video(pkt)
        else:
            self._push_audio(pkt)

    def _push_video(self, pkt: av.Packet[Any]) -> None:
        assert pkt.dts is not None
        if self._vtb is None:
            self._vtb = pkt.time_base
        held = self._held
        if held is not None:
            assert held.dts is not None
            step = pkt.dts - held.dts
            if step <= 0:
                # Timestamps went backwards (camera restarted its clock): end the run, wait for a keyframe.
                self._log.warning(
                    "video timestamps went backwards; starting a new segment",
                    extra={"event": "discontinuity"},
                )
                self._held = None
                self._close_segment()
                self._run_wall_ns = None
                held = None
            else:
                held.duration = step
                self._last_frame_dur = step
                self._mux(held, video=True)
                self._held = None
        if pkt.is_keyframe:
            self._at_keyframe(pkt.dts)
        if self._seg is None:
            return  # before the first keyframe: nothing decodable to store
        self._held = pkt

    def _push_audio(self, pkt: av.Packet[Any]) -> None:
        seg = self._seg
        if seg is None or seg.astream is None:
            return
        assert pkt.dts is not None and pkt.time_base is not None
        if seg.audio_origin is None:
            assert self._vtb is not None
            seg.audio_origin = from_ns(to_ns(seg.origin_dts, self._vtb), pkt.time_base)
        if pkt.dts < seg.audio_origin or (seg.last_audio_dts is not None and pkt.dts <= seg.last_audio_dts):
            return  # before this segment's first frame, or out of order: the muxer would refuse it
        seg.last_audio_dts = pkt.dts
        self._mux(pkt, video=False)

    def _at_keyframe(self, dts: int) -> None:
        assert self._vtb is not None
        now = self._clock.now_utc_ns()
        if self._run_wall_ns is None:
            self._start_run(now, dts)
            self._open_segment(now, dts)
            return
        expected = self._run_wall_ns + to_ns(dts - self._run_dts, self._vtb)
        if abs(now - expected) > self._policy.clock_step_ns:
            self._log.warning(
                "wall clock stepped %+.3f s against media time; new segment",
                (now - expected) / NS_PER_S,
                extra={"event": "clock_step"},
            )
            self._close_segment()
            self._start_run(now, dts)
            self._open_segment(now, dts)
            return
        seg = self._seg
        if seg is None:
            self._open_segment(expected, dts)
        elif to_ns(dts - seg.origin_dts, self._vtb) >= self._policy.segment_ns:
            self._close_segment()
            self._open_segment(expected, dts)

    def _start_run(self, wall_ns: int, dts: int) -> None:
        self._run_wall_ns = wall_ns
        self._run_dts = dts

    def _mux(self, pkt: av.Packet[Any], *, video: bool) -> None:
        seg = self._seg
        assert seg is not None and pkt.dts is not None
        if video:
            origin, stream = seg.origin_dts, seg.vstream
        else:
            assert seg.audio_origin is not None and seg.astream is not None
            origin, stream = seg.audio_origin, seg.astream
        pkt.dts -= origin
        if pkt.pts is not None:
            pkt.pts -= origin
        pkt.stream = stream
        try:
            seg.container.mux_one(pkt)
        except (av.error.FFmpegError, OSError) as e:
            self._fail_segment(e)
            return
        self._after_write()

    # --- segment lifecycle ---------------------------------------------------------------------

    def _open_segment(self, start_utc_ns: int, origin_dts: int) -> None:
        fd, relpath = self._create_file(start_utc_ns)
        path = self._data_dir / relpath
        sink = _FileSink(fd, self._on_disk_full)
        try:
            container = av.open(
                sink,
                "w",
                format="mp4",
                options={
                    "movflags": "empty_moov+default_base_moof",
                    # libav cuts when a packet arrives >= frag_duration after the fragment's start, so a
                    # jittery camera could overrun by a frame: cut 5 % early to stay within fragment_ms.
                    "frag_duration": str(self._policy.fragment_ms * 950),
                },
                buffer_size=self._policy.io_buffer_bytes,
            )
            vstream = container.add_stream_from_template(self._video)
            if self._codec(self._video) == "hevc":
                vstream.codec_tag = "hvc1"  # what browsers and Apple players require for H.265 in MP4
            astream = container.add_stream_from_template(self._audio) if self._audio is not None else None
        except (av.error.FFmpegError, OSError) as e:
            os.close(fd)
            os.unlink(path)
            raise StorageError(f"cannot start segment {relpath}: {e}") from None
        self._seg = _Open(
            path=path,
            relpath=relpath,
            fd=fd,
            sink=sink,
            container=container,
            vstream=vstream,
            astream=astream,
            start_utc_ns=start_utc_ns,
            origin_dts=origin_dts,
            audio_origin=None,  # set by the first audio packet, in its time base
        )
        self._log.debug("segment started %s", relpath, extra={"event": "segment.start"})

    def _create_file(self, start_utc_ns: int) -> tuple[int, str]:
        for bump in range(1000):
            relpath = segment_relpath(self.camera_id, start_utc_ns + bump)
            path = self._data_dir / relpath
            makedirs_durable(path.parent)
            try:
                return create_exclusive(path), relpath
            except FileExistsError:
                continue  # the clock stepped back onto an existing name: never overwrite
            except OSError as e:
                raise StorageError(f"cannot create {relpath}: {e.strerror}") from None
        raise StorageError(f"cannot find a free file name near {relpath}")

    def _after_write(self) -> None:
        seg = self._seg
        assert seg is not None
        self._drain_events(seg)
        if seg.complete_end > seg.synced_end and (seg.row_id is None or self._sync_due(seg)):
            self._sync(seg)

    def _sync_due(self, seg: _Open) -> bool:
        """Called when a fragment completed: sync now if waiting for the next fragment would leave bytes
        un-synced past the flush interval.

        (Comparing the elapsed time alone would, with fragments just shorter than the interval, sync only
        every second fragment.)
        """
        elapsed = self._clock.monotonic_ns() - seg.last_sync_mono_ns
        return elapsed + self._policy.fragment_ms * NS_PER_MS > self._policy.flush_interval_ns

    def _note_fragment(self, seg: _Open, ev: FragmentComplete) -> None:
        assert seg.init is not None
        vt = seg.init.video_track
        assert vt is not None
        for run in ev.info.runs:
            if run.track_id == vt.track_id:
                seg.media_ns = to_ns(run.base_decode_time + run.duration, Fraction(1, vt.timescale))
        seg.complete_end = ev.end_offset
        seg.fragments += 1

    def _sync(self, seg: _Open, *, state: SegmentState | None = None) -> None:
        """fsync the file, then (first time) the directory, then commit the row."""
        try:
            os.fsync(seg.fd)
            if seg.row_id is None:
                fsync_dir(seg.path.parent)
        except OSError as e:
            raise StorageError(f"fsync {seg.relpath}: {e.strerror}") from None
        seg.last_sync_mono_ns = self._clock.monotonic_ns()
        seg.synced_end = seg.complete_end
        end = seg.start_utc_ns + seg.media_ns
        if seg.row_id is None:
            seg.row_id = self._room_for_index(
                lambda: self._store.insert_segment(
                    NewSegment(
                        camera_id=self.camera_id,
                        start_utc_ns=seg.start_utc_ns,
                        end_utc_ns=end,
                        media_duration_ns=seg.media_ns,
                        bytes=seg.complete_end,
                        path=seg.relpath,
                        codec=self._codec(self._video),
                        audio_codec=self._codec(self._audio) if self._audio is not None else None,
                    )
                )
            )
            if state is None:
                return
        row_id = seg.row_id
        self._room_for_index(
            lambda: self._store.update_segment(
                row_id, end_utc_ns=end, media_duration_ns=seg.media_ns, bytes_=seg.complete_end, state=state
            )
        )

    def _room_for_index(self, commit: Callable[[], T]) -> T:
        """An index commit on a full disk (the database shares it with the recordings): make room like a
        file write does, and retry, so a full disk never drops the connection."""
        for attempt in range(DISK_FULL_RETRIES + 1):
            try:
                return commit()
            except DiskFull:
                if attempt == DISK_FULL_RETRIES or not self._on_disk_full(1 << 20):
                    raise
        raise AssertionError("unreachable")

    def _close_segment(self) -> None:
        seg = self._seg
        if seg is None:
            return
        if self._held is not None:
            self._held.duration = self._last_frame_dur or 1
            self._mux(self._held, video=True)
            self._held = None
            seg = self._seg
            if seg is None:  # the mux failed and already closed it
                return
        ok = True
        try:
            seg.container.close()  # writes the last fragment and the mfra index
        except (av.error.FFmpegError, OSError) as e:
            ok = False
            self._log.error("closing segment %s failed: %s", seg.relpath, e, extra={"event": "segment.error"})
        self._drain_events(seg)
        self._finish(seg, clean=ok)

    def _drain_events(self, seg: _Open) -> None:
        events, seg.sink.events = seg.sink.events, []
        for ev in events:
            if isinstance(ev, InitComplete):
                seg.init = ev.init
            else:
                self._note_fragment(seg, ev)

    def _finish(self, seg: _Open, *, clean: bool) -> None:
        self._seg = None
        try:
            if seg.fragments == 0:
                # Nothing playable was written (stopped inside the first fragment): not footage.
                os.close(seg.fd)
                os.unlink(seg.path)
                fsync_dir(seg.path.parent)
                self._log.debug("dropped empty segment %s", seg.relpath, extra={"event": "segment.empty"})
                return
            if clean and seg.sink.error is None:
                seg.complete_end = seg.sink.offset  # include the trailing mfra
            else:
                os.ftruncate(seg.fd, seg.complete_end)  # a torn tail is not kept
            self._sync(seg, state="closed")
            os.close(seg.fd)
        except OSError as e:
            raise StorageError(f"closing {seg.relpath}: {e.strerror}") from None
        self.segments_closed += 1
        if self._on_segment_closed is not None:
            self._on_segment_closed()  # retention runs now, so the budget holds to within one segment
        self._log.info(
            "segment closed %s media=%.3fs bytes=%d",
            seg.relpath,
            seg.media_ns / NS_PER_S,
            seg.complete_end,
            extra={"event": "segment.closed"},
        )

    def _fail_segment(self, e: BaseException) -> None:
        """A mux error: keep what is complete, close the segment, wait for the next keyframe."""
        seg = self._seg
        assert seg is not None
        disk = seg.sink.error
        with contextlib.suppress(av.error.FFmpegError, OSError):
            seg.container.close()  # may still complete a fragment: keep it if so
        self._drain_events(seg)
        self._finish(seg, clean=False)
        self._run_wall_ns = None
        if disk is not None:
            raise StorageError(f"writing {seg.relpath}: {disk.strerror}") from None
        raise SourceError(f"camera sent data the muxer refused: {e}", kind="bad_stream") from None

    def close(self) -> None:
        """Flush and close the open segment (clean shutdown or source end)."""
        self._close_segment()

    @property
    def open_segment_path(self) -> str | None:
        return self._seg.relpath if self._seg is not None else None
