"""Stream probes against the real RTSP camera (gst-rtsp-server on 127.0.0.1) and the bad ones.

Unreachable hosts are tried from inside ``lan.box``, where nothing can leave the test LAN.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from edge.discovery.probe import ProbeResult, probe_stream, probe_streams
from tests.lan import Lan
from tests.peers.rtsp_server import RtspPeer

WRONG_PASSWORD = "wr0ng:p@ss w0rd/?#"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_failed(result: ProbeResult, error: str) -> None:
    assert result.ok is False
    assert result.error == error
    assert (result.video_codec, result.width, result.height, result.fps, result.audio_codec) == (None,) * 5


@pytest.mark.parametrize(
    ("mount", "video", "size", "fps", "audio"),
    [
        ("h264_720p", "h264", (1280, 720), 30.0, None),
        ("h264_1080p", "h264", (1920, 1080), 30.0, None),
        ("h265", "hevc", (1280, 720), 30.0, None),
        ("h264_aac", "h264", (640, 360), 25.0, "aac"),
        ("h264_pcmu", "h264", (640, 360), 25.0, "pcm_mulaw"),
        ("h264_gop4", "h264", (1280, 720), 30.0, None),  # 4 s between keyframes: the SDP has the size
    ],
)
def test_probe_reads_what_the_stream_carries(
    rtsp_server: RtspPeer, mount: str, video: str, size: tuple[int, int], fps: float, audio: str | None
) -> None:
    url = rtsp_server.url(mount)
    result = probe_stream(url, timeout_s=5)
    assert result == ProbeResult(
        url=url,
        ok=True,
        error=None,
        video_codec=video,
        width=size[0],
        height=size[1],
        fps=fps,
        audio_codec=audio,
        elapsed_s=result.elapsed_s,
    )
    assert 0 < result.elapsed_s < 2  # ~0.3 s: 250 ms of analysis


def test_probe_with_credentials(rtsp_server: RtspPeer) -> None:
    url = rtsp_server.url("auth")
    user, password = rtsp_server.auth_user, rtsp_server.auth_password
    ok = probe_stream(url, username=user, password=password)
    assert (ok.ok, ok.error, ok.video_codec, ok.width, ok.height) == (True, None, "h264", 1280, 720)
    assert ok.url == url
    # The same credentials inside the URL work too, and the result's URL drops them.
    embedded = url.replace("rtsp://", f"rtsp://{quote(user, safe='')}:{quote(password, safe='')}@")
    from_url = probe_stream(embedded)
    assert (from_url.ok, from_url.url) == (True, url)
    assert password not in repr(from_url)
    assert quote(password, safe="") not in repr(from_url)


def test_probe_wrong_or_missing_credentials(rtsp_server: RtspPeer) -> None:
    url = rtsp_server.url("auth")
    wrong = probe_stream(url, username=rtsp_server.auth_user, password=WRONG_PASSWORD, timeout_s=3)
    _assert_failed(wrong, "authentication failed (401)")
    assert wrong.url == url
    embedded = url.replace("rtsp://", f"rtsp://admin:{quote(WRONG_PASSWORD, safe='')}@")
    wrong_in_url = probe_stream(embedded, timeout_s=3)
    _assert_failed(wrong_in_url, "authentication failed (401)")
    assert wrong_in_url.url == url
    for result in (wrong, wrong_in_url):
        text = repr(result)
        assert WRONG_PASSWORD not in text
        assert quote(WRONG_PASSWORD, safe="") not in text
        assert "wr0ng" not in text
    _assert_failed(probe_stream(url, timeout_s=3), "authentication required (401)")


def test_probe_missing_mount_and_closed_port(rtsp_server: RtspPeer) -> None:
    _assert_failed(probe_stream(rtsp_server.url("no_such_clip"), timeout_s=3), "no such stream (404)")
    refused = probe_stream(f"rtsp://127.0.0.1:{_closed_port()}/x", timeout_s=3)
    _assert_failed(refused, "connection refused")
    assert refused.elapsed_s < 1


def test_probe_a_server_that_speaks_junk(garbage_rtsp_url: str) -> None:
    result = probe_stream(garbage_rtsp_url, timeout_s=3)
    _assert_failed(result, "not a media stream (the reply is not RTSP)")
    assert result.elapsed_s < 3


def test_probe_a_server_that_never_answers(silent_rtsp_url: str) -> None:
    start = time.monotonic()
    result = probe_stream(silent_rtsp_url, timeout_s=1.5)
    took = time.monotonic() - start
    _assert_failed(result, "timed out after 1.5 s")
    assert 1.4 <= result.elapsed_s <= took < 2.5


def test_probe_refuses_other_schemes_and_bad_urls_without_connecting() -> None:
    for url in ("http://127.0.0.1:1/x", "file:///etc/passwd", "/dev/zero", "synthetic:"):
        result = probe_stream(url)
        assert result.ok is False
        assert result.error is not None
        assert result.error.startswith("unsupported URL scheme")
        assert result.elapsed_s < 0.5  # no connect attempt (that waits out the timeout)
    bad = probe_stream(f"rtsp://admin:{quote(WRONG_PASSWORD, safe='')}@[::1/x")  # unclosed IPv6 bracket
    _assert_failed(bad, "not a valid URL")
    assert bad.url == "rtsp://admin:***@[::1/x"


def test_probe_unreachable_hosts_from_the_box(lan: Lan) -> None:
    """Nobody at 10.231.0.99 (ARP gives up after ~3 s) and no route at all to 192.0.2.1 from lan.box."""
    script = """
