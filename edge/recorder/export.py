"""Export: a wall-time range of one camera's recordings → one regular MP4 plus a manifest that proves it.

Stream copy only (never decode or re-encode). Blocking: run it on a worker thread, never on the event loop.

Invariants:

1. The clip starts at the video keyframe at or before ``from`` (so its first frame decodes; the first
   keyframe after ``from`` if ``from`` is in a gap) and ends at the last packet whose decode time is ≤ ``to``.
2. Clip time 0 is the wall time of that keyframe, and every packet keeps its wall-time position: a gap in
   the recordings is a time jump in the clip, never squeezed out. (If the wall clock stepped back, so that a
   segment starts before the previous one ended, the later footage follows the earlier one directly and
   the manifest lists the overlap.)
3. A segment is read only up to its indexed (durable) ``bytes`` (libav's ``subfile`` protocol): an open
   segment grows while we read, and what lies past ``bytes`` is not yet footage.
4. The manifest's SHA-256 of a source segment covers exactly those bytes (``[0, bytes)``). Segments only
   ever grow at the end, so the owner can check them later against the ring buffer.
5. Nothing is overwritten: the clip is written to ``<out>.tmp`` (created exclusively), fsync'd, then
   hard-linked to ``<out>`` (which fails if it exists) and the temporary name removed; the manifest
   ``<out>.manifest.json`` is created exclusively too. A failed export leaves neither.

Speed (it is benchmarked against ``ffmpeg -f concat -c copy``): per packet, Python does a bound check, a
timestamp offset and the mux call; segments open without probing or decoding; the source hashes run on a
worker thread beside libav; the clip is hashed while edge itself moves its ``moov`` to the front (the
``+faststart`` layout, :mod:`edge.recorder.faststart`), so no pass over the file is spent on hashing alone.

This module plans and copies the clip and publishes it; the manifest's dataclasses, JSON form and
verification live in :mod:`edge.recorder.manifest`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.container
import av.error
import av.stream

import edge
from edge.clock import NS_PER_MS, NS_PER_S
from edge.errors import ExportError
from edge.fsutil import create_exclusive, fsync_dir
from edge.recorder.faststart import faststart_and_hash
from edge.recorder.fmp4out import DEFAULT_FRAGMENT_MS, PieceSink, muxer_options
from edge.recorder.manifest import (
    HASH_CHUNK_BYTES,
    MANIFEST_VERSION,
    Gap,
    Manifest,
    SourceSegment,
    iso_utc,
    manifest_path_for,
    sha256_file,
)
from edge.store import Segment, Store

log = logging.getLogger("edge.recorder.export")

# Consecutive segments closer than this are one continuous run (the index rounds media time to ns).
CONTIGUOUS_NS = NS_PER_MS
HASH_QUEUE_SEGMENTS = 8
LIBAV_FASTSTART_ABOVE_BYTES = 3 << 30


# --- reading segments --------------------------------------------------------------------------------------


# Our segments describe their tracks fully in the moov: no probing, and never decode (a stream copy
# needs no pixel format). Opening a segment costs under 1 ms instead of ~6 ms (a decoded keyframe).
_PROBE_OPTIONS = {"probesize": "32", "analyzeduration": "0"}
# (PyAV's stubs type stream_options as list[str]; it takes one dict per stream.)
_NO_DECODE: Any = [{"skip_frame": "all", "threads": "1"}] * 2


class _HashJob:
    def __init__(self, fd: int, limit: int, relpath: str) -> None:
        self.fd = fd
        self.limit = limit
        self.relpath = relpath
        self.digest: str | None = None
        self.error: str | None = None

    def result(self) -> str:
        """The hex SHA-256, once the worker has finished (after :meth:`_SourceHasher.finish`)."""
        if self.digest is None:
            raise ExportError(self.error or f"segment {self.relpath} was not hashed")
        return self.digest


class _SourceHasher:
    """SHA-256 of each source segment's first ``bytes`` bytes, on a worker thread while libav copies.

    The main thread opens the segment (so retention deleting it later cannot make it vanish) and hands the
    fd over; the worker reads in large chunks and closes it. hashlib and the reads release the GIL, so the
    hashing runs beside the demuxer and muxer. At most ``HASH_QUEUE_SEGMENTS`` wait: fds stay bounded.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[_HashJob | None] = queue.Queue(HASH_QUEUE_SEGMENTS)
        self._thread = threading.Thread(target=self._run, name="export-hash", daemon=True)
        self._thread.start()
        self._stopped = False

    def add(self, fd: int, limit: int, relpath: str) -> _HashJob:
        job = _HashJob(fd, limit, relpath)
        self._queue.put(job)
        return job

    def finish(self) -> None:
        """Hash everything added, then end the worker. Idempotent."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        buf = bytearray(HASH_CHUNK_BYTES)
        view = memoryview(buf)
        while (job := self._queue.get()) is not None:
            try:
                sha, done = hashlib.sha256(), 0
                while done < job.limit:
                    got = os.preadv(job.fd, [view[: min(HASH_CHUNK_BYTES, job.limit - done)]], done)
                    if not got:
                        break
                    sha.update(view[:got])
                    done += got
                if done < job.limit:
                    job.error = f"segment {job.relpath} is shorter than its indexed {job.limit} bytes"
                else:
                    job.digest = sha.hexdigest()
            except OSError as e:
                job.error = f"cannot read segment {job.relpath}: {e.strerror}"
            finally:
                os.close(job.fd)


def bounded_url(path: Path, limit: int) -> str:
    """A libav URL reading only the first ``limit`` bytes of ``path`` (the ``subfile`` protocol)."""
    if limit <= 0:
        raise ValueError(f"bounded read of {limit} bytes")  # subfile reads a 0 end as "to the end"
    return f"subfile,,start,0,end,{limit},,:file:{path.resolve()}"


# --- planning ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    segment: Segment
    place_utc_ns: int  # where the segment's media time 0 sits on the clip's wall timeline


def _plan(segments: list[Segment], from_utc_ns: int, to_utc_ns: int) -> list[_Piece]:
    """The segments holding footage of [from, to], placed on one timeline (overlaps moved later)."""
    pieces: list[_Piece] = []
    prev_end: int | None = None
    for seg in segments:
        if seg.bytes == 0 or seg.start_utc_ns > to_utc_ns:
            continue
        if seg.end_utc_ns <= from_utc_ns and seg.start_utc_ns < from_utc_ns:
            continue
        place = seg.start_utc_ns if prev_end is None else max(seg.start_utc_ns, prev_end)
        pieces.append(_Piece(seg, place))
        prev_end = place + seg.media_duration_ns
    return pieces


def _gaps(pieces: list[_Piece]) -> tuple[tuple[Gap, ...], tuple[Gap, ...]]:
    gaps: list[Gap] = []
    overlaps: list[Gap] = []
    for prev, cur in itertools.pairwise(pieces):
        prev_end = prev.segment.end_utc_ns
        if cur.segment.start_utc_ns > prev_end + CONTIGUOUS_NS:
            gaps.append(Gap(prev_end, cur.segment.start_utc_ns))
        elif cur.segment.start_utc_ns < prev_end - CONTIGUOUS_NS:
            overlaps.append(Gap(cur.segment.start_utc_ns, prev_end))
    return tuple(gaps), tuple(overlaps)


def _ticks(ns: int, tb: Fraction) -> int:
    """Nearest tick of ``tb`` to ``ns`` nanoseconds."""
    den = tb.numerator * NS_PER_S
    return (ns * tb.denominator + den // 2) // den


def _ns(ticks: int, tb: Fraction) -> int:
    return ticks * NS_PER_S * tb.numerator // tb.denominator


# --- parameter sets ----------------------------------------------------------------------------------------


def _parameter_sets(codec: str, extradata: bytes) -> tuple[list[bytes], int]:
    """(parameter-set NAL units, NAL length size) of an avcC or hvcC record."""
    try:
        if codec == "h264":
            length_size = (extradata[4] & 3) + 1
            nals, pos = [], 6
            for count_at_pos in (True, False):
                count = extradata[5] & 0x1F if count_at_pos else extradata[pos]
                pos += 0 if count_at_pos else 1
                for _ in range(count):
                    n = int.from_bytes(extradata[pos : pos + 2])
                    nals.append(extradata[pos + 2 : pos + 2 + n])
                    pos += 2 + n
            return nals, length_size
        if codec == "hevc":
            length_size = (extradata[21] & 3) + 1
            nals, pos = [], 23
            for _ in range(extradata[22]):
                count = int.from_bytes(extradata[pos + 1 : pos + 3])
                pos += 3
                for _ in range(count):
                    n = int.from_bytes(extradata[pos : pos + 2])
                    nals.append(extradata[pos + 2 : pos + 2 + n])
                    pos += 2 + n
            return nals, length_size
    except IndexError:
        pass
    raise ExportError(f"cannot read the {codec} parameter sets of a segment")


# --- copying -----------------------------------------------------------------------------------------------


@dataclass
class _Output:
    container: av.container.OutputContainer
    video: av.stream.Stream
    audio: av.stream.Stream | None
    video_codec: str
    extradata: bytes
    clip_start_utc_ns: int | None = None
    clip_end_utc_ns: int = 0
    last_out: dict[str, tuple[int, Fraction]] = field(default_factory=dict)  # per kind: last output dts
    packets: int = 0
    dropped: int = 0


class _Exporter:
    def __init__(
        self, data_dir: Path, from_utc_ns: int, to_utc_ns: int, hasher: _SourceHasher | None
    ) -> None:
        self._data_dir = data_dir
        self._hasher = hasher
        self._from = from_utc_ns
        self._to = to_utc_ns

    def open_input(
        self, seg: Segment, *, hashed: bool = True
    ) -> tuple[av.container.InputContainer, _HashJob | None]:
        """Open a segment for demuxing, bounded to its indexed bytes, and queue its hash."""
        path = self._data_dir / seg.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ExportError(
                f"segment {seg.path} is gone (deleted by retention during the export?)"
            ) from None
        except OSError as e:
            raise ExportError(f"cannot open segment {seg.path}: {e.strerror}") from None
        try:
            container = av.open(
                bounded_url(path, seg.bytes),
                "r",
                format="mp4",
                options=_PROBE_OPTIONS,
                stream_options=_NO_DECODE,
            )
        except (av.error.FFmpegError, OSError) as e:
            os.close(fd)
            raise ExportError(f"cannot read segment {seg.path}: {e}") from None
        if not hashed or self._hasher is None:
            os.close(fd)
            return container, None
        return container, self._hasher.add(fd, seg.bytes, seg.path)

    def copy(self, out: _Output, piece: _Piece, container: av.container.InputContainer) -> bool:
        """Copy the piece's packets that belong to the clip. False if it held nothing to start from."""
        seg = piece.segment
        vin = container.streams.video[0] if container.streams.video else None
        if vin is None:
            raise ExportError(f"segment {seg.path} has no video track")
        ain = container.streams.audio[0] if out.audio is not None and container.streams.audio else None
        prefix = self._prefix(out, seg, vin)
        streams: list[av.stream.Stream] = [vin] if ain is None else [vin, ain]
        packets = container.demux(streams)
        pending: list[av.Packet[Any]] = []
        if out.clip_start_utc_ns is None:
            start = self._preroll(packets, vin, piece, pending)
            if start is None:
                return False
            out.clip_start_utc_ns = start
        cut = self._to if piece.place_utc_ns + seg.media_duration_ns > self._to else None
        self._run(
            out=out,
            piece=piece,
            vin=vin,
            ain=ain,
            prefix=prefix,
            pending=pending,
            packets=packets,
            cut_utc_ns=cut,
        )
        return True

    def _prefix(self, out: _Output, seg: Segment, vin: av.stream.Stream) -> bytes:
        """Bytes to put before the segment's first keyframe: its parameter sets, if they differ from the
        clip's (a camera reconnected with new settings). Players follow in-band parameter sets."""
        codec = vin.codec_context.name
        if codec != out.video_codec:
            raise ExportError(
                f"the camera's video codec changed ({out.video_codec} → {codec}) at "
                f"{iso_utc(seg.start_utc_ns)}; export the two parts separately"
            )
        extradata = vin.codec_context.extradata or b""
        if extradata == out.extradata:
            return b""
        nals, length_size = _parameter_sets(codec, extradata)
        _, out_length_size = _parameter_sets(codec, out.extradata)
        if length_size != out_length_size:
            raise ExportError(
                f"segment {seg.path} uses {length_size}-byte NAL lengths, the clip {out_length_size}"
            )
        return b"".join(len(n).to_bytes(length_size) + n for n in nals)

    def _preroll(
        self,
        packets: Iterator[av.Packet[Any]],
        vin: av.stream.Stream,
        piece: _Piece,
        pending: list[av.Packet[Any]],
    ) -> int | None:
        """Read up to the clip's first keyframe (the last at or before ``from``, or the first after it);
        leave in ``pending`` the packets from it on. Returns its wall time, or None if the piece has none."""
        vidx = vin.index
        place = piece.place_utc_ns
        key_ns: int | None = None
        for pkt in packets:
            if pkt.dts is None or pkt.time_base is None:
                continue
            t = place + _ns(pkt.dts, pkt.time_base)
            if pkt.stream_index != vidx:
                pending.append(pkt)  # audio: kept if not earlier than the keyframe finally chosen
                continue
            if pkt.is_keyframe and (t <= self._from or key_ns is None):
                key_ns = t
                pending[:] = [p for p in pending if p.stream_index != vidx and _dts_ns(p, place) >= t]
                pending.append(pkt)
                if t > self._from:
                    return key_ns
            elif key_ns is not None:
                pending.append(pkt)
                if t > self._from:
                    return key_ns
        if key_ns is not None:
            return key_ns
        pending.clear()
        return None

    def _run(
        self,
        *,
        out: _Output,
        piece: _Piece,
        vin: av.stream.Stream,
        ain: av.stream.Stream | None,
        prefix: bytes,
        pending: list[av.Packet[Any]],
        packets: Iterator[av.Packet[Any]],
        cut_utc_ns: int | None,
    ) -> None:
        """The hot loop: per packet, a bound check, an offset and a mux call."""
        assert out.clip_start_utc_ns is not None
        shift_ns = piece.place_utc_ns - out.clip_start_utc_ns
        vidx = vin.index
        kinds = {vidx: ("video", _time_base(vin), out.video)}
        if ain is not None and out.audio is not None:
            kinds[ain.index] = ("audio", _time_base(ain), out.audio)
        # Per input stream index: timestamp offset, output stream, highest dts to copy, last dts copied.
        offset: dict[int, int] = {}
        target: dict[int, av.stream.Stream] = {}
        limit: dict[int, int] = {}
        last: dict[int, int] = {}
        for i, (kind, tb, stream) in kinds.items():
            offset[i] = _ticks(shift_ns, tb)
            target[i] = stream
            limit[i] = _MAX_TS if cut_utc_ns is None else _floor_ticks(cut_utc_ns - piece.place_utc_ns, tb)
            last[i] = _last_in(out.last_out.get(kind), tb) - offset[i]
        first_last = dict(last)
        finished: set[int] = set()
        mux = out.container.mux_one
        muxed = dropped = 0
        video_end = -1
        for packet in _chain(pending, packets):
            pkt = packet
            dts = pkt.dts
            if dts is None:
                continue
            i = pkt.stream_index
            if dts > limit[i]:
                finished.add(i)  # past ``to``
                if len(finished) == len(kinds):
                    break
                continue
            if dts <= last[i]:
                dropped += 1  # would not move forward (audio overlapping a segment joint)
                continue
            last[i] = dts
            if i == vidx:
                video_end = dts + (pkt.duration or 0)
                if prefix:
                    pkt, prefix = _with_prefix(pkt, prefix), b""
            off = offset[i]
            pkt.dts = dts + off
            pts = pkt.pts
            if pts is not None:
                pkt.pts = pts + off
            pkt.stream = target[i]
            try:
                mux(pkt)
            except (av.error.FFmpegError, OSError) as e:
                raise ExportError(f"writing the clip failed at {piece.segment.path}: {e}") from None
            muxed += 1
        out.packets += muxed
        out.dropped += dropped
        for i, (kind, tb, _) in kinds.items():
            if last[i] != first_last[i]:
                out.last_out[kind] = (last[i] + offset[i], tb)
        if video_end >= 0:
            out.clip_end_utc_ns = piece.place_utc_ns + _ns(video_end, kinds[vidx][1])


