"""Cameras that lie, refuse, vanish or never answer: a clear state for each, and nobody else affected."""

from __future__ import annotations

import itertools
import json
import socket
import time
from pathlib import Path
from typing import Any

from edge.clock import NS_PER_S
from edge.store import Store
from tests.harness import Daemon, edge_cli, index_problems, write_config
from tests.peers.rtsp_server import RtspPeer

SYNTH = "synthetic:?w=320&h=240&fps=15&gop=1&color=808080"


def _config(tmp_path: Path, **recording: object) -> tuple[Path, Path]:
    data = tmp_path / "data"
    cfg = write_config(
        tmp_path / "edge.toml",
        data,
        storage={"budget": "2 GB", "min_free_bytes": "16 MiB"},
        recording={
            "segment_s": 2,
            "open_timeout_s": 3.0,
            "read_timeout_s": 3.0,
            "reconnect_max_s": 2.0,
            **recording,
        },
    )
    return cfg, data


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _by_name(cams: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in cams}


def _no_gaps(data: Path, camera_id: int) -> None:
    segs = Store.open(data).segments(camera_id=camera_id)
    assert len(segs) >= 2
    for a, b in itertools.pairwise(segs):
        assert b.start_utc_ns == a.end_utc_ns, f"camera {camera_id} has a gap: {a} → {b}"


def test_bad_cameras_get_clear_states_and_do_not_disturb_a_good_one(
    tmp_path: Path, rtsp_server: RtspPeer, garbage_rtsp_url: str, silent_rtsp_url: str
) -> None:
    cfg, data = _config(tmp_path)
    edge_cli(cfg, "cameras", "add", rtsp_server.url("h264_720p"), "--name", "good")
    edge_cli(cfg, "cameras", "add", garbage_rtsp_url, "--name", "garbage")
    edge_cli(cfg, "cameras", "add", silent_rtsp_url, "--name", "silent")
    edge_cli(cfg, "cameras", "add", rtsp_server.url("no_such_mount"), "--name", "missing")
    edge_cli(cfg, "cameras", "add", f"rtsp://127.0.0.1:{_closed_port()}/x", "--name", "refused")
    edge_cli(cfg, "cameras", "add", rtsp_server.url("auth"), "--name", "noauth")
    edge_cli(
        cfg,
        "cameras",
        "add",
        rtsp_server.url("auth"),
        "--name",
        "wrongpw",
        "--user",
        rtsp_server.auth_user,
        "--password-stdin",
        stdin="not-the-password\n",
    )
    expected = {
        "garbage": {"bad_stream", "unreachable"},
        "silent": {"timeout"},
        "missing": {"not_found"},
        "refused": {"unreachable"},
        "noauth": {"auth_failed"},
        "wrongpw": {"auth_failed"},
    }
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=1)

        def all_reported(cams: list[dict[str, Any]]) -> bool:
            named = _by_name(cams)
            return all(named[n]["state"] == "retrying" and named[n]["error_kind"] for n in expected)

        d.wait_for(all_reported, timeout_s=30, what="every bad camera to report")
        named = _by_name(d.status())
        for name, kinds in expected.items():
            assert named[name]["error_kind"] in kinds, (name, named[name])
            assert named[name]["detail"], name
        time.sleep(4)  # several retry rounds
        named = _by_name(d.status())
        assert named["good"]["state"] == "recording"
        assert d.stop() == 0
        log = d.log_text()
    assert "Traceback" not in log
    good_id = _by_name([{"name": n, **c} for n, c in named.items()])["good"]["id"]
    _no_gaps(data, good_id)
    assert index_problems(data) == []


def test_camera_that_goes_away_for_ten_seconds_comes_back_by_itself(
    tmp_path: Path, rtsp_server: RtspPeer
) -> None:
    cfg, data = _config(tmp_path)
    edge_cli(cfg, "cameras", "add", rtsp_server.url("h264_720p"), "--name", "rtsp")
    edge_cli(cfg, "cameras", "add", SYNTH, "--name", "other")
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=2)
        time.sleep(3)
        down_at = time.time_ns()
        rtsp_server.stop()
        d.wait_for(
            lambda cams: _by_name(cams)["rtsp"]["state"] == "retrying", timeout_s=15, what="rtsp retrying"
        )
        time.sleep(10 - (time.time_ns() - down_at) / NS_PER_S)
        rtsp_server.start()
        up_at = time.time_ns()
        d.wait_for(
            lambda cams: (
                _by_name(cams)["rtsp"]["state"] == "recording"
                and (_by_name(cams)["rtsp"]["newest_utc_ns"] or 0) > up_at
            ),
            timeout_s=20,
            what="rtsp recording again",
        )
        time.sleep(2)
        assert d.stop() == 0
    store = Store.open(data)
    rtsp = store.segments(camera_id=1)
    store.close()
    gaps = [(b.start_utc_ns - a.end_utc_ns) / NS_PER_S for a, b in itertools.pairwise(rtsp)]
    big = [g for g in gaps if g > 1.0]
    assert len(big) == 1, gaps
    assert 9.0 <= big[0] <= 20.0, big  # the outage, visible in the index
    assert rtsp[-1].end_utc_ns > up_at
    _no_gaps(data, 2)  # the other camera never stopped
    assert index_problems(data) == []


def test_camera_password_never_leaks(tmp_path: Path, rtsp_server: RtspPeer) -> None:
    cfg, data = _config(tmp_path)
    secret = rtsp_server.auth_password
    assert len(secret) >= 8
    # Correct password (records), wrong path with the password, and the password typed into the URL.
    outputs = [
        edge_cli(
            cfg,
            "cameras",
            "add",
            rtsp_server.url("auth"),
            "--name",
            "ok",
            "--user",
            rtsp_server.auth_user,
            "--password-stdin",
            stdin=secret + "\n",
        ),
        edge_cli(
            cfg,
            "cameras",
            "add",
            rtsp_server.url("nope"),
            "--name",
            "wrongpath",
            "--user",
            rtsp_server.auth_user,
            "--password-stdin",
            stdin=secret + "\n",
        ),
        edge_cli(
            cfg, "cameras", "add", rtsp_server.url("auth", rtsp_server.auth_user, secret), "--name", "inurl"
        ),
    ]
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=2)
        d.wait_for(
            lambda cams: _by_name(cams)["wrongpath"]["error_kind"] == "not_found",
            timeout_s=20,
            what="wrongpath",
        )
        rtsp_server.stop()  # errors on a connection that had the credentials in its URL
        d.wait_for(lambda cams: _by_name(cams)["ok"]["state"] == "retrying", timeout_s=15, what="ok retrying")
        rtsp_server.start()
        outputs.append(edge_cli(cfg, "status", "--json"))
        outputs.append(edge_cli(cfg, "cameras", "list"))
        outputs.append(edge_cli(cfg, "cameras", "list", "--json"))
        status = json.loads(outputs[-3].stdout)
        assert d.stop() == 0
    named = _by_name(status)
    assert named["ok"]["segments"] > 0 and named["inurl"]["segments"] > 0
    assert "***" not in named["inurl"]["url"] and "@" not in named["inurl"]["url"]  # moved out, not masked
    texts = [o.stdout + o.stderr for o in outputs] + [(tmp_path / "daemon.log").read_text()]
    texts += [json.dumps(c) for c in status]
    for text in texts:
        assert secret not in text
    # The database (and its WAL) hold only sealed blobs.
    for f in data.glob("edge.db*"):
        assert secret.encode() not in f.read_bytes(), f
    assert "auth_failed" not in (tmp_path / "daemon.log").read_text()
