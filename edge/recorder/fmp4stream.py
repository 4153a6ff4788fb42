"""Following a fragmented MP4 box by box: the live tracker and the crash-recovery scan.

Built on the pure parsers of :mod:`edge.recorder.fmp4`, this module answers two questions, byte-exactly:

* while writing: when is the init segment, and then each fragment, complete? (:class:`FragmentTracker`, fed
  the bytes libav writes, in whatever chunks it writes them);
* after a crash: where does the last complete fragment of a file end? (:func:`scan_file`).

Both check the order of the top-level boxes the same way and buffer only ``ftyp``/``moov``/``moof`` bodies,
never an ``mdat`` payload; only :func:`scan_file` reads a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Final

from edge.errors import Malformed
from edge.recorder.fmp4 import (
    BoxHeader,
    FragmentInfo,
    InitInfo,
    TrackInfo,
    decode_header,
    header_length,
    parse_moof_box,
    parse_moov_box,
    ticks_to_ns,
)

# moov and moof are buffered whole; a box claiming more than this is garbage, not a bigger camera.
MAX_BUFFERED_BOX: Final = 16 * 1024 * 1024
# Top-level boxes that may appear in a fragmented file and carry nothing the recorder needs.
SKIPPED_BOXES: Final = frozenset(
    {"free", "skip", "uuid", "styp", "sidx", "ssix", "prft", "emsg", "mfra", "udta", "meta", "pdin"}
)


# --- incremental tracking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitComplete:
    end_offset: int
    init: InitInfo


@dataclass(frozen=True)
class FragmentComplete:
    """A ``moof`` and its ``mdat``: bytes ``[start_offset, end_offset)`` of the stream."""

    start_offset: int
    end_offset: int
    info: FragmentInfo


Event = InitComplete | FragmentComplete


class _Layout:
    """The order of top-level boxes in a fragmented file, shared by the tracker and the file scan."""

    def __init__(self) -> None:
        self.init: InitInfo | None = None
        self.closed = False  # an mfra went by
        self._first = True
        self._moof: tuple[int, FragmentInfo] | None = None

    def begin(self, header: BoxHeader) -> bool:
        """Check a box whose header is complete; True if its body must be buffered."""
        first, self._first = self._first, False
        kind, at = header.type, f"{header.type!r} box at offset {header.offset}"
        if self.init is None:
            if kind == "ftyp" and not first:
                raise Malformed(f"{at} is not the first box")
            if kind not in ("ftyp", "moov", "free", "skip", "uuid"):
                raise Malformed(f"{at} before the moov (expected ftyp or moov)")
        elif kind == "moof":
            if self._moof is not None:
                raise Malformed(f"{at} follows the moof at offset {self._moof[0]} without an mdat")
        elif kind == "mdat":
            if self._moof is None:
                raise Malformed(f"{at} has no moof before it")
            self._check_data(header)
        elif kind not in SKIPPED_BOXES:
            raise Malformed(f"unexpected {at} after the init segment")
        buffered = kind in ("ftyp", "moov", "moof")
        if buffered and header.size > MAX_BUFFERED_BOX:
            raise Malformed(f"{at} claims {header.size} bytes, over the {MAX_BUFFERED_BOX} byte limit")
        return buffered

    def _check_data(self, mdat: BoxHeader) -> None:
        assert self._moof is not None
        moof_offset, info = self._moof
        for run in info.runs:
            if run.data_size and not mdat.body_offset <= run.data_offset <= mdat.end - run.data_size:
                raise Malformed(
                    f"moof at offset {moof_offset}: track {run.track_id} data "
                    f"[{run.data_offset}, {run.data_offset + run.data_size}) is outside the mdat "
                    f"[{mdat.body_offset}, {mdat.end})"
                )

    def end(self, header: BoxHeader, box: memoryview | None) -> Event | None:
        """A box is complete; ``box`` holds its bytes (header included) if :meth:`begin` asked for them."""
        if header.type == "moov":
            assert box is not None
            self.init = parse_moov_box(box, header, header.offset)
            return InitComplete(header.end, self.init)
        if header.type == "moof" and self.init is not None:
            assert box is not None
            self._moof = (header.offset, parse_moof_box(box, header, header.offset, self.init))
        elif header.type == "mdat" and self._moof is not None:
            start, info = self._moof
            self._moof = None
            return FragmentComplete(start, header.end, info)
        elif header.type == "mfra":
            self.closed = True
        return None


class FragmentTracker:
    """Follows the bytes libav writes and says when the init segment and each fragment are complete.

    Buffers only ftyp/moov/moof boxes (never an mdat payload); any chunking works. After a
    :class:`Malformed`, the tracker refuses further input.
    """

    def __init__(self) -> None:
        self.offset = 0
        self._layout = _Layout()
        self._head = bytearray()
        self._box: BoxHeader | None = None
        self._body: bytearray | None = None
        self._left = 0
        self._box_start = 0
        self._failed: Malformed | None = None

    @property
    def init(self) -> InitInfo | None:
        return self._layout.init

    @property
    def closed(self) -> bool:
        """True once an mfra (written by libav at a clean close) has gone by."""
        return self._layout.closed

    def feed(self, data: bytes | memoryview) -> list[InitComplete | FragmentComplete]:
        if self._failed is not None:
            raise Malformed(f"tracker failed earlier: {self._failed.message}")
        try:
            return self._feed(memoryview(data).cast("B"))
        except Malformed as e:
            self._failed = e
            raise

    def _feed(self, view: memoryview) -> list[Event]:
        events: list[Event] = []
        pos, n = 0, len(view)
        while pos < n:
            if self._box is None:
                need = header_length(self._head) if len(self._head) >= 8 else 8
                take = min(need - len(self._head), n - pos)
                self._head += view[pos : pos + take]
                pos += take
                if len(self._head) >= 8 and len(self._head) == header_length(self._head):
                    self._start_box()
            else:
                take = min(self._left, n - pos)
                if self._body is not None:
                    self._body += view[pos : pos + take]
                pos += take
                self._left -= take
            if self._box is not None and self._left == 0:
                event = self._end_box()
                if event is not None:
                    events.append(event)
        self.offset += n
        return events

    def _start_box(self) -> None:
        header = decode_header(self._head, 0, self._box_start, None)
        buffered = self._layout.begin(header)
        self._box = header
        self._body = bytearray(self._head) if buffered else None
        self._left = header.size - header.header_size
        self._head.clear()

    def _end_box(self) -> Event | None:
        header, body = self._box, self._body
        assert header is not None
        self._box, self._body = None, None
        self._box_start = header.end
        return self._layout.end(header, None if body is None else memoryview(body))


# --- crash recovery ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileScan:
    """What a (possibly torn) fragmented MP4 file holds.

    ``complete_end`` is the end of the last complete moof+mdat (or of the init segment if none): truncating
    the file there leaves a valid file. ``stop_reason`` says why the scan stopped before ``file_size`` (a
    partial box, a zero-filled tail, a malformed box), or is None if every byte belonged to a complete box.
    """

    init: InitInfo
    init_end: int
    fragments: tuple[FragmentComplete, ...]
    complete_end: int
    file_size: int
    closed_end: int | None  # end of the mfra that directly follows the last fragment (closed cleanly)
    stop_reason: str | None

    @property
    def closed(self) -> bool:
        return self.closed_end is not None

    @property
    def durable_end(self) -> int:
        """Where a recovered file should end: after its mfra if it was closed cleanly, else after the last
        complete fragment."""
        return self.closed_end if self.closed_end is not None else self.complete_end

    @property
    def main_track(self) -> TrackInfo:
        """The video track, or the first track of an audio-only file: the one the media times follow."""
        return self.init.video_track or self.init.tracks[0]

    @property
    def media_duration_ns(self) -> int:
        """Summed duration of the main track's complete fragments."""
        track = self.main_track
        ticks = 0
        for fragment in self.fragments:
            run = fragment.info.run(track.track_id)
            ticks += 0 if run is None else run.duration
        return ticks_to_ns(ticks, track.timescale)

    @property
    def media_start_ns(self) -> int | None:
        """Decode time of the main track's first sample, or None without fragments."""
        track = self.main_track
        starts = (f.info.media_start_ns(track.track_id, self.init) for f in self.fragments)
        return next((s for s in starts if s is not None), None)

    @property
    def media_end_ns(self) -> int | None:
        """Decode time just after the main track's last sample in a complete fragment."""
        track = self.main_track
        ends = (f.info.media_end_ns(track.track_id, self.init) for f in reversed(self.fragments))
        return next((e for e in ends if e is not None), None)