_MAX_TS = 1 << 62


def _floor_ticks(ns: int, tb: Fraction) -> int:
    return ns * tb.denominator // (tb.numerator * NS_PER_S)


def _last_in(last_out: tuple[int, Fraction] | None, tb: Fraction) -> int:
    """The last output dts of a kind, in ``tb`` ticks; -1 before any (so the clip never starts below 0)."""
    if last_out is None:
        return -1
    ticks, last_tb = last_out
    return ticks if last_tb == tb else _floor_ticks(_ns(ticks, last_tb), tb) + 1


def _chain(first: list[av.Packet[Any]], rest: Iterator[av.Packet[Any]]) -> Iterator[av.Packet[Any]]:
    yield from first
    # Not `yield from rest`: PyAV's demux generator, once exhausted by the preroll, can leak a bare
    # StopIteration through `yield from` (seen reading a segment that is still being written), which
    # PEP 479 turns into a RuntimeError.
    while True:
        try:
            pkt = next(rest)
        except StopIteration:
            return
        yield pkt


def _time_base(stream: av.stream.Stream) -> Fraction:
    tb = stream.time_base
    if tb is None:
        raise ExportError("a segment track has no time base")
    return tb


def _dts_ns(pkt: av.Packet[Any], place_utc_ns: int) -> int:
    assert pkt.dts is not None and pkt.time_base is not None
    return place_utc_ns + _ns(pkt.dts, pkt.time_base)


