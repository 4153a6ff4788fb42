"""fMP4 box parsing: real libav output judged by ffprobe, crafted boxes for every flag, torn files.

The real samples are muxed in the test session with PyAV, the way the recorder does it (a Python writer, the
mp4 muxer with ``empty_moov+default_base_moof`` and ``frag_duration``); the write sizes libav used are kept so
the tracker can be fed exactly what the recorder will see.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import struct
import subprocess
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import Malformed
from edge.recorder.fmp4 import (
    BoxHeader,
    FileScan,
    FragmentComplete,
    FragmentTracker,
    InitComplete,
    InitInfo,
    TrackRun,
    iter_boxes,
    parse_init,
    parse_moof,
    scan_file,
)

FFPROBE = "/usr/bin/ffprobe"
OPTIONS = {"movflags": "empty_moov+default_base_moof", "frag_duration": "1000000"}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- crafted boxes -----------------------------------------------------------------------------------------


def u16(v: int) -> bytes:
    return struct.pack(">H", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def box(kind: str, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4s", 8 + len(payload), kind.encode("latin-1")) + payload


def full(kind: str, version: int, flags: int, *parts: bytes) -> bytes:
    return box(kind, u32(version << 24 | flags), *parts)


def trak(track_id: int, handler: str, timescale: int, entry: bytes, *, v1: bool = False) -> bytes:
    if v1:
        tkhd = full("tkhd", 1, 3, bytes(16), u32(track_id), bytes(80))
        mdhd = full("mdhd", 1, 0, bytes(16), u32(timescale), u64(0), bytes(4))
    else:
        tkhd = full("tkhd", 0, 3, bytes(8), u32(track_id), bytes(72))
        mdhd = full("mdhd", 0, 0, bytes(8), u32(timescale), u32(0), bytes(4))
    hdlr = full("hdlr", 0, 0, bytes(4), handler.encode(), bytes(12), b"x\x00")
    stsd = full("stsd", 0, 0, u32(1), entry)
    return box("trak", tkhd, box("mdia", mdhd, hdlr, box("minf", box("stbl", stsd))))


def visual(fourcc: str, width: int, height: int) -> bytes:
    return box(fourcc, bytes(6), u16(1), bytes(16), u16(width), u16(height), bytes(50))


def trex(track_id: int, duration: int = 0, size: int = 0, flags: int = 0) -> bytes:
    return full("trex", 0, 0, u32(track_id), u32(1), u32(duration), u32(size), u32(flags))


NON_SYNC = 0x0101_0000
SYNC = 0x0200_0000


def init_segment(*, trex_video: bytes | None = None, v1: bool = False) -> bytes:
    video = trak(1, "vide", 90000, visual("avc1", 1280, 720), v1=v1)
    audio = trak(2, "soun", 16000, box("mp4a", bytes(6), u16(1), bytes(20)))
    mvex = box("mvex", trex_video or trex(1, 3000, 0, NON_SYNC), trex(2, 1024, 0, SYNC))
    return box("ftyp", b"iso6", u32(0), b"iso6") + box(
        "moov", full("mvhd", 0, 0, bytes(96)), video, audio, mvex
    )


def tfhd(
    track_id: int,
    *,
    flags: int = 0x020000,
    base: int | None = None,
    duration: int | None = None,
    size: int | None = None,
    sample_flags: int | None = None,
) -> bytes:
    parts = [u32(track_id)]
    for bit, value, pack in (
        (0x1, base, u64),
        (0x8, duration, u32),
        (0x10, size, u32),
        (0x20, sample_flags, u32),
    ):
        if value is not None:
            flags |= bit
            parts.append(pack(value))
    return full("tfhd", 0, flags, *parts)


def trun(
    *,
    count: int | None = None,
    data_offset: int | None = None,
    first_flags: int | None = None,
    durations: list[int] | None = None,
    sizes: list[int] | None = None,
    flags: list[int] | None = None,
    cts: list[int] | None = None,
    extra_flags: int = 0,
) -> bytes:
    columns = [(0x100, durations), (0x200, sizes), (0x400, flags), (0x800, cts)]
    present = [(bit, c) for bit, c in columns if c is not None]
    n = count if count is not None else len(present[0][1]) if present else 0
    bits = extra_flags | sum(bit for bit, _ in present)
    head = [u32(n)]
    if data_offset is not None:
        bits |= 0x1
        head.append(struct.pack(">i", data_offset))
    if first_flags is not None:
        bits |= 0x4
        head.append(u32(first_flags))
    entries = b"".join(u32(c[i]) for i in range(len(present[0][1]) if present else 0) for _, c in present)
    return full("trun", 1 if cts else 0, bits, *head, entries)


def tfdt(t: int, version: int = 1) -> bytes:
    return full("tfdt", version, 0, u64(t) if version else u32(t))


def moof(sequence: int, *trafs: bytes) -> bytes:
    return box("moof", full("mfhd", 0, 0, u32(sequence)), *trafs)


def fragment(sequence: int, tracks: list[tuple[int, int, dict[str, object], bytes]]) -> bytes:
    """moof+mdat with moof-relative data offsets; each track is (track_id, tfdt, trun kwargs, payload)."""

    def build(first_offset: int) -> bytes:
        trafs, offset = [], first_offset
        for track_id, decode, kwargs, payload in tracks:
            trafs.append(box("traf", tfhd(track_id), tfdt(decode), trun(data_offset=offset, **kwargs)))  # type: ignore[arg-type]
            offset += len(payload)
        return moof(sequence, *trafs)

    size = len(build(0))
    return build(size + 8) + box("mdat", *(payload for *_, payload in tracks))


INIT = parse_init(init_segment())


# --- real samples -------------------------------------------------------------------------------------------


class _Writer(io.RawIOBase):
    """What the recorder hands libav: a non-seekable writer. Keeps each write() as libav made it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(b))
        return len(b)


