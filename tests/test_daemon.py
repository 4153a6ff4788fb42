"""The daemon as a process: clean shutdown, live camera changes, the demo, bad configuration."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2

from edge.store import Store
from tests.harness import EDGE, Daemon, decodes, edge_cli, index_problems, write_config

SYNTH_A = "synthetic:?w=320&h=240&fps=15&gop=1&color=ff0000"
SYNTH_B = "synthetic:?w=320&h=240&fps=10&gop=2&color=00ff00"


def _config(tmp_path: Path, **recording: object) -> tuple[Path, Path]:
    data = tmp_path / "data"
    cfg = write_config(
        tmp_path / "edge.toml",
        data,
        storage={"budget": "1 GB", "min_free_bytes": "16 MiB"},
        recording={"segment_s": 2, **recording},
    )
    return cfg, data


def test_sigterm_closes_every_open_segment(tmp_path: Path) -> None:
    cfg, data = _config(tmp_path)
    edge_cli(cfg, "cameras", "add", SYNTH_A, "--name", "a")
    edge_cli(cfg, "cameras", "add", SYNTH_B, "--name", "b")
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=2)
        time.sleep(3.5)
        assert d.stop(signal.SIGTERM) == 0
    store = Store.open(data)
    segs = store.segments(states=("open", "closed", "deleting"))
    store.close()
    assert segs, "nothing recorded"
    assert {s.state for s in segs} == {"closed"}
    assert {s.camera_id for s in segs} == {1, 2}
    assert index_problems(data) == []
    for s in segs:
        assert decodes(data / s.path) is None, s.path
    log = (tmp_path / "daemon.log").read_text()
    assert "edge stopped" in log
    # One event a line, each with a UTC timestamp; camera lines carry the camera id.
    for line in log.splitlines():
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line), line
    assert re.search(r"camera=1 .*recording h264 320x240", log)


def test_running_daemon_picks_up_added_and_removed_cameras(tmp_path: Path) -> None:
    cfg, data = _config(tmp_path)
    edge_cli(cfg, "cameras", "add", SYNTH_A, "--name", "a")
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=1)
        out = edge_cli(cfg, "cameras", "add", SYNTH_B, "--name", "b")
        assert "note: the daemon is not running" not in out.stderr
        d.wait_for(
            lambda cams: any(c["id"] == 2 and c["state"] == "recording" for c in cams), what="camera 2"
        )
        before = len(Store.open(data).segments(camera_id=1))
        edge_cli(cfg, "cameras", "remove", "1")
        d.wait_for(lambda cams: [c["id"] for c in cams] == [2], what="camera 1 gone")
        time.sleep(2.5)  # camera 1 must not record any more
        after = Store.open(data).segments(camera_id=1)
        assert len(after) == before or len(after) == before + 1  # at most the segment it was writing
        assert all(s.state == "closed" for s in after)
        assert all((data / s.path).exists() for s in after), "removal must keep footage"
        assert d.stop() == 0
    listed = edge_cli(cfg, "cameras", "list", "--all").stdout
    assert "removed" in listed and "active" in listed


def test_cli_tells_when_no_daemon_runs(tmp_path: Path) -> None:
    cfg, _ = _config(tmp_path)
    out = edge_cli(cfg, "cameras", "add", SYNTH_A)
    assert "added camera 1" in out.stdout
    assert "daemon is not running" in out.stderr
    status = edge_cli(cfg, "status", check=False)
    assert status.returncode == 1
    assert status.stderr.strip().startswith("edge: no edge daemon is running")


def test_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "edge.toml"
    bad.write_text('[storage]\ndata_dir = "/tmp/x"\n[recording]\nsegment_s = "sixty"\n')
    proc = subprocess.run([*EDGE, "--config", str(bad), "run"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "recording.segment_s" in lines[0]
    assert "Traceback" not in proc.stderr

    bad.write_text('[storage]\ndata_dir = "/tmp/x"\nbudgit = "1 GB"\n')
    proc = subprocess.run([*EDGE, "--config", str(bad), "run"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "storage.budgit" in proc.stderr


def test_demo_records_three_cameras_serves_its_local_hub_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    proc = subprocess.run(
        [*EDGE, "--data-dir", str(data), "demo", "--duration-s", "16", "--every-s", "3"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    # The local hub: the integrated camera's live view and recent footage arrive decrypted and decode; the
    # private camera is refused as if it did not exist.
    saved = re.findall(r"hub:   camera 1: (\d+) bytes decrypted \((\w+)\) → (\S+)", proc.stdout)
    assert [reason for _, reason, _ in saved] == ["hub_closed", "complete"], proc.stdout
    for _, _, video in saved:
        assert decodes(Path(video)) is None
    assert "live view of camera 3 (private): refused (no_such_camera)" in proc.stdout
    tables = proc.stdout.split(" UTC\n")
    last = tables[-1]
    assert len(re.findall(r"\brecording\b", last)) == 3, proc.stdout
    assert f"Recordings are in {data / 'recordings'}" in proc.stdout
    store = Store.open(data)
    segs = store.segments()
    store.close()
    assert {s.camera_id for s in segs} == {1, 2, 3}
    assert {s.state for s in segs} == {"closed"}
    assert index_problems(data) == []


def test_python_m_edge_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "--help"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    for cmd in ("run", "demo", "cameras", "export", "snapshot", "status"):
        assert cmd in proc.stdout


def test_export_and_snapshot_from_the_command_line(tmp_path: Path) -> None:
    cfg, data = _config(tmp_path)
    edge_cli(cfg, "cameras", "add", SYNTH_A, "--name", "a")
    with Daemon(cfg, data, tmp_path / "daemon.log") as d:
        d.start(wait_recording=1)
        time.sleep(4)
        live = edge_cli(cfg, "snapshot", "--camera", "1", "-o", str(tmp_path / "live.jpg"))
        assert "live" in live.stdout
        clip = tmp_path / "clip.mp4"
        out = edge_cli(cfg, "export", "--camera", "1", "--from", "-3s", "--to", "now", "-o", str(clip))
        assert d.stop() == 0
    assert "sha256" in out.stdout and clip.exists() and decodes(clip) is None
    manifest = json.loads((tmp_path / "clip.mp4.manifest.json").read_text())
    assert manifest["clip"]["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    stored = edge_cli(cfg, "snapshot", "--camera", "1", "-o", str(tmp_path / "stored.jpg"))
    assert "latest recording" in stored.stdout
    for jpg in ("live.jpg", "stored.jpg"):
        img = cv2.imread(str(tmp_path / jpg))
        assert img is not None and img.shape == (240, 320, 3)
        assert img[..., 2].mean() > img[..., 1].mean() + 60  # the red synthetic camera
    again = edge_cli(
        cfg, "export", "--camera", "1", "--from", "-3s", "--to", "now", "-o", str(clip), check=False
    )
    assert again.returncode == 1 and again.stderr.count("\n") == 1  # never overwrites; one clear line
    empty = edge_cli(
        cfg,
        "export",
        "--camera",
        "1",
        "--from",
        "-2h",
        "--to",
        "-1h",
        "-o",
        str(tmp_path / "x.mp4"),
        check=False,
    )
    assert empty.returncode == 1 and "no recordings for camera 1" in empty.stderr


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    proc = subprocess.Popen(
        [*EDGE, "--data-dir", str(data), "demo", "--every-s", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"Recordings are in {data / 'recordings'}" in out
    store = Store.open(data)
    segs = store.segments()
    store.close()
    assert {s.state for s in segs} == {"closed"} and {s.camera_id for s in segs} == {1, 2, 3}