def _with_prefix(pkt: av.Packet[Any], prefix: bytes) -> av.Packet[Any]:
    new = av.Packet(prefix + bytes(pkt))
    new.pts, new.dts, new.duration = pkt.pts, pkt.dts, pkt.duration
    if pkt.time_base is not None:
        new.time_base = pkt.time_base
    new.is_keyframe = pkt.is_keyframe
    return new


# --- the export --------------------------------------------------------------------------------------------


def export_clip(
    store: Store,
    data_dir: Path,
    *,
    camera_id: int,
    from_utc_ns: int,
    to_utc_ns: int,
    out_path: Path,
    now_utc_ns: int,
) -> Manifest:
    """Copy ``[from_utc_ns, to_utc_ns]`` of a camera into ``out_path`` (MP4, ``+faststart``) and write
    ``<out_path>.manifest.json``. Blocking (disk and libav work): call it off the event loop.

    Raises :class:`NotFound` for an unknown camera and :class:`ExportError` for an empty or reversed range,
    an existing ``out_path`` or a failure while reading or writing.
    """
    if from_utc_ns >= to_utc_ns:
        raise ExportError(
            f"export range is empty or reversed: from {iso_utc(from_utc_ns)} to {iso_utc(to_utc_ns)}"
        )
    store.camera(camera_id)  # NotFound for an unknown camera
    manifest_path = manifest_path_for(out_path)
    for p in (out_path, manifest_path):
        if p.exists():
            raise ExportError(f"{p} already exists; exports never overwrite")
    pieces = _plan(store.segments(camera_id=camera_id, from_utc_ns=from_utc_ns, to_utc_ns=to_utc_ns),
                   from_utc_ns, to_utc_ns)  # fmt: skip
    if not pieces:
        raise _no_footage(camera_id, from_utc_ns, to_utc_ns)
    tmp = out_path.with_name(out_path.name + ".tmp")
    _create_tmp(tmp, out_path)
    hasher = _SourceHasher()
    # Our own faststart hashes the clip while it moves the data; libav's is for clips near 4 GiB, where
    # chunk offsets may need 64 bits after the move.
    libav_faststart = sum(p.segment.bytes for p in pieces) > LIBAV_FASTSTART_ABOVE_BYTES
    published: list[Path] = []
    try:
        exporter = _Exporter(data_dir, from_utc_ns, to_utc_ns, hasher)
        out, used = _write_clip(exporter, pieces, tmp, to_utc_ns, libav_faststart=libav_faststart)
        if out.clip_start_utc_ns is None or out.packets == 0:
            raise _no_footage(camera_id, from_utc_ns, to_utc_ns)
        clip_sha, clip_size = _finish_clip(tmp, libav_faststart=libav_faststart)  # beside the source hashes
        hasher.finish()
        gaps, overlaps = _gaps([p for p, _ in used])
        manifest = Manifest(
            format_version=MANIFEST_VERSION,
            camera_id=camera_id,
            requested_from_utc_ns=from_utc_ns,
            requested_to_utc_ns=to_utc_ns,
            clip_start_utc_ns=out.clip_start_utc_ns,
            clip_end_utc_ns=out.clip_end_utc_ns,
            sources=tuple(
                SourceSegment(
                    p.segment.path, p.segment.start_utc_ns, p.segment.end_utc_ns, p.segment.bytes, d()
                )
                for p, d in used
            ),
            gaps=gaps,
            overlaps=overlaps,
            clip_file=out_path.name,
            clip_sha256=clip_sha,
            clip_size=clip_size,
            created_utc_ns=now_utc_ns,
            edge_version=edge.__version__,
        )
        _publish(tmp, out_path)
        published.append(out_path)
        _write_exclusive(manifest_path, manifest.to_json().encode())
        published.append(manifest_path)
        fsync_dir(out_path.parent)
    except BaseException:
        for p in (tmp, *published):
            p.unlink(missing_ok=True)
        raise
    finally:
        hasher.finish()
    log.info(
        "exported camera %d %s .. %s to %s (%d bytes, %d segments, %d gaps, %d packets dropped at joints)",
        camera_id, iso_utc(manifest.clip_start_utc_ns), iso_utc(manifest.clip_end_utc_ns), out_path.name,
        clip_size, len(manifest.sources), len(gaps), out.dropped,
        extra={"event": "export.done", "camera": camera_id},
    )  # fmt: skip
    return manifest


