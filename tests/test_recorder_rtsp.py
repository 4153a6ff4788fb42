"""The recorder against the real RTSP server (gst-rtsp-server): codecs, timing, fragments, audio."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import av
import pytest

from edge.clock import NS_PER_S
from edge.recorder.fmp4stream import scan_file
from edge.store import Segment
from tests.harness import decodes, ffprobe, index_problems
from tests.peers.rtsp_server import RtspPeer
from tests.recordings import recording


def _record(data: Path, url: str, media_s: float, *, segment_s: float = 2.0) -> tuple[list[Segment], int]:
    """Record until `media_s` of footage is indexed; returns the closed segments and the wall time of stop."""
    with recording(data, url, segment_s=segment_s) as cam:
        cam.wait_recorded(media_s, timeout_s=media_s + 20)
        stopped = time.time_ns()
    return cam.indexed(), stopped


def _check_files(data: Path, segs: list[Segment]) -> None:
    assert segs and {s.state for s in segs} == {"closed"}
    assert index_problems(data) == []
    for s in segs:
        assert decodes(data / s.path) is None, s.path
        video = next(st for st in ffprobe(data / s.path)["streams"] if st["codec_type"] == "video")
        probed = float(video["duration"])
        assert abs(probed - s.media_duration_ns / NS_PER_S) <= 0.001, (s.path, probed, s.media_duration_ns)


def test_steady_h264_run_is_contiguous_decodes_and_keeps_wall_time(
    tmp_path: Path, rtsp_server: RtspPeer
) -> None:
    segs, stopped = _record(tmp_path, rtsp_server.url("h264_720p"), 15.0, segment_s=4.0)
    _check_files(tmp_path, segs)
    # One run: every segment starts exactly where the previous ended.
    for a, b in itertools.pairwise(segs):
        assert b.start_utc_ns == a.end_utc_ns, (a, b)
    # Media time tracks the wall clock within 1 % over the run.
    span = segs[-1].end_utc_ns - segs[0].start_utc_ns
    wall = stopped - segs[0].start_utc_ns
    assert abs(span - wall) <= 0.01 * wall + 0.2 * NS_PER_S, (span / NS_PER_S, wall / NS_PER_S)
    assert sum(s.media_duration_ns for s in segs) == span
    # Segments are cut at keyframes once segment_s is reached (GOP 1 s at 30 fps).
    for s in segs[:-1]:
        assert 4.0 <= s.media_duration_ns / NS_PER_S <= 5.05, s
    for s in segs:
        with av.open(str(tmp_path / s.path)) as c:
            first = next(c.demux(c.streams.video[0]))
            assert first.is_keyframe and first.pts == 0


def test_four_second_gop_still_gives_fragments_of_at_most_one_second(
    tmp_path: Path, rtsp_server: RtspPeer
) -> None:
    segs, _ = _record(tmp_path, rtsp_server.url("h264_gop4"), 10.0, segment_s=4.0)
    _check_files(tmp_path, segs)
    inside_gop = 0
    for s in segs:
        with (tmp_path / s.path).open("rb") as f:
            scan = scan_file(f)
        vt = scan.init.video_track
        assert vt is not None
        for frag in scan.fragments:
            run = frag.info.run(vt.track_id)
            assert run is not None
            assert run.duration / vt.timescale <= 1.0, (s.path, run)
            inside_gop += not run.first_sample_is_sync
    assert inside_gop >= 5, "fragments must be cut inside the 4 s GOP"


def test_h265_records_and_decodes_as_hvc1(tmp_path: Path, rtsp_server: RtspPeer) -> None:
    segs, _ = _record(tmp_path, rtsp_server.url("h265"), 5.0)
    _check_files(tmp_path, segs)
    assert {s.codec for s in segs} == {"hevc"}
    stream = ffprobe(tmp_path / segs[0].path)["streams"][0]
    assert (stream["codec_name"], stream["codec_tag_string"], stream["width"]) == ("hevc", "hvc1", 1280)


def test_aac_audio_is_recorded(tmp_path: Path, rtsp_server: RtspPeer) -> None:
    segs, _ = _record(tmp_path, rtsp_server.url("h264_aac"), 5.0)
    _check_files(tmp_path, segs)
    assert {s.audio_codec for s in segs} == {"aac"}
    for s in segs:
        streams = ffprobe(tmp_path / s.path)["streams"]
        assert sorted(st["codec_type"] for st in streams) == ["audio", "video"]
        audio = next(st for st in streams if st["codec_type"] == "audio")
        assert abs(float(audio["duration"]) - s.media_duration_ns / NS_PER_S) < 0.3


def test_g711_audio_is_dropped_with_one_warning_and_video_records(
    tmp_path: Path, rtsp_server: RtspPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    with recording(tmp_path, rtsp_server.url("h264_pcmu"), segment_s=2.0) as cam:
        cam.wait_recorded(3.0)
        rtsp_server.stop()  # force a reconnect: the warning must still be said only once
        rtsp_server.start()
        time.sleep(0.5)
        cam.wait_recorded(sum(s.media_duration_ns for s in cam.indexed()) / NS_PER_S + 2.0, timeout_s=30)
    segs = cam.indexed()
    _check_files(tmp_path, segs)
    assert {s.audio_codec for s in segs} == {None}
    for s in segs:
        assert [st["codec_type"] for st in ffprobe(tmp_path / s.path)["streams"]] == ["video"]
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "audio_dropped"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "pcm_mulaw" in warnings[0].getMessage()