import asyncio, json
from edge.discovery.probe import probe_streams
items = [("rtsp://10.231.0.99:554/x", None, None), ("rtsp://192.0.2.1:554/x", None, None)]
print(json.dumps([[r.error, r.elapsed_s] for r in asyncio.run(probe_streams(items, timeout_s=5))]))
"""
    out = subprocess.run(
        lan.cmd(lan.box, [sys.executable, "-c", script]), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    (host, host_s), (net, net_s) = json.loads(out.stdout)
    assert host == "host unreachable"
    assert 2 < host_s < 5
    assert net == "network unreachable"
    assert net_s < 0.5


def test_probe_streams_keeps_order_and_never_raises(rtsp_server: RtspPeer, garbage_rtsp_url: str) -> None:
    items = [
        (rtsp_server.url("h264_aac"), None, None),
        (f"rtsp://127.0.0.1:{_closed_port()}/x", None, None),
        (rtsp_server.url("auth"), rtsp_server.auth_user, rtsp_server.auth_password),
        (garbage_rtsp_url, None, None),
        (rtsp_server.url("auth"), rtsp_server.auth_user, WRONG_PASSWORD),
        ("ftp://127.0.0.1/x", None, None),
    ]
    results = asyncio.run(probe_streams(items, timeout_s=3))
    assert [r.url for r in results] == [url for url, _user, _password in items]  # none had credentials in it
    assert [r.ok for r in results] == [True, False, True, False, False, False]
    assert results[0].audio_codec == "aac"
    assert results[1].error == "connection refused"
    assert results[4].error == "authentication failed (401)"
    assert asyncio.run(probe_streams([])) == []


def test_probe_streams_runs_at_most_concurrency_at_once(silent_rtsp_url: str) -> None:
    start = time.monotonic()
    results = asyncio.run(probe_streams([(silent_rtsp_url, None, None)] * 4, timeout_s=0.5, concurrency=2))
    took = time.monotonic() - start
    assert all(r.error == "timed out after 0.5 s" for r in results)
    assert 0.95 < took < 2.0  # two rounds of two


@pytest.mark.parametrize("concurrency", [8, 20])
def test_twenty_cameras_probed_in_parallel(rtsp_server: RtspPeer, concurrency: int) -> None:
    """What discovery pays for 20 cameras: measured 0.4 s with 20 threads, 1.0 s with 8 (2 cores)."""
    clips = ["h264_720p", "h264_1080p", "h265", "h264_aac", "h264_gop4"]
    items = [(rtsp_server.url(f"bench/{clips[i % 5]}/{i // 5}"), None, None) for i in range(20)]
    start = time.monotonic()
    results = asyncio.run(probe_streams(items, timeout_s=5, concurrency=concurrency))
    took = time.monotonic() - start
    slowest = max(r.elapsed_s for r in results)
    print(f"20 probes, concurrency {concurrency}: {took:.2f} s (slowest probe {slowest:.2f} s)")
    assert [r.error for r in results] == [None] * 20
    assert {(r.width, r.height) for r in results} == {(1280, 720), (1920, 1080), (640, 360)}
    assert took < 3.0  # inside discovery's 3 s window even on a busy 2-core box