class _Stop(Exception):
    """Raised by a streamed clip's consumer to end the copy early."""


def stream_clip(
    store: Store,
    data_dir: Path,
    *,
    camera_id: int,
    from_utc_ns: int,
    to_utc_ns: int,
    on_start: Callable[[int], None],
    on_piece: Callable[[bytes], bool],
    fragment_ms: int = DEFAULT_FRAGMENT_MS,
) -> tuple[int, int]:
    """The clip :func:`export_clip` would make of ``[from, to]`` — the same plan, keyframe start, wall-time
    positions and bound on open segments — as fragmented MP4 pieces handed over as they are muxed (the init
    segment, then whole fragments): what a media session sends. No file, no faststart pass, no manifest.

    ``on_start(clip_start_utc_ns)`` comes before the first piece; ``on_piece`` returns False to stop the copy
    early. Returns the clip's (start, end) wall times. Blocking: run it on a worker thread. Raises
    :class:`NotFound` for an unknown camera and :class:`ExportError` for an empty range or a read failure.
    """
    if from_utc_ns >= to_utc_ns:
        raise ExportError(f"range is empty or reversed: from {iso_utc(from_utc_ns)} to {iso_utc(to_utc_ns)}")
    store.camera(camera_id)
    pieces = _plan(store.segments(camera_id=camera_id, from_utc_ns=from_utc_ns, to_utc_ns=to_utc_ns),
                   from_utc_ns, to_utc_ns)  # fmt: skip
    exporter = _Exporter(data_dir, from_utc_ns, to_utc_ns, None)
    out: _Output | None = None
    started = False

    def emit(piece: bytes) -> None:
        nonlocal started
        if not started:
            assert out is not None and out.clip_start_utc_ns is not None  # the preroll precedes any mux
            on_start(out.clip_start_utc_ns)
            started = True
        if not on_piece(piece):
            raise _Stop

    sink = PieceSink(emit)
    try:
        for piece in pieces:
            container, _ = exporter.open_input(piece.segment, hashed=False)
            try:
                if out is None:
                    out = _open_output(sink, container, exporter, pieces, muxer_options(
                        every_frame=False, fragment_ms=fragment_ms))  # fmt: skip
                exporter.copy(out, piece, container)
            except (av.error.FFmpegError, OSError) as e:
                raise ExportError(f"reading segment {piece.segment.path} failed: {e}") from None
            finally:
                _close_quietly(container)
            if piece.place_utc_ns + piece.segment.media_duration_ns > to_utc_ns:
                break
        if out is None or out.clip_start_utc_ns is None or out.packets == 0:
            raise _no_footage(camera_id, from_utc_ns, to_utc_ns)
        try:
            out.container.close()  # the last fragment
        except (av.error.FFmpegError, OSError) as e:
            raise ExportError(f"finishing the stream failed: {e}") from None
        return out.clip_start_utc_ns, out.clip_end_utc_ns
    except _Stop:
        return (out.clip_start_utc_ns or 0, out.clip_end_utc_ns) if out is not None else (0, 0)
    finally:
        if out is not None:
            _close_quietly(out.container)


