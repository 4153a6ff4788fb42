"""Fragmented MP4 (ISO/IEC 14496-12) box parsing for the recorder: box headers, the init segment, ``moof``.

The segmenter remuxes camera packets with libav's mp4 muxer (``movflags=empty_moov+default_base_moof``,
``frag_duration``): a file is ``ftyp``, ``moov`` (with ``mvex/trex``), then ``moof`` + ``mdat`` pairs, and an
``mfra`` at a clean close. This module parses those boxes, byte-exactly; following a stream or a file box by
box (when is a fragment complete, where does a torn file's last complete fragment end) is
:mod:`edge.recorder.fmp4stream`'s job.

Every parser is pure (bytes in, frozen dataclass out) and raises :class:`~edge.errors.Malformed` with the box
path and its offset; nothing here reads a file or buffers an ``mdat`` payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Final, NoReturn

from edge.errors import Malformed

NS_PER_S: Final = 1_000_000_000

SAMPLE_IS_NON_SYNC: Final = 0x0001_0000

TFHD_BASE_DATA_OFFSET: Final = 0x00_0001
TFHD_SAMPLE_DESCRIPTION_INDEX: Final = 0x00_0002
TFHD_DEFAULT_DURATION: Final = 0x00_0008
TFHD_DEFAULT_SIZE: Final = 0x00_0010
TFHD_DEFAULT_FLAGS: Final = 0x00_0020
TFHD_DURATION_IS_EMPTY: Final = 0x01_0000
TFHD_DEFAULT_BASE_IS_MOOF: Final = 0x02_0000
_TFHD_KNOWN: Final = 0x03_003B

TRUN_DATA_OFFSET: Final = 0x00_0001
TRUN_FIRST_SAMPLE_FLAGS: Final = 0x00_0004
TRUN_SAMPLE_DURATION: Final = 0x00_0100
TRUN_SAMPLE_SIZE: Final = 0x00_0200
TRUN_SAMPLE_FLAGS: Final = 0x00_0400
TRUN_SAMPLE_CTS: Final = 0x00_0800
_TRUN_KNOWN: Final = 0x00_0F05
_TRUN_SAMPLE_FIELDS: Final = (TRUN_SAMPLE_DURATION, TRUN_SAMPLE_SIZE, TRUN_SAMPLE_FLAGS, TRUN_SAMPLE_CTS)


# --- box headers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoxHeader:
    """One box; ``size`` includes the header (8 bytes, 16 with a 64-bit largesize, +16 for uuid)."""

    type: str
    offset: int
    size: int
    header_size: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def body_offset(self) -> int:
        return self.offset + self.header_size


def _fourcc(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("latin-1")


def header_length(first8: bytes | bytearray | memoryview) -> int:
    """Full header length implied by a box's first 8 bytes."""
    (size,) = struct.unpack_from(">I", first8, 0)
    return (16 if size == 1 else 8) + (16 if bytes(first8[4:8]) == b"uuid" else 0)


def decode_header(buf: bytes | bytearray | memoryview, pos: int, offset: int, limit: int | None) -> BoxHeader:
    """Decode a complete header at ``buf[pos:]`` for a box at absolute ``offset``.

    ``limit`` is the absolute end a ``size == 0`` box extends to; ``None`` refuses such a box (a stream).
    The caller checks the box against its parent's end.
    """
    size, raw_type = struct.unpack_from(">I4s", buf, pos)
    box_type = _fourcc(raw_type)
    header_size = 8
    if size == 1:
        (size,) = struct.unpack_from(">Q", buf, pos + 8)
        header_size = 16
    elif size == 0:
        if limit is None:
            raise Malformed(f"{box_type!r} box at offset {offset} has size 0 (to end of file) in a stream")
        size = limit - offset
    if box_type == "uuid":
        header_size += 16
    if size < header_size:
        raise Malformed(f"{box_type!r} box at offset {offset} has size {size}, less than its header")
    return BoxHeader(box_type, offset, size, header_size)


