"""The RTSP test peer is a faithful camera: codecs, real-time pace, seamless loops, auth, many clients."""

from __future__ import annotations

import itertools
import threading
import time
from fractions import Fraction
from typing import Any

import av
import av.error
import pytest

from tests.peers.media import CLIPS, dominant_colour, nearest_clip
from tests.peers.rtsp_server import RtspPeer

# probesize=32: ffmpeg takes the codec parameters from the SDP instead of buffering ~1 s of stream first.
OPTS = {"rtsp_transport": "tcp", "probesize": "32"}
CODECS = {"h264": "h264", "h265": "hevc", "aac": "aac", "pcmu": "pcm_mulaw"}


def _open(url: str, timeout: float = 5.0, **options: str) -> Any:
    return av.open(url, options={**OPTS, **options}, timeout=(timeout, timeout))


def _frame_clip(frame: Any) -> str | None:
    return nearest_clip(dominant_colour(frame.to_ndarray(format="bgr24")))


def _first_frame_clip(container: Any) -> str | None:
    for frame in container.decode(video=0):
        return _frame_clip(frame)
    return None


@pytest.mark.parametrize("mount", [*CLIPS, "bench/h264_720p/3"])
def test_mount_has_clip_codecs_colour_and_gop(rtsp_server: RtspPeer, mount: str) -> None:
    name = mount.split("/")[1] if mount.startswith("bench/") else mount
    clip = CLIPS[name]
    with _open(rtsp_server.url(mount)) as c:
        video = c.streams.video[0]
        assert video.codec_context.name == CODECS[clip.video]
        if clip.audio is None:
            assert not c.streams.audio
        else:
            (audio,) = c.streams.audio
            assert audio.codec_context.name == CODECS[clip.audio]
            assert audio.codec_context.sample_rate == (16000 if clip.audio == "aac" else 8000)
        # The picture tells which clip this is; keyframes come exactly one GOP (of one-frame packets) apart.
        # (The very first packet may have no pts: that is how ffmpeg's RTSP demuxer gives the first AU.)
        first: Any = None
        since_key: int | None = None
        for pkt in c.demux(video):
            if first is None:
                frames = video.codec_context.decode(pkt)
                first = frames[0] if frames else None
            if pkt.is_keyframe:
                if since_key is not None:
                    break
                since_key = 0
            elif since_key is not None:
                since_key += 1
        assert since_key == clip.gop - 1
        assert first is not None
        assert (first.width, first.height) == (clip.width, clip.height)
        assert _frame_clip(first) == name


def test_real_time_pace_and_seamless_loop(rtsp_server: RtspPeer) -> None:
    """short_loop (3.2 s, H.264 + AAC) read for 6 s: no timestamp jump at the loop point; real-time pace."""
    clip = CLIPS["short_loop"]
    # (arrival, pts, dts, keyframe) of each packet, per stream type
    seen: dict[str, list[tuple[float, int, int, bool]]] = {"video": [], "audio": []}
    with _open(rtsp_server.url("short_loop")) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        opened = time.monotonic()
        for pkt in c.demux(video, audio):
            now = time.monotonic()
            if pkt.pts is None or pkt.dts is None or pkt.size == 0:
                continue
            seen[pkt.stream.type].append((now, pkt.pts, pkt.dts, pkt.is_keyframe))
            if now - opened > 6.0:
                break
        vtb, atb = video.time_base, audio.time_base
    assert vtb is not None and atb is not None

    v, a = seen["video"], seen["audio"]
    # Constant frame/packet steps, straight through the loop point (3.2 s of media). The server's steps are
    # exact; ffmpeg moves to RTCP-derived timestamps when the first sender report arrives (the stream has two
    # tracks), which can nudge one step by a few ticks: allow 1 ms.
    ms = Fraction(1, 1000)
    assert (v[-1][1] - v[0][1]) * vtb > clip.seconds + 1
    for (_, p0, d0, _), (_, p1, d1, _) in itertools.pairwise(v):
        assert abs((p1 - p0) * vtb - Fraction(1, clip.fps)) <= ms, f"video pts step {p0} -> {p1}"
        assert d1 > d0
    for (_, p0, d0, _), (_, p1, d1, _) in itertools.pairwise(a):
        assert abs((p1 - p0) * atb - Fraction(1024, 16000)) <= ms, f"audio pts step {p0} -> {p1}"
        assert d1 > d0
    # Keyframes every GOP, also across the loop point.
    keys = [p for _, p, _, k in v if k]
    assert len(keys) >= 3
    for k0, k1 in itertools.pairwise(keys):
        assert abs((k1 - k0) * vtb - Fraction(clip.gop, clip.fps)) <= ms

    # Pace: after the packets ffmpeg buffered while probing have drained, media time advances with wall time.
    live = [s for s in v if s[0] >= opened + 0.5]
    wall = live[-1][0] - live[0][0]
    media = float((live[-1][1] - live[0][1]) * vtb)
    assert wall > 5.0
    assert abs(media - wall) <= 0.02 * wall, f"{media:.3f} s of media in {wall:.3f} s"
    # Steady: how far each packet arrives behind its media time never varies by more than a few frames.
    lags = [t - float(p * vtb) for t, p, _, _ in live]
    assert max(lags) - min(lags) < 0.15
    # Audio keeps up with video.
    assert abs(float(a[-1][1] * atb) - float(v[-1][1] * vtb)) < 0.3