def _no_footage(camera_id: int, from_utc_ns: int, to_utc_ns: int) -> ExportError:
    return ExportError(
        f"no recordings for camera {camera_id} between {iso_utc(from_utc_ns)} and {iso_utc(to_utc_ns)}",
        kind="no_footage",
    )


def _create_tmp(tmp: Path, out_path: Path) -> None:
    try:
        os.close(create_exclusive(tmp))
    except FileExistsError:
        raise ExportError(
            f"{tmp} exists: another export to {out_path.name} is running or was interrupted"
        ) from None
    except OSError as e:
        raise ExportError(f"cannot create {tmp}: {e.strerror}") from None


def _write_clip(
    exporter: _Exporter, pieces: list[_Piece], tmp: Path, to_utc_ns: int, *, libav_faststart: bool
) -> tuple[_Output, list[tuple[_Piece, Callable[[], str]]]]:
    """Mux the pieces into ``tmp``. Returns the output state and, per piece used, its pending digest."""
    used: list[tuple[_Piece, Callable[[], str]]] = []
    out: _Output | None = None
    try:
        for piece in pieces:
            seg = piece.segment
            container, job = exporter.open_input(seg)
            assert job is not None
            try:
                if out is None:
                    options = {"movflags": "+faststart"} if libav_faststart else {}
                    out = _open_output(f"file:{tmp.resolve()}", container, exporter, pieces, options)
                copied = exporter.copy(out, piece, container)
            except (av.error.FFmpegError, OSError) as e:
                raise ExportError(f"reading segment {seg.path} failed: {e}") from None
            finally:
                _close_quietly(container)
            if copied:
                used.append((piece, job.result))
            if piece.place_utc_ns + seg.media_duration_ns > to_utc_ns:
                break
        assert out is not None
        out.container.close()  # writes the moov (and with libav's faststart moves it to the front)
    except (av.error.FFmpegError, OSError) as e:
        raise ExportError(f"writing the clip failed: {e}") from None
    finally:
        if out is not None:
            _close_quietly(out.container)
    return out, used


