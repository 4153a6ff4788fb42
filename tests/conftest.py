"""Shared fixtures: pre-encoded clips, the real RTSP camera (gst-rtsp-server), bad cameras.

Nothing here skips when a tool is missing: ``make test`` installs ffmpeg and GStreamer, and a missing tool
must fail loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fmp4_samples import Muxed, mux_samples
from tests.lan import CAMS_IP, Lan
from tests.peers.garbage import JunkServer, SilentServer
from tests.peers.media import make_media
from tests.peers.rtsp_server import RtspPeer

# Every RTSP peer a session fixture started, so a test that stops or freezes one gets it back afterwards.
_RTSP_PEERS: list[RtspPeer] = []


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test clips (see tests/peers/media.py), encoded once per session."""
    d = tmp_path_factory.mktemp("media")
    make_media(d)
    return d


@pytest.fixture(scope="session")
def rtsp_server(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspPeer]:
    """A real RTSP server on 127.0.0.1 serving every clip as ``/<clip>``, plus ``/auth`` and
    ``/bench/<clip>/<0..3>``.

    ``.url(mount, user=None, password=None)``, ``.auth_user``/``.auth_password`` (``/auth`` wants them),
    ``.stop()``/``.start()`` (same port: the camera goes away and comes back), ``.kill()`` (abrupt),
    ``.freeze()``/``.thaw()`` (a hung camera: connections stay open, nothing arrives). A test that stops or
    freezes it gets it running again after the test. The server's log is ``rtsp_server.log`` in the session
    temp dir.
    """
    log_path = tmp_path_factory.mktemp("rtsp") / "rtsp_server.log"
    with log_path.open("a", encoding="utf-8") as log:
        peer = RtspPeer(media_dir, mount_copies=4, log=log)
        peer.start()
        _RTSP_PEERS.append(peer)
        try:
            yield peer
        finally:
            _RTSP_PEERS.remove(peer)
            peer.stop()


@pytest.fixture(scope="session")
def lan() -> Iterator[Lan]:
    """Two network namespaces on one veth (see tests/lan.py): ``lan.box`` for the appliance, ``lan.cams`` for
    the simulated cameras. Multicast tests run here, never on the host's own interfaces."""
    net = Lan.create()
    try:
        yield net
    finally:
        net.destroy()


@pytest.fixture(scope="session")
def lan_rtsp(lan: Lan, media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspPeer]:
    """The real RTSP server again, inside ``lan.cams`` listening on every camera address (``0.0.0.0``), so
    ``rtsp://<camera ip>:<lan_rtsp.port>/<clip>`` plays from ``lan.box``. ``.url()`` uses ``CAMS_IP``."""
    log_path = tmp_path_factory.mktemp("lan_rtsp") / "rtsp_server.log"
    with log_path.open("a", encoding="utf-8") as log:
        peer = RtspPeer(media_dir, host="0.0.0.0", prefix=lan.cmd(lan.cams, []), log=log)
        peer.start()
        peer.host = CAMS_IP
        try:
            yield peer
        finally:
            peer.stop()


@pytest.fixture(autouse=True)
def _rtsp_server_back_up() -> Iterator[None]:
    yield
    for peer in _RTSP_PEERS:
        peer.thaw()
        if not peer.running:
            peer.start()


@pytest.fixture(scope="session")
def garbage_rtsp_url() -> Iterator[str]:
    """An rtsp:// URL whose server answers junk bytes instead of RTSP, then hangs up."""
    with JunkServer() as junk:
        yield junk.url


@pytest.fixture(scope="session")
def silent_rtsp_url() -> Iterator[str]:
    """An rtsp:// URL whose server accepts the connection and never answers."""
    with SilentServer() as silent:
        yield silent.url


# fMP4 samples muxed once per session, shared by the parser and the stream-tracker tests.
@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Muxed]:
    return mux_samples(tmp_path_factory.mktemp("fmp4"))


@pytest.fixture(scope="session")
def h264(samples: dict[str, Muxed]) -> Muxed:
    return samples["h264"]


@pytest.fixture(scope="session")
def two_tracks(samples: dict[str, Muxed]) -> Muxed:
    return samples["h264_aac"]
