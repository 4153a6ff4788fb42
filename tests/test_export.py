"""Export: real recordings (the real recorder on the synthetic camera, the real segmenter on encoded clips)
cut into one MP4, judged by ffprobe/ffmpeg, with a manifest whose hashes are checked against the files."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest

import edge
from edge.clock import NS_PER_S
from edge.errors import ExportError, NotFound
from edge.recorder import export as export_module
from edge.recorder import faststart as faststart_module
from edge.recorder import manifest as manifest_module
from edge.recorder.export import export_clip
from edge.recorder.manifest import Manifest, iso_utc, manifest_path_for, verify_manifest
from edge.store import Segment, Store
from tests.harness import decodes, ffprobe
from tests.peers.media import make_media
from tests.recordings import add_camera, record, record_file, recording, segments

FPS = 15
FRAME_NS = NS_PER_S // FPS
GOP_NS = NS_PER_S  # the synthetic camera: gop=1 s


@dataclass(frozen=True)
class Recorded:
    data_dir: Path
    camera_id: int
    first_run: list[Segment]
    second_run: list[Segment]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """Two runs of one synthetic camera (2 s segments) with a 2 s pause between: a gap in the index."""
    data_dir = tmp_path_factory.mktemp("export-data")
    camera_id = record(data_dir, seconds=4.5, segment_s=2)
    first = segments(data_dir, camera_id)
    time.sleep(2.0)
    record(data_dir, seconds=3.0, camera_id=camera_id, segment_s=2)
    second = [s for s in segments(data_dir, camera_id) if s.start_utc_ns > first[-1].start_utc_ns]
    assert len(first) >= 3 and second
    return Recorded(data_dir, camera_id, first, second)


def _export(rec: Recorded, out: Path, from_ns: int, to_ns: int) -> Manifest:
    store = Store.open(rec.data_dir)
    try:
        return export_clip(
            store,
            rec.data_dir,
            camera_id=rec.camera_id,
            from_utc_ns=from_ns,
            to_utc_ns=to_ns,
            out_path=out,
            now_utc_ns=time.time_ns(),
        )
    finally:
        store.close()


def _video_packets(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    packets: list[dict[str, Any]] = json.loads(proc.stdout)["packets"]
    return packets


def _top_level_boxes(path: Path) -> list[str]:
    data, pos, kinds = path.read_bytes(), 0, []
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
        kinds.append(kind.decode())
        pos += size
    return kinds


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_across_a_segment_boundary(recorded: Recorded, tmp_path: Path) -> None:
    seg0, seg1 = recorded.first_run[0], recorded.first_run[1]
    assert seg1.start_utc_ns == seg0.end_utc_ns  # one continuous run
    t1 = seg0.start_utc_ns + 1_500_000_000
    t2 = seg1.start_utc_ns + 1_200_000_000
    out = tmp_path / "clip.mp4"

    m = _export(recorded, out, t1, t2)

    assert decodes(out) is None
    assert _top_level_boxes(out)[:2] == ["ftyp", "moov"]  # faststart: the index before the media
    # Starts at the keyframe at or before T1, ends at the last frame at or before T2.
    assert t1 - GOP_NS - FRAME_NS <= m.clip_start_utc_ns <= t1
    assert t2 < m.clip_end_utc_ns <= t2 + FRAME_NS + 1_000_000
    assert (t2 - t1) / NS_PER_S < m.duration_s <= (t2 - t1 + GOP_NS + FRAME_NS) / NS_PER_S
    packets = _video_packets(out)
    assert packets[0]["flags"].startswith("K") and float(packets[0]["pts_time"]) == 0.0
    probe = ffprobe(out)
    assert probe["streams"][0]["codec_name"] == "h264" and len(probe["streams"]) == 1
    assert float(probe["format"]["duration"]) == pytest.approx(m.duration_s, abs=FRAME_NS / NS_PER_S)
    assert [s.path for s in m.sources] == [seg0.path, seg1.path]
    assert m.gaps == () and m.overlaps == ()


def test_across_a_gap_keeps_wall_time(recorded: Recorded, tmp_path: Path) -> None:
    last_of_first, first_of_second = recorded.first_run[-1], recorded.second_run[0]
    # Inside the first run's last segment (which may be shorter than a second: the run stopped anywhere).
    t1 = max(last_of_first.start_utc_ns, last_of_first.end_utc_ns - 1_000_000_000)
    t2 = first_of_second.start_utc_ns + 1_500_000_000
    out = tmp_path / "gap.mp4"

    m = _export(recorded, out, t1, t2)

    assert decodes(out) is None
    assert len(m.gaps) == 1
    gap = m.gaps[0]
    assert (gap.from_utc_ns, gap.to_utc_ns) == (last_of_first.end_utc_ns, first_of_second.start_utc_ns)
    # Stopped, paused 2 s, reconnected (wall time is stamped at the first keyframe, a frame or so late).
    assert 1.8 <= gap.duration_ns / NS_PER_S < 4.0
    # The clip's timeline covers the gap: it shows as a time jump between two frames, not squeezed out.
    assert m.duration_s == pytest.approx((m.clip_end_utc_ns - m.clip_start_utc_ns) / NS_PER_S)
    assert m.duration_s > gap.duration_ns / NS_PER_S + 1.5
    probe = ffprobe(out)
    assert float(probe["format"]["duration"]) == pytest.approx(m.duration_s, abs=2 * FRAME_NS / NS_PER_S)
    times = [float(p["pts_time"]) for p in _video_packets(out)]
    jumps = [(a, b) for a, b in itertools.pairwise(times) if b - a > 0.5]
    assert len(jumps) == 1
    assert jumps[0][1] == pytest.approx((gap.to_utc_ns - m.clip_start_utc_ns) / NS_PER_S, abs=0.002)
    assert [s.path for s in m.sources] == [last_of_first.path, first_of_second.path]


def test_manifest_hashes_verify_and_catch_a_flipped_byte(recorded: Recorded, tmp_path: Path) -> None:
    # A private copy of the recordings: this test damages a source segment.
    data_dir = tmp_path / "data"
    shutil.copytree(recorded.data_dir, data_dir)
    rec = Recorded(data_dir, recorded.camera_id, recorded.first_run, recorded.second_run)
    out = tmp_path / "evidence.mp4"
    t1 = rec.first_run[0].start_utc_ns + 500_000_000
    t2 = rec.second_run[0].start_utc_ns + 1_000_000_000

    m = _export(rec, out, t1, t2)
    manifest_path = manifest_path_for(out)

    assert manifest_path == tmp_path / "evidence.mp4.manifest.json"
    assert Manifest.from_json(manifest_path.read_text()) == m
    doc = json.loads(manifest_path.read_text())
    assert doc["version"] == 1 and doc["camera_id"] == rec.camera_id
    assert doc["edge_version"] == edge.__version__
    assert doc["requested"]["from"] == {"utc_ns": str(t1), "iso": iso_utc(t1)}
    assert doc["clip"]["start"]["utc_ns"] == str(m.clip_start_utc_ns)
    assert doc["clip"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert doc["clip"]["bytes"] == out.stat().st_size
    assert len(doc["gaps"]) == 1 and int(doc["gaps"][0]["duration_ns"]) == m.gaps[0].duration_ns
    for src in doc["sources"]:
        data = (data_dir / src["path"]).read_bytes()
        assert hashlib.sha256(data[: src["bytes"]]).hexdigest() == src["sha256"]
    assert verify_manifest(manifest_path, data_dir) == []

    _flip_byte(out, out.stat().st_size // 2)
    problems = verify_manifest(manifest_path, None)
    assert len(problems) == 1 and "clip evidence.mp4" in problems[0] and "SHA-256" in problems[0]
    _flip_byte(out, out.stat().st_size // 2)  # restored
    assert verify_manifest(manifest_path, data_dir) == []

    victim = m.sources[1]
    _flip_byte(data_dir / victim.path, victim.bytes - 10)
    assert verify_manifest(manifest_path, None) == []  # without the recordings, only the clip is checked
    problems = verify_manifest(manifest_path, data_dir)
    assert len(problems) == 1 and victim.path in problems[0]


def test_includes_the_open_segment_of_a_running_recorder(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with recording(data_dir, segment_s=4) as cam:

        def open_row() -> Segment | None:
            rows = cam.indexed()
            last = rows[-1] if rows else None
            return last if last and last.state == "open" and last.media_duration_ns >= 2 * NS_PER_S else None

        deadline = time.monotonic() + 15
        while (live := open_row()) is None:
            assert time.monotonic() < deadline, "no open segment with 2 s of footage"
            time.sleep(0.1)
        first = cam.indexed()[0]
        out = tmp_path / "live.mp4"
        store = Store.open(data_dir)
        try:
            m = export_clip(
                store, data_dir, camera_id=cam.camera_id, from_utc_ns=first.start_utc_ns,
                to_utc_ns=time.time_ns(), out_path=out, now_utc_ns=time.time_ns(),
            )  # fmt: skip
        finally:
            store.close()
        used = next(s for s in m.sources if s.path == live.path)
        # Only the durable, indexed prefix was read, although the file keeps growing.
        assert used.bytes >= live.bytes
        assert m.clip_end_utc_ns <= max(s.end_utc_ns for s in cam.indexed())
        grown = (data_dir / live.path).stat().st_size
        deadline = time.monotonic() + 5
        while grown <= used.bytes and time.monotonic() < deadline:
            time.sleep(0.1)
            grown = (data_dir / live.path).stat().st_size
        assert grown > used.bytes

    assert decodes(out) is None
    assert float(ffprobe(out)["format"]["duration"]) == pytest.approx(m.duration_s, abs=FRAME_NS / NS_PER_S)
    assert m.duration_s >= 2.0
    # The segment was closed since; the bytes the export used are unchanged (append only).
    closed = next(s for s in segments(data_dir, cam.camera_id) if s.path == live.path)
    assert closed.state == "closed" and closed.bytes > used.bytes
    assert verify_manifest(manifest_path_for(out), data_dir) == []


def test_audio_and_a_camera_that_changed_its_parameters(tmp_path: Path) -> None:
    """AAC audio is copied along; a camera that came back with another resolution (new SPS/PPS, no audio)
    gets its parameter sets in-band at the joint, so the clip still decodes."""
    media = make_media(tmp_path / "media", ["h264_aac", "h264_720p"])
    data_dir = tmp_path / "data"
    start = time.time_ns() - 60 * NS_PER_S
    camera_id = record_file(data_dir, media["h264_aac"], 6, start_utc_ns=start, segment_s=3)
    resumed = segments(data_dir, camera_id)[-1].end_utc_ns + NS_PER_S
    record_file(data_dir, media["h264_720p"], 6, camera_id=camera_id, start_utc_ns=resumed, segment_s=3)
    rec = Recorded(data_dir, camera_id, [], [])
    out = tmp_path / "audio.mp4"

    m = _export(rec, out, start + 1_500_000_000, resumed + 3 * NS_PER_S)

    assert decodes(out) is None
    streams = {s["codec_type"]: s for s in ffprobe(out)["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert float(streams["audio"]["start_time"]) >= 0.0
    audio_end = float(streams["audio"]["start_time"]) + float(streams["audio"]["duration"])
    first_run_end_s = (resumed - NS_PER_S - m.clip_start_utc_ns) / NS_PER_S
    assert audio_end == pytest.approx(first_run_end_s, abs=0.1)  # the second run has no audio
    assert len(m.gaps) == 1 and m.gaps[0].duration_ns == pytest.approx(NS_PER_S, abs=1_000_000)
    # The first keyframe after the joint carries the second run's parameter sets (NAL types 7 and 8).
    joint_s = (resumed - m.clip_start_utc_ns) / NS_PER_S
    with av.open(str(out)) as clip:
        video = clip.streams.video[0]
        key = next(
            p for p in clip.demux(video)
            if p.pts is not None and p.time_base is not None and float(p.pts * p.time_base) >= joint_s - 0.001
        )  # fmt: skip
        data = bytes(key)
    assert key.is_keyframe
    nal_types = []
    pos = 0
    while pos + 4 < len(data):
        n = int.from_bytes(data[pos : pos + 4])
        nal_types.append(data[pos + 4] & 0x1F)
        pos += 4 + n
    assert nal_types[:2] == [7, 8] and 5 in nal_types
    with av.open(str(out)) as clip:
        sizes = {(f.width, f.height) for f in clip.decode(video=0)}
    assert sizes == {(640, 360), (1280, 720)}


def test_no_footage_reversed_range_and_unknown_camera(recorded: Recorded, tmp_path: Path) -> None:
    out = tmp_path / "nothing.mp4"
    before = recorded.first_run[0].start_utc_ns - 100 * NS_PER_S
    with pytest.raises(
        ExportError, match=rf"no recordings for camera {recorded.camera_id} between \S+Z and \S+Z"
    ):
        _export(recorded, out, before, before + 50 * NS_PER_S)
    mid = recorded.first_run[0].start_utc_ns + NS_PER_S
    with pytest.raises(ExportError, match="empty or reversed"):
        _export(recorded, out, mid, mid - NS_PER_S)
    with pytest.raises(ExportError, match="empty or reversed"):
        _export(recorded, out, mid, mid)
    with pytest.raises(NotFound, match="no camera with id 999"):
        _export(Recorded(recorded.data_dir, 999, [], []), out, mid, mid + NS_PER_S)
    # A camera that exists but never recorded.
    idle = add_camera(recorded.data_dir, name="idle")
    with pytest.raises(ExportError, match=f"no recordings for camera {idle} "):
        _export(Recorded(recorded.data_dir, idle, [], []), out, mid, mid + NS_PER_S)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_never_overwrites(recorded: Recorded, tmp_path: Path) -> None:
    t1 = recorded.first_run[0].start_utc_ns
    t2 = t1 + NS_PER_S
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"the owner's file")
    with pytest.raises(ExportError, match="already exists"):
        _export(recorded, out, t1, t2)
    assert out.read_bytes() == b"the owner's file"
    assert not manifest_path_for(out).exists()

    out.unlink()
    manifest_path_for(out).write_text("{}")
    with pytest.raises(ExportError, match="already exists"):
        _export(recorded, out, t1, t2)
    assert not out.exists() and manifest_path_for(out).read_text() == "{}"
    manifest_path_for(out).unlink()

    _export(recorded, out, t1, t2)
    first = out.read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        _export(recorded, out, t1, t2 + NS_PER_S)
    assert out.read_bytes() == first

    # A temporary file from an interrupted export is never clobbered either.
    other = tmp_path / "other.mp4"
    other.with_name("other.mp4.tmp").write_bytes(b"partial")
    with pytest.raises(ExportError, match="interrupted"):
        _export(recorded, other, t1, t2)
    assert not other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.mp4",
        "clip.mp4.manifest.json",
        "other.mp4.tmp",
    ]


@pytest.mark.parametrize(
    ("chunk_bytes", "libav_above"),
    [(1000, 3 << 30), (7, 3 << 30), (4 << 20, 0)],
    ids=["moov-spans-chunks", "tiny-chunks", "libav-faststart"],
)
def test_faststart_layout_and_hash(
    recorded: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int, libav_above: int
) -> None:
    """edge moves the moov itself (hashing as it goes) in chunks of any size; near 4 GiB libav does it."""
    # One chunk size for the moov move (faststart), the source hashes (export) and sha256_file (manifest).
    monkeypatch.setattr(faststart_module, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(export_module, "HASH_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(manifest_module, "HASH_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(export_module, "LIBAV_FASTSTART_ABOVE_BYTES", libav_above)
    t1 = recorded.first_run[0].start_utc_ns
    out = tmp_path / "clip.mp4"

    m = _export(recorded, out, t1, t1 + 3 * NS_PER_S)

    assert _top_level_boxes(out)[:2] == ["ftyp", "moov"]
    assert decodes(out) is None
    assert m.clip_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert m.clip_size == out.stat().st_size
    assert len(_video_packets(out)) == round(m.duration_s * FPS)


def _stream(
    rec: Recorded, from_ns: int, to_ns: int, stop_after: int | None = None
) -> tuple[list[bytes], list[int], tuple[int, int]]:
    pieces: list[bytes] = []
    starts: list[int] = []

    def take(piece: bytes) -> bool:
        pieces.append(piece)
        return stop_after is None or len(pieces) < stop_after

    store = Store.open(rec.data_dir)
    try:
        span = export_module.stream_clip(
            store, rec.data_dir, camera_id=rec.camera_id, from_utc_ns=from_ns, to_utc_ns=to_ns,
            on_start=starts.append, on_piece=take, fragment_ms=500,
        )  # fmt: skip
    finally:
        store.close()
    return pieces, starts, span


def test_a_streamed_clip_is_the_exported_clip_in_fragments(recorded: Recorded, tmp_path: Path) -> None:
    """What a recorded media session sends (stream_clip): the same start, end and frames as the export of
    the same range, across the gap, as init + whole fragments — and no file written."""
    seg = recorded.first_run[1]
    from_ns = seg.start_utc_ns + NS_PER_S // 3
    to_ns = recorded.second_run[0].start_utc_ns + NS_PER_S
    manifest = _export(recorded, tmp_path / "clip.mp4", from_ns, to_ns)
    before = set(recorded.data_dir.rglob("*"))
    pieces, starts, span = _stream(recorded, from_ns, to_ns)
    assert set(recorded.data_dir.rglob("*")) == before
    assert starts == [manifest.clip_start_utc_ns] and span == (
        manifest.clip_start_utc_ns,
        manifest.clip_end_utc_ns,
    )
    assert pieces[0][4:8] == b"ftyp" and all(p[4:8] == b"moof" for p in pieces[1:]) and len(pieces) > 3
    streamed = tmp_path / "streamed.mp4"
    streamed.write_bytes(b"".join(pieces))
    exported = [(p["pts_time"], p["flags"][0]) for p in _video_packets(tmp_path / "clip.mp4")]
    assert [(p["pts_time"], p["flags"][0]) for p in _video_packets(streamed)] == exported
    assert decodes(streamed) is None


def test_a_streamed_clip_stops_when_its_consumer_does(recorded: Recorded) -> None:
    seg = recorded.first_run[0]
    pieces, starts, _ = _stream(recorded, seg.start_utc_ns, recorded.second_run[-1].end_utc_ns, stop_after=2)
    assert len(pieces) == 2 and len(starts) == 1
    with pytest.raises(ExportError, match="no recordings"):
        _stream(recorded, seg.start_utc_ns - 100 * NS_PER_S, seg.start_utc_ns - 50 * NS_PER_S)