def _open_output(
    target: str | PieceSink,
    first: av.container.InputContainer,
    exporter: _Exporter,
    pieces: list[_Piece],
    options: dict[str, str],
) -> _Output:
    """The clip's muxer (to a file URL or a sink): video as in the first segment, audio as in the first
    segment that has any."""
    container = av.open(target, "w", format="mp4", options=options)
    try:
        vin = first.streams.video[0]
        video = container.add_stream_from_template(vin)
        video.time_base = vin.time_base
        if vin.codec_context.name == "hevc":
            video.codec_tag = "hvc1"
        audio = None
        with_audio = next((p.segment for p in pieces if p.segment.audio_codec), None)
        if with_audio is not None:
            audio = _audio_template(container, first, exporter, with_audio)
    except BaseException:
        _close_quietly(container)
        raise
    return _Output(container, video, audio, vin.codec_context.name, vin.codec_context.extradata or b"")


def _audio_template(
    container: av.container.OutputContainer,
    first: av.container.InputContainer,
    exporter: _Exporter,
    seg: Segment,
) -> av.stream.Stream | None:
    if first.streams.audio:
        return _add_audio(container, first.streams.audio[0])
    other, _ = exporter.open_input(seg, hashed=False)
    try:
        return _add_audio(container, other.streams.audio[0]) if other.streams.audio else None
    finally:
        _close_quietly(other)