def test_auth_mount_wants_credentials(rtsp_server: RtspPeer) -> None:
    with pytest.raises(av.error.HTTPUnauthorizedError):
        _open(rtsp_server.url("auth"))
    with pytest.raises(av.error.HTTPUnauthorizedError):
        _open(rtsp_server.url("auth", rtsp_server.auth_user, rtsp_server.auth_password + "x"))
    # The password has ':', '@' and ' ' in it: url() percent-encodes, ffmpeg decodes.
    assert any(ch in rtsp_server.auth_password for ch in ":@ ")
    with _open(rtsp_server.url("auth", rtsp_server.auth_user, rtsp_server.auth_password)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert _first_frame_clip(c) == "h264_720p"


def test_four_clients_at_once_on_one_mount(rtsp_server: RtspPeer) -> None:
    start = threading.Barrier(4)
    results: list[object] = [None] * 4

    def client(i: int) -> None:
        try:
            start.wait(5)
            with _open(rtsp_server.url("h264_720p")) as c:
                frames = 0
                clips = set()
                for frame in c.decode(video=0):
                    clips.add(_frame_clip(frame))
                    frames += 1
                    if frames == 15:
                        break
                results[i] = (frames, clips)
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [(15, {"h264_720p"})] * 4


def test_restart_on_same_port(rtsp_server: RtspPeer) -> None:
    port = rtsp_server.port
    with _open(rtsp_server.url("h264_aac")) as c:
        next(c.demux(video=0))
        rtsp_server.stop()  # with a client attached
    assert rtsp_server.exit_code == 0
    with pytest.raises(av.error.ConnectionRefusedError):
        _open(rtsp_server.url("h264_aac"))
    rtsp_server.start()
    assert rtsp_server.port == port
    with _open(rtsp_server.url("h264_aac")) as c:
        assert _first_frame_clip(c) == "h264_aac"


def test_frozen_server_times_out(rtsp_server: RtspPeer) -> None:
    with _open(rtsp_server.url("h264_aac"), timeout=2.0) as c:
        next(c.demux(video=0))
        rtsp_server.freeze()
        t0 = time.monotonic()
        with pytest.raises(av.error.FFmpegError):
            for _ in c.demux(video=0):
                pass
        # Anything already buffered drains first; then the read timeout fires.
        assert time.monotonic() - t0 < 10


def test_garbage_and_silent_servers_fail_fast(garbage_rtsp_url: str, silent_rtsp_url: str) -> None:
    for url in (garbage_rtsp_url, silent_rtsp_url):
        t0 = time.monotonic()
        with pytest.raises(av.error.FFmpegError):
            _open(url, timeout=2.0)
        assert time.monotonic() - t0 < 10
