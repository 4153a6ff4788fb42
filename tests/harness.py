"""Drive the real `edge` daemon and CLI as processes, and check a data directory's invariants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import control
from edge.errors import Error
from edge.recorder.fmp4stream import scan_file
from edge.store import Store

EDGE = [sys.executable, "-m", "edge"]


def write_config(path: Path, data_dir: Path, **sections: dict[str, Any]) -> Path:
    """A TOML config with data_dir set and any other keys given as {section: {key: value}}.

    Unless a test says otherwise the daemon does not listen for WS-Discovery announcements: joining a
    multicast group sends IGMP reports out of the host's real interfaces. Discovery tests run in the
    namespaces of tests/lan.py and pass ``discovery={...}`` themselves.
    """
    sections.setdefault("discovery", {"listen": False})
    lines = ["[storage]", f'data_dir = "{data_dir}"']
    storage = sections.pop("storage", {})
    lines += [f"{k} = {_toml(v)}" for k, v in storage.items()]
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(v)}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(v: Any) -> str:
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def edge_cli(
    config: Path,
    *args: str,
    stdin: str | None = None,
    check: bool = True,
    prefix: list[str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``prefix``: e.g. ``lan.cmd(lan.box, [])`` to run the CLI inside the appliance's namespace."""
    proc = subprocess.run(
        [*(prefix or []), *EDGE, "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"edge {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@dataclass
class Daemon:
    """`edge run` in a subprocess; stderr goes to a log file the test can read."""

    config: Path
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    logs: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)  # e.g. lan.cmd(lan.box, []): run in a namespace

    def start(self, *, wait_recording: int = 0, timeout_s: float = 30.0) -> Daemon:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, *EDGE, "--config", str(self.config), "run"], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited early:\n{self.log_text()}"
            try:
                cams = self.status()
                if sum(c["state"] == "recording" and c["segments"] > 0 for c in cams) >= wait_recording:
                    return self
            except Error:
                pass
            time.sleep(0.2)
        raise AssertionError(f"daemon not ready in {timeout_s} s:\n{self.log_text()}")

    def status(self) -> list[dict[str, Any]]:
        return list(control.call(self.data_dir, "status", timeout_s=5)["cameras"])

    def wait_for(self, predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.status()):
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {self.status()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout_s)
        self.proc = None
        return rc

    def kill9(self) -> int:
        """kill -9; returns the wall time (UTC ns) just before the kill."""
        assert self.proc is not None
        t = time.time_ns()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        return t

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def index_problems(data_dir: Path) -> list[str]:
    """The index and the files agree exactly: every row's file exists with the indexed length of complete
    fragments, and every segment file on disk has a row."""
    problems = []
    store = Store.open(data_dir)
    try:
        rows = store.segments(states=("open", "closed", "deleting"))
    finally:
        store.close()
    by_path = {r.path: r for r in rows}
    for r in rows:
        p = data_dir / r.path
        if not p.exists():
            problems.append(f"row {r.id} points at missing {r.path}")
            continue
        size = p.stat().st_size
        if r.state == "closed" and size != r.bytes:
            problems.append(f"{r.path}: file is {size} bytes, index says {r.bytes}")
        with p.open("rb") as f:
            scan = scan_file(f)
        if r.bytes > size or (
            r.state == "closed" and scan.complete_end < r.bytes and scan.file_size != r.bytes
        ):
            problems.append(
                f"{r.path}: index claims {r.bytes} bytes, complete data ends at {scan.complete_end}"
            )
        if r.end_utc_ns < r.start_utc_ns or r.media_duration_ns < 0:
            problems.append(f"row {r.id} has a negative duration")
    for p in (data_dir / "recordings").rglob("*.mp4"):
        if p.relative_to(data_dir).as_posix() not in by_path:
            problems.append(f"{p} has no index row")
    return problems


def ffprobe(path: Path, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", *extra, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return dict(json.loads(out.stdout))


def decodes(path: Path) -> str | None:
    """None if ffmpeg decodes every frame without an error, else ffmpeg's complaint. The null muxer's own
    notes on timestamps (it assumes a constant frame rate; a clip with a gap has none) are not the file's."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    complaints = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("[null @")]
    if out.returncode != 0:
        return f"exit {out.returncode}: {out.stderr.strip()}"
    return "\n".join(complaints) or None