def _add_audio(container: av.container.OutputContainer, ain: av.stream.Stream) -> av.stream.Stream:
    audio = container.add_stream_from_template(ain)
    audio.time_base = ain.time_base
    return audio


def _close_quietly(container: av.container.InputContainer | av.container.OutputContainer) -> None:
    with contextlib.suppress(av.error.FFmpegError, OSError):
        container.close()


def _finish_clip(tmp: Path, *, libav_faststart: bool) -> tuple[str, int]:
    """Give the clip its faststart layout (unless libav did), fsync it; (hex SHA-256, size)."""
    if not libav_faststart:
        return faststart_and_hash(tmp)
    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return sha256_file(tmp)


def _publish(tmp: Path, final: Path) -> None:
    """Give ``tmp`` its final name without ever replacing a file there, then drop the temporary name."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise ExportError(f"{final} already exists; exports never overwrite") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise ExportError(f"cannot create {final}: {e.strerror}") from None
        # A filesystem without hard links (FAT on a USB stick): check, then rename.
        if final.exists():
            raise ExportError(f"{final} already exists; exports never overwrite") from None
        tmp.rename(final)
        return
    tmp.unlink()


def _write_exclusive(path: Path, data: bytes) -> None:
    try:
        fd = create_exclusive(path)
    except FileExistsError:
        raise ExportError(f"{path} already exists; exports never overwrite") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