def _iter(buf: memoryview, start: int, end: int, base: int, parent: str) -> Iterator[BoxHeader]:
    """Child boxes of ``buf[start:end]``; offsets in the result are absolute (``base`` + index)."""
    pos = start
    where = f" in {parent}" if parent else ""
    while pos < end:
        offset = base + pos
        if end - pos < 8:
            raise Malformed(f"{end - pos} stray bytes at offset {offset}{where}: too short for a box header")
        need = header_length(buf[pos : pos + 8])
        if end - pos < need:
            raise Malformed(f"box header at offset {offset}{where} needs {need} bytes, {end - pos} left")
        header = decode_header(buf, pos, offset, base + end)
        if header.end > base + end:
            raise Malformed(
                f"{header.type!r} box at offset {offset}{where} has size {header.size}, "
                f"overrunning its parent's end at offset {base + end}"
            )
        yield header
        pos += header.size


def iter_boxes(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> Iterator[BoxHeader]:
    """The boxes laid end to end in ``buf[start:end]`` (offsets index ``buf``); strict about overruns."""
    view = memoryview(buf)
    stop = len(view) if end is None else end
    if not 0 <= start <= stop <= len(view):
        raise Malformed(f"bad box range [{start}, {stop}) for a buffer of {len(view)} bytes")
    return _iter(view, start, stop, 0, "")


class _Reader:
    """Bounds-checked big-endian fields of one box body; every error names the box and its offset."""

    __slots__ = ("buf", "end", "pos", "where")

    def __init__(self, buf: memoryview, header: BoxHeader, base: int, path: str) -> None:
        self.buf = buf
        self.pos = header.body_offset - base
        self.end = header.end - base
        self.where = f"{path} at offset {header.offset}"

    def fail(self, message: str) -> NoReturn:
        raise Malformed(f"{self.where}: {message}")

    def _take(self, n: int) -> int:
        if self.end - self.pos < n:
            self.fail(
                f"truncated: needs {n} more bytes at body position {self.pos}, has {self.end - self.pos}"
            )
        pos = self.pos
        self.pos += n
        return pos

    def u16(self) -> int:
        return int(struct.unpack_from(">H", self.buf, self._take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack_from(">I", self.buf, self._take(4))[0])

    def s32(self) -> int:
        return int(struct.unpack_from(">i", self.buf, self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack_from(">Q", self.buf, self._take(8))[0])

    def skip(self, n: int) -> None:
        self._take(n)

    def full_box(self) -> tuple[int, int]:
        word = self.u32()
        return word >> 24, word & 0xFF_FFFF

    def u32_array(self, count: int) -> tuple[int, ...]:
        return struct.unpack_from(f">{count}I", self.buf, self._take(4 * count))

    @property
    def left(self) -> int:
        return self.end - self.pos


def _children(buf: memoryview, header: BoxHeader, base: int, path: str) -> Iterator[BoxHeader]:
    return _iter(buf, header.body_offset - base, header.end - base, base, f"{path} at offset {header.offset}")


# --- init segment ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackInfo:
    """One ``trak`` of the init segment, with the fragment defaults of its ``trex``."""

    track_id: int
    handler: str
    timescale: int
    codec: str
    width: int | None
    height: int | None
    default_sample_duration: int
    default_sample_size: int
    default_sample_flags: int


@dataclass(frozen=True)
class InitInfo:
    """The init segment. ``size`` is the byte count from the start of the data to the end of the ``moov``."""

    tracks: tuple[TrackInfo, ...]
    size: int

    def track(self, track_id: int) -> TrackInfo | None:
        return next((t for t in self.tracks if t.track_id == track_id), None)

    @property
    def video_track(self) -> TrackInfo | None:
        return next((t for t in self.tracks if t.handler == "vide"), None)


def parse_init(data: bytes | memoryview) -> InitInfo:
    """Parse an init segment: ``ftyp`` + ``moov`` (or just ``moov``). Bytes after the ``moov`` are ignored."""
    view = memoryview(data)
    for header in _iter(view, 0, len(view), 0, ""):
        if header.type == "moov":
            return parse_moov_box(view, header, 0)
        if header.type not in ("ftyp", "free", "skip", "uuid"):
            raise Malformed(f"{header.type!r} box at offset {header.offset} before the moov")
    raise Malformed(f"no moov box in {len(view)} bytes of init data")


def parse_moov_box(buf: memoryview, moov: BoxHeader, base: int) -> InitInfo:
    """Parse the ``moov`` box ``moov``, held in ``buf`` (``buf[0]`` sits at absolute offset ``base``)."""
    traks: list[TrackInfo] = []
    trexes: dict[int, tuple[int, int, int]] = {}
    mvex_seen = False
    for child in _children(buf, moov, base, "moov"):
        if child.type == "trak":
            trak = _parse_trak(buf, child, base)
            if any(t.track_id == trak.track_id for t in traks):
                raise Malformed(f"moov/trak at offset {child.offset}: duplicate track_ID {trak.track_id}")
            traks.append(trak)
        elif child.type == "mvex":
            mvex_seen = True
            for box in _children(buf, child, base, "moov/mvex"):
                if box.type == "trex":
                    r = _Reader(buf, box, base, "moov/mvex/trex")
                    r.full_box()
                    track_id = r.u32()
                    r.u32()  # default_sample_description_index
                    trexes[track_id] = (r.u32(), r.u32(), r.u32())  # duration, size, flags
    where = f"moov at offset {moov.offset}"
    if not traks:
        raise Malformed(f"{where}: no trak")
    if not mvex_seen:
        raise Malformed(f"{where}: no mvex, not a fragmented MP4")
    tracks = []
    for t in traks:
        trex = trexes.get(t.track_id)
        if trex is None:
            raise Malformed(f"{where}: no trex for track {t.track_id}")
        duration, size, flags = trex
        tracks.append(
            replace(t, default_sample_duration=duration, default_sample_size=size, default_sample_flags=flags)
        )
    return InitInfo(tuple(tracks), moov.end)


def _find(buf: memoryview, parent: BoxHeader, base: int, path: str, box_type: str) -> BoxHeader:
    for child in _children(buf, parent, base, path):
        if child.type == box_type:
            return child
    raise Malformed(f"{path} at offset {parent.offset}: no {box_type}")


def _parse_trak(buf: memoryview, trak: BoxHeader, base: int) -> TrackInfo:
    """The track without its trex defaults (zero here; the moov fills them in)."""
    r = _Reader(buf, _find(buf, trak, base, "moov/trak", "tkhd"), base, "moov/trak/tkhd")
    version, _ = r.full_box()
    r.skip(16 if version == 1 else 8)  # creation and modification times
    track_id = r.u32()
    if track_id == 0:
        r.fail("track_ID 0")
    mdia = _find(buf, trak, base, "moov/trak", "mdia")
    r = _Reader(buf, _find(buf, mdia, base, "moov/trak/mdia", "mdhd"), base, "moov/trak/mdia/mdhd")
    version, _ = r.full_box()
    r.skip(16 if version == 1 else 8)
    timescale = r.u32()
    if timescale == 0:
        r.fail("timescale 0")
    r = _Reader(buf, _find(buf, mdia, base, "moov/trak/mdia", "hdlr"), base, "moov/trak/mdia/hdlr")
    r.full_box()
    r.skip(4)  # pre_defined
    handler = _fourcc(struct.pack(">I", r.u32()))
    minf = _find(buf, mdia, base, "moov/trak/mdia", "minf")
    stbl = _find(buf, minf, base, "moov/trak/mdia/minf", "stbl")
    stsd = _find(buf, stbl, base, "moov/trak/mdia/minf/stbl", "stsd")
    r = _Reader(buf, stsd, base, "moov/trak/mdia/minf/stbl/stsd")
    r.full_box()
    if r.u32() == 0:
        r.fail("no sample entry")
    entry = next(_iter(buf, r.pos, r.end, base, r.where), None)
    if entry is None:
        r.fail("no sample entry")
    width = height = None
    if handler == "vide":
        r = _Reader(buf, entry, base, f"moov/trak/mdia/minf/stbl/stsd/{entry.type}")
        r.skip(24)  # reserved, data_reference_index, pre_defined, reserved
        width, height = r.u16(), r.u16()
    return TrackInfo(track_id, handler, timescale, entry.type, width, height, 0, 0, 0)


# --- fragments ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackRun:
    """One track's samples in a fragment (all its ``trun`` boxes together).

    ``duration`` is in the track's timescale; ``data_offset`` is the absolute offset of the first sample byte
    (for ``parse_moof`` callers: relative to the ``moof_offset`` they passed).
    """

    track_id: int
    base_decode_time: int
    duration: int
    sample_count: int
    first_sample_is_sync: bool
    sync_sample_count: int
    data_offset: int
    data_size: int


@dataclass(frozen=True)
class FragmentInfo:
    sequence: int
    runs: tuple[TrackRun, ...]

    def run(self, track_id: int) -> TrackRun | None:
        return next((r for r in self.runs if r.track_id == track_id), None)

    def video_run(self, init: InitInfo) -> TrackRun | None:
        video = init.video_track
        return None if video is None else self.run(video.track_id)

    def media_start_ns(self, track_id: int, init: InitInfo) -> int | None:
        """Decode time of the track's first sample in this fragment, or None if the track has no run."""
        run, track = self.run(track_id), init.track(track_id)
        if run is None or track is None:
            return None
        return ticks_to_ns(run.base_decode_time, track.timescale)

    def media_end_ns(self, track_id: int, init: InitInfo) -> int | None:
        """Decode time just after the track's last sample in this fragment, or None if it has no run."""
        run, track = self.run(track_id), init.track(track_id)
        if run is None or track is None:
            return None
        return ticks_to_ns(run.base_decode_time + run.duration, track.timescale)


def ticks_to_ns(ticks: int, timescale: int) -> int:
    return ticks * NS_PER_S // timescale


def parse_moof(moof: bytes | memoryview, init: InitInfo, moof_offset: int = 0) -> FragmentInfo:
    """Parse a ``moof`` box (bytes starting with it; anything after it is ignored).

    ``moof_offset`` is where the box sits in its file: it makes :attr:`TrackRun.data_offset` absolute.
    """
    view = memoryview(moof)
    header = next(_iter(view, 0, len(view), moof_offset, ""))  # checks the first box only
    if header.type != "moof":
        raise Malformed(f"expected a moof at offset {moof_offset}, found {header.type!r}")
    return parse_moof_box(view, header, moof_offset, init)


def parse_moof_box(buf: memoryview, moof: BoxHeader, base: int, init: InitInfo) -> FragmentInfo:
    """Parse the ``moof`` box ``moof``, held in ``buf`` (``buf[0]`` sits at absolute offset ``base``)."""
    sequence: int | None = None
    runs: list[TrackRun] = []
    data_end = moof.offset  # implicit base of a traf with neither base-data-offset nor default-base-is-moof
    for child in _children(buf, moof, base, "moof"):
        if child.type == "mfhd":
            r = _Reader(buf, child, base, "moof/mfhd")
            r.full_box()
            sequence = r.u32()
        elif child.type == "traf":
            run = _parse_traf(buf, child, base, moof_offset=moof.offset, implicit=data_end, init=init)
            if any(other.track_id == run.track_id for other in runs):
                raise Malformed(f"moof/traf at offset {child.offset}: second traf for track {run.track_id}")
            runs.append(run)
            data_end = run.data_offset + run.data_size
    if sequence is None:
        raise Malformed(f"moof at offset {moof.offset}: no mfhd")
    return FragmentInfo(sequence, tuple(runs))


@dataclass(frozen=True)
class _Tfhd:
    track: TrackInfo
    base: int
    duration: int
    size: int
    flags: int
    empty: bool


def _parse_tfhd(
    buf: memoryview, header: BoxHeader, base: int, *, moof_offset: int, implicit: int, init: InitInfo
) -> _Tfhd:
    r = _Reader(buf, header, base, "moof/traf/tfhd")
    _, flags = r.full_box()
    if flags & ~_TFHD_KNOWN:
        r.fail(f"unknown flags 0x{flags:06x}")
    track_id = r.u32()
    track = init.track(track_id)
    if track is None:
        r.fail(f"track {track_id} is not in the init segment")
    data_base = moof_offset if flags & TFHD_DEFAULT_BASE_IS_MOOF else implicit
    if flags & TFHD_BASE_DATA_OFFSET:
        data_base = r.u64()
    if flags & TFHD_SAMPLE_DESCRIPTION_INDEX:
        r.u32()
    duration = r.u32() if flags & TFHD_DEFAULT_DURATION else track.default_sample_duration
    size = r.u32() if flags & TFHD_DEFAULT_SIZE else track.default_sample_size
    sample_flags = r.u32() if flags & TFHD_DEFAULT_FLAGS else track.default_sample_flags
    return _Tfhd(track, data_base, duration, size, sample_flags, bool(flags & TFHD_DURATION_IS_EMPTY))


def _parse_traf(
    buf: memoryview, traf: BoxHeader, base: int, *, moof_offset: int, implicit: int, init: InitInfo
) -> TrackRun:
    where = f"moof/traf at offset {traf.offset}"
    tfhd: _Tfhd | None = None
    decode_time: int | None = None
    truns: list[BoxHeader] = []
    for child in _children(buf, traf, base, "moof/traf"):
        if child.type == "tfhd":
            if tfhd is not None:
                raise Malformed(f"{where}: second tfhd")
            tfhd = _parse_tfhd(buf, child, base, moof_offset=moof_offset, implicit=implicit, init=init)
        elif child.type == "tfdt":
            r = _Reader(buf, child, base, "moof/traf/tfdt")
            version, _ = r.full_box()
            decode_time = r.u64() if version == 1 else r.u32()
        elif child.type == "trun":
            truns.append(child)
    if tfhd is None:
        raise Malformed(f"{where}: no tfhd")
    if decode_time is None:
        raise Malformed(f"{where}: no tfdt")
    if tfhd.empty:
        if truns:
            raise Malformed(f"{where}: duration-is-empty with {len(truns)} trun boxes")
        return TrackRun(tfhd.track.track_id, decode_time, tfhd.duration, 0, False, 0, tfhd.base, 0)
    duration = count = syncs = size = 0
    first_sync = False
    data_offset = next_offset = tfhd.base
    for i, header in enumerate(truns):
        run = _parse_trun(buf, header, base, tfhd, next_offset)
        if i == 0:
            data_offset, first_sync = run.data_offset, run.first_sample_is_sync
        duration += run.duration
        count += run.sample_count
        syncs += run.sync_sample_count
        size += run.data_size
        next_offset = run.data_offset + run.data_size
    return TrackRun(tfhd.track.track_id, decode_time, duration, count, first_sync, syncs, data_offset, size)


def _parse_trun(buf: memoryview, header: BoxHeader, base: int, tfhd: _Tfhd, next_offset: int) -> TrackRun:
    r = _Reader(buf, header, base, "moof/traf/trun")
    _, flags = r.full_box()
    if flags & ~_TRUN_KNOWN:
        r.fail(f"unknown flags 0x{flags:06x}")
    if flags & TRUN_FIRST_SAMPLE_FLAGS and flags & TRUN_SAMPLE_FLAGS:
        r.fail("both first-sample-flags and per-sample flags present")
    count = r.u32()
    data_offset = tfhd.base + r.s32() if flags & TRUN_DATA_OFFSET else next_offset
    first_flags = r.u32() if flags & TRUN_FIRST_SAMPLE_FLAGS else None
    fields = [bit for bit in _TRUN_SAMPLE_FIELDS if flags & bit]
    need = 4 * len(fields) * count
    if need != r.left:
        r.fail(f"sample_count {count} needs {need} bytes of sample entries, box has {r.left}")
    values = r.u32_array(len(fields) * count)
    step = len(fields)

    def column(bit: int) -> tuple[int, ...] | None:
        return values[fields.index(bit) :: step] if bit in fields else None

    durations, sizes = column(TRUN_SAMPLE_DURATION), column(TRUN_SAMPLE_SIZE)
    sample_flags = column(TRUN_SAMPLE_FLAGS)
    duration = sum(durations) if durations is not None else tfhd.duration * count
    data_size = sum(sizes) if sizes is not None else tfhd.size * count
    if sample_flags is not None:
        syncs = sum(1 for f in sample_flags if not f & SAMPLE_IS_NON_SYNC)
        first_sync = count > 0 and not sample_flags[0] & SAMPLE_IS_NON_SYNC
    else:
        default_sync = not tfhd.flags & SAMPLE_IS_NON_SYNC
        first_sync = count > 0 and (
            default_sync if first_flags is None else not first_flags & SAMPLE_IS_NON_SYNC
        )
        syncs = (count - 1 if count else 0) * default_sync + first_sync
    if data_offset < 0:
        r.fail(f"data offset {data_offset} is before the start of the file")
    return TrackRun(tfhd.track.track_id, 0, duration, count, first_sync, syncs, data_offset, data_size)