@dataclass(frozen=True)
class Muxed:
    data: bytes
    writes: tuple[bytes, ...]
    path: Path


def _mux(
    path: Path,
    *,
    codec: str,
    seconds: int,
    gop: int,
    audio: bool = False,
    fps: int = 25,
    options: dict[str, str] = OPTIONS,
) -> Muxed:
    writer = _Writer()
    out = av.open(writer, "w", format="mp4", options=options)
    video = out.add_stream(codec, rate=fps)
    assert isinstance(video, av.VideoStream)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    if codec == "libx264":
        video.codec_context.options = {"g": str(gop), "sc_threshold": "0"}
    else:
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"
        video.codec_context.options = {"x265-params": params}
        video.codec_tag = "hvc1"
    sound: av.AudioStream | None = None
    if audio:
        stream = out.add_stream("aac", rate=48000, layout="mono")
        assert isinstance(stream, av.AudioStream)
        sound = stream
    rng = np.random.default_rng(7)
    audio_frames = 0
    for i in range(fps * seconds):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        for packet in video.encode(frame):
            out.mux(packet)
        while sound is not None and audio_frames * 1024 < (i + 1) * 48000 // fps:
            tone = np.sin(np.arange(1024, dtype=np.float32) / 9 + audio_frames)[None, :] * 0.3
            chunk = av.AudioFrame.from_ndarray(tone.astype(np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = 48000, audio_frames * 1024, Fraction(1, 48000)
            for packet in sound.encode(chunk):
                out.mux(packet)
            audio_frames += 1
    for packet in video.encode():
        out.mux(packet)
    if sound is not None:
        for packet in sound.encode():
            out.mux(packet)
    out.close()
    data = b"".join(writer.writes)
    path.write_bytes(data)
    return Muxed(data, tuple(writer.writes), path)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Muxed]:
    root = tmp_path_factory.mktemp("fmp4")
    return {
        # a 4 s GOP cut into 1 s fragments: fragments 2-4 and 6 start on a non-sync sample
        "h264": _mux(root / "h264.mp4", codec="libx264", seconds=6, gop=100),
        "hevc": _mux(root / "hevc.mp4", codec="libx265", seconds=3, gop=50),
        "h264_aac": _mux(root / "h264_aac.mp4", codec="libx264", seconds=3, gop=50, audio=True),
        # without default_base_moof libav writes tfhd base-data-offset: the moof's absolute file offset
        "absolute": _mux(
            root / "absolute.mp4",
            codec="libx264",
            seconds=2,
            gop=25,
            options={"movflags": "empty_moov", "frag_duration": "1000000"},
        ),
    }


@pytest.fixture(scope="module")
def h264(samples: dict[str, Muxed]) -> Muxed:
    return samples["h264"]


@pytest.fixture(scope="module")
def two_tracks(samples: dict[str, Muxed]) -> Muxed:
    return samples["h264_aac"]


@dataclass(frozen=True)
class Packet:
    dts: int
    duration: int
    size: int
    key: bool


ENTRIES = "stream=index,id:packet=stream_index,dts,duration,size,flags"


def _ffprobe_packets(path: Path) -> dict[int, list[Packet]]:
    """ffprobe's packets per track ID (the mp4 stream ``id`` is the track_ID)."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-of", "json", "-show_entries", ENTRIES, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    doc = json.loads(out)
    ids = {s["index"]: int(s["id"], 16) for s in doc["streams"]}
    packets: dict[int, list[Packet]] = {track: [] for track in ids.values()}
    for p in doc["packets"]:
        duration = int(p["duration"]) if "duration" in p else 0
        packets[ids[p["stream_index"]]].append(
            Packet(int(p["dts"]), duration, int(p["size"]), "K" in p["flags"])
        )
    return packets


def _top_level(data: bytes) -> list[BoxHeader]:
    return list(iter_boxes(data))


Event = InitComplete | FragmentComplete


def _events(tracker: FragmentTracker, chunks: Iterator[bytes | memoryview]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events.extend(tracker.feed(chunk))
    return events


# --- real samples against ffprobe --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["h264", "hevc", "h264_aac", "absolute"])
def test_fragments_agree_with_ffprobe(samples: dict[str, Muxed], name: str) -> None:
    sample = samples[name]
    scan = scan_file(io.BytesIO(sample.data))
    probe = _ffprobe_packets(sample.path)
    assert {t.track_id for t in scan.init.tracks} == set(probe)
    for track in scan.init.tracks:
        packets = probe[track.track_id]
        runs = [run for f in scan.fragments if (run := f.info.run(track.track_id)) is not None]
        assert sum(r.sample_count for r in runs) == len(packets)
        span = packets[-1].dts + packets[-1].duration - packets[0].dts
        assert sum(r.duration for r in runs) == span
        position = 0
        for run in runs:
            mine = packets[position : position + run.sample_count]
            position += run.sample_count
            assert run.base_decode_time == mine[0].dts
            assert run.data_size == sum(p.size for p in mine)
            assert run.first_sample_is_sync == mine[0].key
            assert run.sync_sample_count == sum(p.key for p in mine)
    video = scan.init.video_track
    assert video is not None
    video_packets = probe[video.track_id]
    expected_ns = (video_packets[-1].dts + video_packets[-1].duration) * 10**9 // video.timescale
    assert scan.media_duration_ns == expected_ns
    assert scan.media_start_ns == 0
    assert scan.media_end_ns == expected_ns


def test_long_gop_in_one_second_fragments(h264: Muxed) -> None:
    scan = scan_file(io.BytesIO(h264.data))
    init = scan.init
    video = init.video_track
    assert video is not None
    assert (video.codec, video.handler, video.width, video.height) == ("avc1", "vide", 64, 48)
    assert len(scan.fragments) == 6 == sum(b.type == "moof" for b in _top_level(h264.data))
    assert [f.info.sequence for f in scan.fragments] == [1, 2, 3, 4, 5, 6]
    runs = [f.info.video_run(init) for f in scan.fragments]
    assert [r.first_sample_is_sync for r in runs if r] == [True, False, False, False, True, False]
    assert [r.sample_count for r in runs if r] == [25] * 6
    assert [r.duration for r in runs if r] == [video.timescale] * 6
    assert [f.info.media_end_ns(video.track_id, init) for f in scan.fragments] == [
        s * 10**9 for s in range(1, 7)
    ]
    assert scan.media_duration_ns == 6 * 10**9
    assert scan.closed
    assert scan.stop_reason is None


def test_hevc_sample_entry(samples: dict[str, Muxed]) -> None:
    init = scan_file(io.BytesIO(samples["hevc"].data)).init
    assert [(t.codec, t.width, t.height) for t in init.tracks] == [("hvc1", 64, 48)]


def test_two_tracks(two_tracks: Muxed) -> None:
    scan = scan_file(io.BytesIO(two_tracks.data))
    video, audio = scan.init.tracks
    assert (video.handler, video.codec, audio.handler, audio.codec) == ("vide", "avc1", "soun", "mp4a")
    assert (audio.timescale, audio.width, audio.height) == (48000, None, None)
    assert scan.init.video_track == video
    mdats = [b for b in _top_level(two_tracks.data) if b.type == "mdat"]
    for fragment, mdat in zip(scan.fragments, mdats, strict=True):
        # libav lays the tracks' data end to end and fills the mdat exactly
        runs = sorted(fragment.info.runs, key=lambda r: r.data_offset)
        assert runs[0].data_offset == mdat.body_offset
        for before, after in itertools.pairwise(runs):
            assert before.data_offset + before.data_size == after.data_offset
        assert runs[-1].data_offset + runs[-1].data_size == mdat.end
        assert all(r.first_sample_is_sync for r in fragment.info.runs if r.track_id == audio.track_id)
    # AAC outlasts the video: libav writes a last fragment with audio only
    last = scan.fragments[-1].info
    assert last.video_run(scan.init) is None
    assert last.media_end_ns(video.track_id, scan.init) is None
    assert last.media_end_ns(audio.track_id, scan.init) is not None


def test_parse_init_takes_ftyp_and_moov_or_moov_alone(h264: Muxed) -> None:
    ftyp, moov = _top_level(h264.data)[:2]
    with_ftyp = parse_init(h264.data[: moov.end])
    alone = parse_init(h264.data[moov.offset : moov.end])
    assert with_ftyp.tracks == alone.tracks
    assert (with_ftyp.size, alone.size) == (moov.end, moov.size)
    assert ftyp.type == "ftyp"


def test_parse_moof_alone(h264: Muxed) -> None:
    boxes = _top_level(h264.data)
    init = parse_init(h264.data[: boxes[1].end])
    moof, mdat = boxes[2], boxes[3]
    relative = parse_moof(h264.data[moof.offset : moof.end], init)
    absolute = parse_moof(h264.data[moof.offset :], init, moof_offset=moof.offset)
    assert relative.runs[0].data_offset == moof.size + mdat.header_size
    assert absolute.runs[0].data_offset == mdat.body_offset
    assert relative.sequence == absolute.sequence == 1


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
    boxes = _top_level(sample.data)
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
    boxes = _top_level(h264.data)
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
    init_end = _top_level(h264.data)[1].end
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
    boxes = _top_level(data)
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
    boxes = _top_level(data)
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
    boxes = _top_level(data)
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
    mdats = [b for b in _top_level(h264.data) if b.type == "mdat"]
    assert f.read_bytes <= len(h264.data) - sum(m.size - 16 for m in mdats)
    assert len(scan.fragments) == 6


def test_scan_zero_tail_inside_last_mdat(h264: Muxed) -> None:
    boxes = _top_level(h264.data)
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
    assert _top_level(h264.data)[0].size == 28
    with pytest.raises(Malformed, match=message):
        _scan(h264.data[:cut])


def test_scan_broken_init_is_malformed(h264: Muxed) -> None:
    with pytest.raises(Malformed, match=r"init segment torn: zero-filled from offset 0"):
        _scan(bytes(4096))
    moof = _top_level(h264.data)[2]
    with pytest.raises(Malformed, match=r"'moof' box at offset 0 before the moov"):
        _scan(h264.data[moof.offset :])
    moov = bytearray(h264.data)
    at = moov.index(b"mvex")
    moov[at : at + 4] = b"xvex"
    with pytest.raises(Malformed, match=r"moov at offset 28: no mvex, not a fragmented MP4"):
        _scan(bytes(moov))


def test_scan_stops_at_a_malformed_fragment(h264: Muxed) -> None:
    boxes = _top_level(h264.data)
    third_moof = [b for b in boxes if b.type == "moof"][2]
    data = bytearray(h264.data)
    trun = data.index(b"trun", third_moof.offset)
    data[trun + 5] = 0xFF  # unknown trun flags
    scan = _scan(bytes(data))
    assert len(scan.fragments) == 2
    assert scan.complete_end == third_moof.offset
    assert scan.stop_reason is not None
    assert scan.stop_reason.startswith(f"moof/traf/trun at offset {trun - 4}: unknown flags 0xff")


# --- crafted boxes: every flag ----------------------------------------------------------------------------


def test_crafted_init() -> None:
    video, audio = INIT.tracks
    assert video.track_id == 1 and video.codec == "avc1" and (video.width, video.height) == (1280, 720)
    assert (video.timescale, video.default_sample_duration, video.default_sample_flags) == (
        90000,
        3000,
        NON_SYNC,
    )
    assert (audio.handler, audio.codec, audio.default_sample_duration, audio.width) == (
        "soun",
        "mp4a",
        1024,
        None,
    )
    v1 = parse_init(init_segment(v1=True))
    assert v1.tracks == INIT.tracks
    assert INIT.size == len(init_segment())


def _one_run(*children: bytes, init: InitInfo = INIT) -> TrackRun:
    info = parse_moof(moof(9, box("traf", *children)), init)
    assert info.sequence == 9
    (run,) = info.runs
    return run


def test_durations_trun_over_tfhd_over_trex() -> None:
    from_trex = _one_run(tfhd(1), tfdt(5), trun(sizes=[1, 2, 3]))
    from_tfhd = _one_run(tfhd(1, duration=1500), tfdt(5), trun(sizes=[1, 2, 3]))
    from_trun = _one_run(tfhd(1, duration=1500), tfdt(5), trun(durations=[10, 20, 30]))
    assert (from_trex.duration, from_trex.data_size, from_trex.sample_count) == (9000, 6, 3)
    assert from_tfhd.duration == 4500
    assert from_trun.duration == 60
    sizes_from_tfhd = _one_run(tfhd(1, size=100), tfdt(0), trun(count=4))
    assert (sizes_from_tfhd.data_size, sizes_from_tfhd.duration) == (400, 12000)


def test_sync_flags() -> None:
    # trex says non-sync; the first-sample flags make sample 0 a sync sample
    first = _one_run(tfhd(1), tfdt(0), trun(first_flags=SYNC, sizes=[5, 1, 1]))
    assert (first.first_sample_is_sync, first.sync_sample_count) == (True, 1)
    none = _one_run(tfhd(1), tfdt(0), trun(sizes=[5, 1, 1]))
    assert (none.first_sample_is_sync, none.sync_sample_count) == (False, 0)
    tfhd_sync = _one_run(tfhd(1, sample_flags=0), tfdt(0), trun(sizes=[5, 1, 1]))
    assert (tfhd_sync.first_sample_is_sync, tfhd_sync.sync_sample_count) == (True, 3)
    per_sample = _one_run(tfhd(1), tfdt(0), trun(flags=[NON_SYNC, SYNC, NON_SYNC, SYNC], cts=[0, 3, 1, 0]))
    assert (per_sample.first_sample_is_sync, per_sample.sync_sample_count) == (False, 2)
    # depends-on-others with the non-sync bit clear still counts as sync: the bit decides
    assert _one_run(tfhd(1), tfdt(0), trun(flags=[0x0100_0000])).first_sample_is_sync


def test_decode_times_and_timescales() -> None:
    assert _one_run(tfhd(1), tfdt(123, version=0), trun(count=1)).base_decode_time == 123
    big = 1 << 40
    assert _one_run(tfhd(1), tfdt(big), trun(count=1)).base_decode_time == big
    info = parse_moof(moof(1, box("traf", tfhd(1), tfdt(90000 * 3600), trun(count=30))), INIT)
    assert info.media_start_ns(1, INIT) == 3600 * 10**9
    assert info.media_end_ns(1, INIT) == 3601 * 10**9
    assert info.media_start_ns(2, INIT) is None


def test_data_offsets() -> None:
    audio_then_video = moof(
        1,
        box("traf", tfhd(2, flags=0, base=5000), tfdt(0), trun(sizes=[10, 20])),
        # neither base-data-offset nor default-base-is-moof: starts where the previous traf's data ended
        box("traf", tfhd(1, flags=0), tfdt(0), trun(sizes=[7]), trun(sizes=[8], data_offset=100)),
    )
    audio, video = parse_moof(audio_then_video, INIT, moof_offset=4000).runs
    assert (audio.data_offset, audio.data_size) == (5000, 30)
    assert (video.data_offset, video.data_size, video.sample_count) == (5030, 15, 2)
    implicit_first = parse_moof(moof(1, box("traf", tfhd(1, flags=0), tfdt(0), trun(sizes=[1]))), INIT, 700)
    assert implicit_first.runs[0].data_offset == 700
    moof_relative = parse_moof(
        moof(1, box("traf", tfhd(1), tfdt(0), trun(sizes=[1], data_offset=-8))), INIT, 700
    )
    assert moof_relative.runs[0].data_offset == 692
    two_truns = _one_run(tfhd(1), tfdt(0), trun(sizes=[4, 4], data_offset=50), trun(sizes=[3]))
    assert (two_truns.data_offset, two_truns.data_size, two_truns.sample_count) == (50, 11, 3)


def test_duration_is_empty_and_empty_traf() -> None:
    empty = _one_run(tfhd(1, flags=0x030000, duration=90000), tfdt(10))
    assert (empty.sample_count, empty.duration, empty.data_size) == (0, 90000, 0)
    no_trun = _one_run(tfhd(1), tfdt(10))
    assert (no_trun.sample_count, no_trun.duration) == (0, 0)


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


def test_iter_boxes() -> None:
    data = box("free", b"ab") + struct.pack(">I4sQ", 1, b"mdat", 20) + b"1234" + box("uuid", bytes(16), b"x")
    data += struct.pack(">I4s", 0, b"skip") + b"rest"
    assert [(b.type, b.offset, b.size, b.header_size) for b in iter_boxes(data)] == [
        ("free", 0, 10, 8),
        ("mdat", 10, 20, 16),
        ("uuid", 30, 25, 24),
        ("skip", 55, 12, 8),
    ]
    assert [b.type for b in iter_boxes(data, 10, 30)] == ["mdat"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x07free", r"'free' box at offset 0 has size 7, less than its header"),
        (
            b"\x00\x00\x00\x01mdat\x00\x00\x00\x00\x00\x00\x00\x0f",
            r"'mdat' box at offset 0 has size 15, less",
        ),
        (box("free", b"") + b"\x00\x00", r"2 stray bytes at offset 8: too short for a box header"),
        (b"\x00\x00\x00\x01mdat\x00", r"box header at offset 0 needs 16 bytes, 9 left"),
        (
            box("free", b"") + box("skip", b"abc")[:-1],
            r"'skip' box at offset 8 has size 11, overrunning .* 18",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_iter_boxes_malformed(data: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        list(iter_boxes(data))


def _moof_with(*children: bytes) -> bytes:
    return moof(1, box("traf", *children))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _moof_with(tfhd(1), tfdt(0), trun(sizes=[1], extra_flags=0x2)),
            r"moof/traf/trun at offset 68: unknown flags 0x000202$",
        ),
        (
            _moof_with(tfhd(1), tfdt(0), trun(flags=[0], first_flags=0)),
            r"moof/traf/trun at offset 68: both first-sample-flags and per-sample flags present",
        ),
        (
            _moof_with(tfhd(1), tfdt(0), trun(count=0xFFFF_FFFF, sizes=[1, 2])),
            r"sample_count 4294967295 needs 17179869180 bytes of sample entries, box has 8$",
        ),
        (
            _moof_with(tfhd(1), tfdt(0), trun(count=3, sizes=[1, 2])),
            r"sample_count 3 needs 12 bytes of sample entries, box has 8",
        ),
        (
            _moof_with(tfhd(1), tfdt(0), trun(data_offset=-100, sizes=[1])),
            r"moof/traf/trun at offset 68: data offset -100 is before the start of the file",
        ),
        (_moof_with(full("tfhd", 0, 0x40, u32(1))), r"moof/traf/tfhd at offset 32: unknown flags 0x000040$"),
        (
            _moof_with(full("tfhd", 0, 0x8, u32(1))),
            r"moof/traf/tfhd at offset 32: truncated: needs 4 more bytes at body position 48, has 0$",
        ),
        (_moof_with(tfhd(3), tfdt(0)), r"moof/traf/tfhd at offset 32: track 3 is not in the init segment"),
        (_moof_with(tfhd(1), trun(count=1)), r"moof/traf at offset 24: no tfdt$"),
        (_moof_with(tfdt(0), trun(count=1)), r"moof/traf at offset 24: no tfhd$"),
        (_moof_with(tfhd(1), tfhd(1), tfdt(0)), r"moof/traf at offset 24: second tfhd$"),
        (
            _moof_with(full("tfdt", 1, 0, u32(0))),
            r"moof/traf/tfdt at offset 32: truncated: needs 8 more bytes at body position 44, has 4$",
        ),
        (
            _moof_with(tfhd(1, flags=0x030000), tfdt(0), trun(count=1)),
            r"moof/traf at offset 24: duration-is-empty with 1 trun boxes",
        ),
        (
            moof(1, box("traf", tfhd(1), tfdt(0)), box("traf", tfhd(1), tfdt(0))),
            r"moof/traf at offset 68: second traf for track 1",
        ),
        (box("moof", box("traf", tfhd(1), tfdt(0))), r"moof at offset 0: no mfhd"),
        (box("mdat", b""), r"expected a moof at offset 0, found 'mdat'"),
        (b"moof", r"^4 stray bytes at offset 0: too short for a box header$"),
        (moof(1)[:-1], r"'moof' box at offset 0 has size 24, overrunning its parent's end at offset 23"),
        (
            box("moof", full("mfhd", 0, 0, u32(1)), b"\x00\x00"),
            r"2 stray bytes at offset 24 in moof at offset 0: too short for a box header",
        ),
        (
            box("moof", box("traf", b"\x00\x00\x00\x40tfhd")),
            r"'tfhd' box at offset 16 in moof/traf at offset 8 has size 64, overrunning .* offset 24",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_parse_moof_malformed(data: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        parse_moof(data, INIT)


def _moov(*children: bytes) -> bytes:
    return box("moov", *children)


GOOD_TRAK = trak(1, "vide", 90000, visual("avc1", 2, 2))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (box("ftyp", b"isom"), r"no moov box in 12 bytes of init data"),
        (box("moof", b"") + _moov(), r"'moof' box at offset 0 before the moov"),
        (_moov(box("mvex", trex(1))), r"moov at offset 0: no trak"),
        (_moov(GOOD_TRAK), r"moov at offset 0: no mvex, not a fragmented MP4"),
        (_moov(GOOD_TRAK, box("mvex", trex(2))), r"moov at offset 0: no trex for track 1"),
        (_moov(GOOD_TRAK, GOOD_TRAK, box("mvex")), r"moov/trak at offset \d+: duplicate track_ID 1"),
        (
            _moov(trak(0, "vide", 1, visual("avc1", 1, 1)), box("mvex")),
            r"moov/trak/tkhd at offset 16: track_ID 0",
        ),
        (
            _moov(trak(1, "vide", 0, visual("avc1", 1, 1)), box("mvex")),
            r"moov/trak/mdia/mdhd at offset \d+: timescale 0",
        ),
        (_moov(box("trak", box("mdia"))), r"moov/trak at offset 8: no tkhd"),
        (_moov(trak(1, "vide", 1, box("avc1", bytes(10)))), r"stsd/avc1 at offset \d+: truncated"),
        (
            _moov(box("trak", b"\x00\x00\x00\x40tkhd")),
            r"'tkhd' box at offset 16 in moov/trak at offset 8 has size 64, overrunning .* offset 24",
        ),
        (_moov(box("mvex", full("trex", 0, 0, u32(1)))), r"moov/mvex/trex at offset 16: truncated"),
        (_moov(trak(1, "vide", 1, b"")), r"moov/trak/mdia/minf/stbl/stsd at offset \d+: no sample entry"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_parse_init_malformed(data: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        parse_init(data)


# --- fuzz: never anything but Malformed --------------------------------------------------------------------


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_moof_and_moov_raise_only_malformed(h264: Muxed, flips: list[tuple[int, int]]) -> None:
    boxes = _top_level(h264.data)
    init = parse_init(h264.data)
    for target in (boxes[1], boxes[2]):
        data = bytearray(h264.data[target.offset : target.end])
        for at, value in flips:
            data[at % len(data)] = value
        try:
            if target.type == "moov":
                parse_init(bytes(data))
            else:
                parse_moof(bytes(data), init)
        except Malformed:
            pass


@FUZZ
@given(tail=st.binary(min_size=1, max_size=200), cut=st.integers(min_value=0))
def test_garbage_after_init_raises_only_malformed(h264: Muxed, tail: bytes, cut: int) -> None:
    boxes = _top_level(h264.data)
    start = boxes[1].end + cut % (len(h264.data) - boxes[1].end)
    stream = h264.data[:start] + tail
    with contextlib.suppress(Malformed):
        FragmentTracker().feed(stream)
    scan = _scan(stream)
    assert scan.complete_end <= start + len(tail)
