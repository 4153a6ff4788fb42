"""fMP4 box parsing: real libav output judged by ffprobe, crafted boxes for every flag.

The real samples (:mod:`tests.fmp4_samples`) are muxed in the test session with PyAV, the way the recorder
does it; the tracker and the file scan that follow them box by box are tested in ``test_fmp4stream.py``.
"""

from __future__ import annotations

import io
import itertools
import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import Malformed
from edge.recorder.fmp4 import InitInfo, TrackRun, iter_boxes, parse_init, parse_moof
from edge.recorder.fmp4stream import scan_file
from tests.fmp4_samples import (
    FUZZ,
    NON_SYNC,
    SYNC,
    Muxed,
    box,
    full,
    init_segment,
    moof,
    tfdt,
    tfhd,
    top_level,
    trak,
    trex,
    trun,
    u32,
    visual,
)

FFPROBE = "/usr/bin/ffprobe"

INIT = parse_init(init_segment())


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
    assert len(scan.fragments) == 6 == sum(b.type == "moof" for b in top_level(h264.data))
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
    mdats = [b for b in top_level(two_tracks.data) if b.type == "mdat"]
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
    ftyp, moov = top_level(h264.data)[:2]
    with_ftyp = parse_init(h264.data[: moov.end])
    alone = parse_init(h264.data[moov.offset : moov.end])
    assert with_ftyp.tracks == alone.tracks
    assert (with_ftyp.size, alone.size) == (moov.end, moov.size)
    assert ftyp.type == "ftyp"


def test_parse_moof_alone(h264: Muxed) -> None:
    boxes = top_level(h264.data)
    init = parse_init(h264.data[: boxes[1].end])
    moof, mdat = boxes[2], boxes[3]
    relative = parse_moof(h264.data[moof.offset : moof.end], init)
    absolute = parse_moof(h264.data[moof.offset :], init, moof_offset=moof.offset)
    assert relative.runs[0].data_offset == moof.size + mdat.header_size
    assert absolute.runs[0].data_offset == mdat.body_offset
    assert relative.sequence == absolute.sequence == 1


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
    boxes = top_level(h264.data)
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
