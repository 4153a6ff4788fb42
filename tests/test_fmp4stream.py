"""The fragment tracker and the crash scan: real libav output fed in libav's own writes and in any chunking,
crafted streams, torn and zero-filled files.

The real samples (:mod:`tests.fmp4_samples`) are muxed in the test session with PyAV, the way the recorder
does it; the write sizes libav used are kept so the tracker can be fed exactly what the recorder will see.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import struct
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import Malformed
from edge.recorder.fmp4 import BoxHeader, iter_boxes, parse_init, parse_moof
from edge.recorder.fmp4stream import FileScan, FragmentComplete, FragmentTracker, InitComplete, scan_file
from tests.fmp4_samples import (
    FUZZ,
    SYNC,
    Muxed,
    box,
    fragment,
    init_segment,
    moof,
    tfdt,
    tfhd,
    top_level,
    trun,
    u32,
)

Event = InitComplete | FragmentComplete


def _events(tracker: FragmentTracker, chunks: Iterator[bytes | memoryview]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events.extend(tracker.feed(chunk))
    return events


# --- the tracker -------------------------------------------------------------------------------------------


def _whole(sample: Muxed) -> list[Event]:
    return FragmentTracker().feed(sample.data)


@pytest.mark.parametrize("name", ["h264", "hevc", "h264_aac", "absolute"])
def test_tracker_events_match_the_layout(samples: dict[str, Muxed], name: str) -> None:
    sample = samples[name]
    tracker = FragmentTracker()
    events = _events(tracker, iter(sample.writes))
    assert events == _whole(sample)
    assert tracker.offset == len(sample.data)
    assert tracker.closed
    boxes = top_level(sample.data)
    moov = boxes[1]
    assert events[0] == InitComplete(moov.end, parse_init(sample.data))
    fragments = [e for e in events if isinstance(e, FragmentComplete)]
    assert len(fragments) == len(events) - 1
    pairs = [(a, b) for a, b in itertools.pairwise(boxes) if (a.type, b.type) == ("moof", "mdat")]
    assert [(e.start_offset, e.end_offset) for e in fragments] == [(m.offset, d.end) for m, d in pairs]
    init = parse_init(sample.data)
    assert [e.info for e in fragments] == [
        parse_moof(sample.data[m.offset :], init, m.offset) for m, _ in pairs
    ]


def test_libav_ends_a_write_at_each_fragment_end(samples: dict[str, Muxed]) -> None:
    """libav flushes its buffer at each fragment end: the fragment is complete when its last write returns."""
    for sample in samples.values():
        ends, position = set(), 0
        for write in sample.writes:
            position += len(write)
            ends.add(position)
        events = _whole(sample)
        assert {e.end_offset for e in events} <= ends


def test_tracker_one_byte_at_a_time(h264: Muxed) -> None:
    view = memoryview(h264.data)
    assert _events(FragmentTracker(), (view[i : i + 1] for i in range(len(view)))) == _whole(h264)


@FUZZ
@given(cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=60))
def test_tracker_any_chunking(two_tracks: Muxed, cuts: list[int]) -> None:
    data = two_tracks.data
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    chunks = (data[a:b] for a, b in itertools.pairwise(bounds))
    assert _events(FragmentTracker(), chunks) == _whole(two_tracks)


def test_tracker_skips_boxes_between_fragments(h264: Muxed) -> None:
    boxes = top_level(h264.data)
    extra = box("styp", b"msdh", u32(0)) + box("free", bytes(5)) + box("sidx", bytes(24))
    extra += box("uuid", bytes(16), b"vendor")
    shifted = bytearray(h264.data[: boxes[1].end])
    for b in boxes[2:]:
        if b.type == "moof":
            shifted += extra
        shifted += h264.data[b.offset : b.end]
    tracker = FragmentTracker()
    events = tracker.feed(bytes(shifted))
    fragments = [e for e in events if isinstance(e, FragmentComplete)]
    assert [f.info.sequence for f in fragments] == [1, 2, 3, 4, 5, 6]
    assert fragments[0].start_offset == boxes[1].end + len(extra)
    assert tracker.closed  # the mfra went by


def test_tracker_never_buffers_an_mdat() -> None:
    one = fragment(1, [(1, 0, {"sizes": [1 << 20] * 64}, b"")])
    head = init_segment() + one[: struct.unpack_from(">I", one)[0]]
    mdat_header = struct.pack(">I4s", 8 + (64 << 20), b"mdat")
    payload = memoryview(bytes(1 << 20))
    tracker = FragmentTracker()
    tracker.feed(head + mdat_header)
    tracemalloc.start()
    try:
        events = [e for _ in range(64) for e in tracker.feed(payload)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert [type(e) for e in events] == [FragmentComplete]
    assert tracker.offset == len(head) + 8 + (64 << 20)


def test_tracker_refuses_garbage_and_stays_failed(h264: Muxed) -> None:
    init_end = top_level(h264.data)[1].end
    tracker = FragmentTracker()
    tracker.feed(h264.data[:init_end])
    with pytest.raises(Malformed, match=rf"unexpected 'ab\\x01c' box at offset {init_end} after the init"):
        tracker.feed(b"\x00\x00\x00\x10ab\x01c" + bytes(8))
    with pytest.raises(Malformed, match="tracker failed earlier: unexpected"):
        tracker.feed(h264.data[init_end:])


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"\x00\x00\x00\x04ftyp", r"'ftyp' box at offset 0 has size 4, less than its header"),
        (b"\x00\x00\x00\x00ftyp", r"'ftyp' box at offset 0 has size 0 \(to end of file\) in a stream"),
        (b"\x00\x00\x00\x08moof", r"'moof' box at offset 0 before the moov"),
        (box("free", b"") + box("ftyp", b"isom"), r"'ftyp' box at offset 8 is not the first box"),
        (b"\x7f\xff\xff\xffmoov", r"'moov' box at offset 0 claims 2147483647 bytes, over the 16777216"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_tracker_malformed_streams(stream: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        FragmentTracker().feed(stream)


def test_tracker_order_errors() -> None:
    init = init_segment()
    one = fragment(1, [(1, 0, {"sizes": [3]}, b"abc")])
    moof_size = struct.unpack_from(">I", one)[0]
    with pytest.raises(Malformed, match=rf"'mdat' box at offset {len(init)} has no moof before it"):
        FragmentTracker().feed(init + box("mdat", b"x"))
    with pytest.raises(Malformed, match=rf"'moof' box at offset {len(init) + moof_size} follows the moof"):
        FragmentTracker().feed(init + one[:moof_size] + one[:moof_size])
    with pytest.raises(Malformed, match=r"track 1 data \[\d+, \d+\) is outside the mdat"):
        FragmentTracker().feed(init + one[:moof_size] + box("mdat", b"ab"))
    with pytest.raises(Malformed, match=r"unexpected 'moov' box at offset \d+ after the init segment"):
        FragmentTracker().feed(init + init[init.index(b"moov") - 4 :])


# --- scan_file and torn files ------------------------------------------------------------------------------


def _expected_end(boxes: list[BoxHeader], cut: int) -> int:
    end = boxes[1].end
    for a, b in itertools.pairwise(boxes):
        if (a.type, b.type) == ("moof", "mdat") and b.end <= cut:
            end = b.end
    return end


def _cuts(data: bytes) -> list[int]:
    """Every box boundary (top level and inside each moof), and offsets inside each box."""
    boxes = top_level(data)
    cuts = {len(data)}
    for b in boxes[2:]:
        cuts |= {b.offset, b.offset + 1, b.offset + 7, b.offset + 8, b.offset + b.size // 2, b.end - 1}
        if b.type == "moof":
            cuts |= {h.offset + d for h in _nested(data, b) for d in (0, 5, h.size - 1)}
    return sorted(c for c in cuts if boxes[1].end <= c <= len(data))


def _nested(data: bytes, parent: BoxHeader) -> Iterator[BoxHeader]:
    for child in iter_boxes(data, parent.body_offset, parent.end):
        yield child
        if child.type == "traf":
            yield from _nested(data, child)


def _scan(data: bytes) -> FileScan:
    return scan_file(io.BytesIO(data))


def test_scan_whole_file_matches_tracker(two_tracks: Muxed) -> None:
    scan = _scan(two_tracks.data)
    events = _whole(two_tracks)
    assert list(scan.fragments) == events[1:]
    assert scan.init_end == events[0].end_offset
    assert scan.complete_end == scan.fragments[-1].end_offset
    assert scan.file_size == len(two_tracks.data)
    assert scan.complete_end < scan.file_size  # the mfra is after the last fragment
    assert (scan.closed, scan.stop_reason) == (True, None)


@pytest.mark.parametrize("name", ["h264", "h264_aac"])
def test_scan_truncated_anywhere_after_init(samples: dict[str, Muxed], name: str) -> None:
    data = samples[name].data
    boxes = top_level(data)
    for cut in _cuts(data):
        expected = _expected_end(boxes, cut)
        scan = _scan(data[:cut])
        assert scan.complete_end == expected, cut
        assert scan.complete_end == (scan.fragments[-1].end_offset if scan.fragments else boxes[1].end)
        assert scan.file_size == cut
        zeroed = _scan(data[:cut] + bytes(len(data) - cut))
        assert zeroed.complete_end == expected, cut
        assert zeroed.fragments == scan.fragments
        if cut < boxes[-1].offset:  # a zero-filled mfra still looks like a box
            assert zeroed.stop_reason is not None


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10**9), zeros=st.booleans())
def test_scan_random_cut(h264: Muxed, cut: int, zeros: bool) -> None:
    data = h264.data
    boxes = top_level(data)
    cut = boxes[1].end + cut % (len(data) - boxes[1].end + 1)
    torn = data[:cut] + (bytes(len(data) - cut) if zeros else b"")
    assert _scan(torn).complete_end == _expected_end(boxes, cut)


def test_scan_reads_only_headers_and_moofs(h264: Muxed) -> None:
    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n: int | None = -1) -> bytes:
            data = super().read(n)
            self.read_bytes += len(data)
            return data

    f = Counting(h264.data)
    scan = scan_file(f, size=len(h264.data))
    mdats = [b for b in top_level(h264.data) if b.type == "mdat"]
    assert f.read_bytes <= len(h264.data) - sum(m.size - 16 for m in mdats)
    assert len(scan.fragments) == 6


def test_scan_zero_tail_inside_last_mdat(h264: Muxed) -> None:
    boxes = top_level(h264.data)
    last_mdat = [b for b in boxes if b.type == "mdat"][-1]
    data = h264.data[: last_mdat.end - 1] + b"\x00"  # the size made it to disk, the last byte did not
    scan = _scan(data)
    assert len(scan.fragments) == 5
    assert scan.stop_reason == f"fragment at offset {boxes[-3].offset} ends in a zero byte: zero-filled tail"


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (0, r"empty file: no ftyp/moov"),
        (5, r"init segment torn: partial box header at offset 0"),
        (20, r"init segment torn: 'ftyp' box at offset 0 needs 28 bytes, file ends at 20"),
        (28, r"no moov in 28 bytes"),
        (31, r"init segment torn: partial box header at offset 28"),
        (300, r"init segment torn: 'moov' box at offset 28 needs \d+ bytes, file ends at 300"),
    ],
)
def test_scan_torn_init_is_malformed(h264: Muxed, cut: int, message: str) -> None:
    assert top_level(h264.data)[0].size == 28
    with pytest.raises(Malformed, match=message):
        _scan(h264.data[:cut])


def test_scan_broken_init_is_malformed(h264: Muxed) -> None:
    with pytest.raises(Malformed, match=r"init segment torn: zero-filled from offset 0"):
        _scan(bytes(4096))
    moof = top_level(h264.data)[2]
    with pytest.raises(Malformed, match=r"'moof' box at offset 0 before the moov"):
        _scan(h264.data[moof.offset :])
    moov = bytearray(h264.data)
    at = moov.index(b"mvex")
    moov[at : at + 4] = b"xvex"
    with pytest.raises(Malformed, match=r"moov at offset 28: no mvex, not a fragmented MP4"):
        _scan(bytes(moov))


def test_scan_stops_at_a_malformed_fragment(h264: Muxed) -> None:
    boxes = top_level(h264.data)
    third_moof = [b for b in boxes if b.type == "moof"][2]
    data = bytearray(h264.data)
    trun = data.index(b"trun", third_moof.offset)
    data[trun + 5] = 0xFF  # unknown trun flags
    scan = _scan(bytes(data))
    assert len(scan.fragments) == 2
    assert scan.complete_end == third_moof.offset
    assert scan.stop_reason is not None
    assert scan.stop_reason.startswith(f"moof/traf/trun at offset {trun - 4}: unknown flags 0xff")


# --- crafted streams ---------------------------------------------------------------------------------------


def test_crafted_stream_with_largesize_and_size_zero_boxes() -> None:
    init = init_segment()
    one = fragment(1, [(1, 0, {"sizes": [3], "first_flags": SYNC}, b"abc"), (2, 0, {"sizes": [2]}, b"de")])
    moof_size = struct.unpack_from(">I", one)[0]
    # the same fragment with a 64-bit mdat header: the data sits 8 bytes further on
    trafs = [
        box("traf", tfhd(1), tfdt(0), trun(sizes=[3], first_flags=SYNC, data_offset=moof_size + 16)),
        box("traf", tfhd(2), tfdt(0), trun(sizes=[2], data_offset=moof_size + 19)),
    ]
    large = moof(1, *trafs) + struct.pack(">I4sQ", 1, b"mdat", 21) + b"abcde"
    events = FragmentTracker().feed(init + large)
    done = events[1]
    assert isinstance(done, FragmentComplete)
    assert (done.start_offset, done.end_offset) == (len(init), len(init) + len(large))
    video_run = done.info.run(1)
    assert video_run is not None and video_run.first_sample_is_sync
    # size 0 ("to the end of the file") is fine in a file, refused in a stream
    to_end = one[:moof_size] + struct.pack(">I4s", 0, b"mdat") + b"abcde"
    assert _scan(init + to_end).complete_end == len(init + to_end)
    with pytest.raises(Malformed, match="has size 0"):
        FragmentTracker().feed(init + to_end)


# --- fuzz: never anything but Malformed --------------------------------------------------------------------


@FUZZ
@given(tail=st.binary(min_size=1, max_size=200), cut=st.integers(min_value=0))
def test_garbage_after_init_raises_only_malformed(h264: Muxed, tail: bytes, cut: int) -> None:
    boxes = top_level(h264.data)
    start = boxes[1].end + cut % (len(h264.data) - boxes[1].end)
    stream = h264.data[:start] + tail
    with contextlib.suppress(Malformed):
        FragmentTracker().feed(stream)
    scan = _scan(stream)
    assert scan.complete_end <= start + len(tail)