class _Torn(Exception):
    """The file ends (or turns to zeros) inside a box."""


class _Zeros(_Torn):
    """Only zero bytes where the next box header should be."""


def _read_exact(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise _Torn(f"read {len(data)} of {n} bytes at offset {offset}")
    return data


def scan_file(f: BinaryIO, size: int | None = None) -> FileScan:
    """Find the complete fragments of a file, reading only box headers and moov/moof bodies.

    A torn tail (partial box, moof without its full mdat, zero-filled tail) ends the scan without error, and
    so does a malformed box after the init segment (nothing after it can be trusted); ``stop_reason`` says
    which. A missing, torn or malformed ftyp/moov raises :class:`Malformed`.
    """
    file_size = f.seek(0, 2) if size is None else size
    layout = _Layout()
    fragments: list[FragmentComplete] = []
    init_end = 0
    pos = 0
    stop_reason: str | None = None
    closed_end: int | None = None
    zeros_after = True  # nothing, or zeros, follows the last box read
    while pos < file_size:
        try:
            header = _scan_header(f, pos, file_size)
            buffered = layout.begin(header)
            body = memoryview(_read_exact(f, pos, header.size)) if buffered else None
            event = layout.end(header, body)
        except (_Torn, Malformed) as e:
            if layout.init is None:
                if isinstance(e, Malformed):
                    raise
                raise Malformed(f"init segment torn: {e}") from None
            stop_reason, zeros_after = str(e), isinstance(e, _Zeros)
            break
        if isinstance(event, InitComplete):
            init_end = event.end_offset
        elif isinstance(event, FragmentComplete):
            fragments.append(event)
            closed_end = None
        elif header.type == "mfra" and fragments and fragments[-1].end_offset == pos:
            closed_end = header.end
        pos = header.end
    if layout.init is None:
        raise Malformed(f"no moov in {file_size} bytes" if file_size else "empty file: no ftyp/moov")
    last_box_is_fragment = bool(fragments) and fragments[-1].end_offset == pos
    if last_box_is_fragment and zeros_after and _zero_tail(f, fragments[-1]):
        dropped = fragments.pop()
        closed_end = None
        stop_reason = f"fragment at offset {dropped.start_offset} ends in a zero byte: zero-filled tail"
    complete_end = fragments[-1].end_offset if fragments else init_end
    return FileScan(layout.init, init_end, tuple(fragments), complete_end, file_size, closed_end, stop_reason)


def _scan_header(f: BinaryIO, pos: int, file_size: int) -> BoxHeader:
    head = _read_exact(f, pos, min(8, file_size - pos))
    if head == bytes(len(head)):
        raise _Zeros(f"zero-filled from offset {pos}")
    if len(head) < 8:
        raise _Torn(f"partial box header at offset {pos}")
    need = header_length(head)
    if need > 8:
        if file_size - pos < need:
            raise _Torn(f"partial box header at offset {pos}")
        head = _read_exact(f, pos, need)
    header = decode_header(head, 0, pos, file_size)
    if header.end > file_size:
        raise _Torn(
            f"{header.type!r} box at offset {pos} needs {header.size} bytes, file ends at {file_size}"
        )
    return header


def _zero_tail(f: BinaryIO, fragment: FragmentComplete) -> bool:
    """True if the fragment's last byte is zero: the file was extended with zeros (a power cut after the size
    reached the disk but not the data) from inside this mdat.

    H.264/H.265 NAL units end in the rbsp stop bit and AAC frames in ID_END, so real data does not end in a
    zero byte; an encoder appending cabac_zero_words would cost one good fragment here, only in recovery.
    """
    f.seek(fragment.end_offset - 1)
    return f.read(1) == b"\x00"
