"""Recorder benchmark: edge vs. one edge process per camera vs. `ffmpeg -c copy -f segment`, side by side.

    .venv/bin/python bench/record.py [--streams 1,8,32] [--seconds 45] [--rounds 3] [--clip h264_720p]
    .venv/bin/python bench/record.py --quick          # ~2 min smoke run

One RTSP peer (tests/peers/rtsp_server.py, pre-encoded looping clips, no encoding) serves every stream from
its own mount ``/bench/<clip>/<i>``. For each N and each round, in alternating order:

* ``edge``: one ``edge run`` process with N cameras (one thread per camera), fresh data dir on the disk;
* ``edge-proc``: N ``edge run`` processes with one camera each (the "a process per camera" design; skipped
  at N = 1, where it is the same thing);
* ``ffmpeg``: N ``ffmpeg -c copy -f segment`` processes (what Frigate runs).

Each starts, waits until every stream is recording, settles, then is measured over ``--seconds``: CPU
(utime+stime of the processes, all threads) and PSS (smaps_rollup, sampled every second, peak of the sum).
It is then stopped cleanly and its output checked for loss: the video packets of every stream are placed
on the wall clock (edge: the index's segment start + media time; ffmpeg: the segment files back to back,
the last packet at the moment SIGTERM was sent) and counted inside the window (expected: floor(window * fps));
"gap frames" are holes in the packet timeline over the whole recording (timestamps further apart than
1.5 frames), anchor-free.

Prints the markdown table at the end (stdout); progress goes to stderr; raw numbers to
``<workdir>/record/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import IO, Any

from common import (
    DEFAULT_WORKDIR,
    EDGE,
    FFMPEG,
    REPO,
    VENV_BIN,
    Window,
    command_line,
    fmt,
    fresh_dir,
    log,
    machine,
    machine_line,
    md_table,
    median,
)

NS = 1_000_000_000
VARIANTS = ("edge", "edge-proc", "ffmpeg")
LABELS = {
    "edge": "edge (1 process, thread per camera)",
    "edge-proc": "edge (process per camera)",
    "ffmpeg": "ffmpeg -c copy -f segment",
}


@dataclass
class StreamLoss:
    counted: int  # video packets inside the window
    expected: int  # floor(window * fps)
    gap_frames: int  # holes in the timeline, whole recording
    index_coverage: float | None = None  # edge: indexed media seconds in the window / window seconds

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.counted)


@dataclass
class RunResult:
    variant: str
    streams: int
    round: int
    processes: int
    window_s: float
    cpu_s: float
    sys_s: float  # the kernel's share of cpu_s
    peak_pss_kib: int
    peak_rss_max_kib: int  # largest single process RSS seen (edge's memory target is about RSS)
    server_cpu_s: float
    machine_busy: float  # cores busy machine-wide during the window
    machine_steal: float
    startup_s: float
    losses: list[StreamLoss] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def cpu_per_stream_min(self) -> float:
        return self.cpu_s / self.streams / (self.window_s / 60)

    @property
    def lost(self) -> int:
        return sum(x.lost for x in self.losses)

    @property
    def gap_frames(self) -> int:
        return sum(x.gap_frames for x in self.losses)

    @property
    def ok(self) -> bool:
        return (
            not self.errors and len(self.losses) == self.streams and self.lost == 0 and self.gap_frames == 0
        )


class Ctx:
    def __init__(self, args: argparse.Namespace, work: Path, peer: Any, fps: int) -> None:
        self.args = args
        self.work = work
        self.peer = peer
        self.fps = fps
        self.port_seq = 0
        self.edge_cmd = shlex.split(args.edge_cmd) if args.edge_cmd else [str(EDGE)]

    def url(self, i: int) -> str:
        return str(self.peer.url(f"bench/{self.args.clip}/{i}"))

    def web_port(self) -> int:
        # The daemon has no web server yet; when it does, every process needs its own loopback port.
        self.port_seq += 1
        return 28000 + self.port_seq % 2000


# --- packets -> loss --------------------------------------------------------------------------------------


def video_dts_ns(path: Path) -> tuple[list[int], int]:
    """Video packet decode times (ns, file time) and the last packet's duration (ns)."""
    import av

    out: list[int] = []
    last_dur = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb = s.time_base
        assert tb is not None
        num, den = tb.numerator * NS, tb.denominator
        for pkt in c.demux(s):
            if pkt.dts is None:
                continue
            out.append(pkt.dts * num // den)
            last_dur = (pkt.duration or 0) * num // den
    return out, last_dur


def stream_loss(wall_ns: list[int], t0: int, t1: int, fps: int) -> StreamLoss:
    frame_ns = NS / fps
    wall_ns.sort()
    counted = sum(1 for t in wall_ns if t0 <= t < t1)
    gaps = 0
    for a, b in itertools.pairwise(wall_ns):
        if b - a > 1.5 * frame_ns:
            gaps += round((b - a) / frame_ns) - 1
    return StreamLoss(counted=counted, expected=math.floor((t1 - t0) / NS * fps), gap_frames=gaps)


def edge_losses(data_dir: Path, t0: int, t1: int, fps: int) -> list[StreamLoss]:
    db = sqlite3.connect(f"file:{data_dir / 'edge.db'}?mode=ro", uri=True)
    try:
        cams = [r[0] for r in db.execute("SELECT id FROM cameras ORDER BY id")]
        rows = db.execute(
            "SELECT camera_id, start_utc_ns, end_utc_ns, path FROM segments WHERE state != 'deleting'"
            " ORDER BY camera_id, start_utc_ns"
        ).fetchall()
    finally:
        db.close()
    out = []
    for cam in cams:
        wall: list[int] = []
        covered = 0
        for _cid, start, end, rel in (r for r in rows if r[0] == cam):
            covered += max(0, min(end, t1) - max(start, t0))
            dts, _ = video_dts_ns(data_dir / rel)
            wall += [start + d for d in dts]
        loss = stream_loss(wall, t0, t1, fps)
        loss.index_coverage = covered / (t1 - t0)
        out.append(loss)
    return out


def ffmpeg_loss(out_dir: Path, t0: int, t1: int, stop_ns: int, fps: int) -> StreamLoss:
    """Segment files back to back (-reset_timestamps 1 restarts each at 0), last packet at ``stop_ns``."""
    pos: list[int] = []
    offset = 0
    for f in sorted(out_dir.glob("out*.mp4")):
        with contextlib.suppress(Exception):  # a file ffmpeg never finished is no footage
            dts, last_dur = video_dts_ns(f)
            if not dts:
                continue
            first = dts[0]
            pos += [offset + d - first for d in dts]
            offset += dts[-1] - first + (last_dur or round(NS / fps))
    if not pos:
        return StreamLoss(counted=0, expected=math.floor((t1 - t0) / NS * fps), gap_frames=0)
    shift = stop_ns - pos[-1]
    return stream_loss([p + shift for p in pos], t0, t1, fps)


# --- processes ------------------------------------------------------------------------------------------


def stop_all(procs: list[Popen], timeout_s: float = 30.0) -> list[str]:
    errors = []
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            errors.append(f"pid {p.pid} ignored SIGTERM for {timeout_s:.0f} s (killed)")
    for p in procs:
        if p.returncode not in (0, -signal.SIGTERM, 255):
            errors.append(f"pid {p.pid} exited with {p.returncode}")
    return errors


def write_config(data_dir: Path, port: int) -> Path:
    cfg = data_dir.parent / f"{data_dir.name}.toml"
    cfg.write_text(
        f'[storage]\ndata_dir = "{data_dir}"\nbudget = "50 GB"\nmin_free_bytes = "64 MiB"\n\n'
        f"[recording]\nsegment_s = 60\n\n"
        f'[web]\nlisten = ["127.0.0.1:{port}"]\n\n[log]\nlevel = "info"\n'
    )
    return cfg


def add_cameras(data_dir: Path, urls: list[tuple[int, str]]) -> None:
    """What `edge cameras add URL --name N` does, without starting a Python process per camera."""
    from edge.store import Store

    store = Store.open(data_dir)
    try:
        for i, url in urls:
            store.add_camera(
                name=f"bench {i}",
                url=url,
                username=None,
                password_blob=None,
                max_age_s=None,
                now_utc_ns=time.time_ns(),
            )
    finally:
        store.close()


def wait_edge_recording(dirs: list[Path], procs: list[Popen], timeout_s: float) -> None:
    from edge import control

    deadline = time.monotonic() + timeout_s
    pending = list(dirs)
    while pending:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"edge pid {p.pid} exited with {p.returncode} during start-up")
        still = []
        for d in pending:
            try:
                cams = control.call(d, "status", timeout_s=5)["cameras"]
            except Exception:
                still.append(d)
                continue
            if not cams or any(c["state"] != "recording" for c in cams):
                still.append(d)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} edge data dirs not recording after {timeout_s:.0f} s")
            time.sleep(0.5)


def measure(
    ctx: Ctx, variant: str, n: int, rnd: int, pids: list[int], started: float
) -> tuple[RunResult, Window]:
    args = ctx.args
    startup = time.monotonic() - started
    time.sleep(args.settle)
    with Window(pids, others=[ctx.peer.pid] if ctx.peer.pid else []) as w:
        time.sleep(args.seconds)
    return RunResult(
        variant=variant,
        streams=n,
        round=rnd,
        processes=len(pids),
        window_s=w.wall_s,
        cpu_s=w.cpu_s,
        sys_s=w.sys_s,
        peak_pss_kib=w.peak_pss_kib,
        peak_rss_max_kib=w.peak_rss_max_kib,
        server_cpu_s=w.other_cpu_s,
        machine_busy=w.machine_busy,
        machine_steal=w.machine_steal,
        startup_s=startup,
    ), w


Hook = Callable[[list[int]], str]  # profiling: called with the pids once recording, instead of measuring


def start_edge(
    ctx: Ctx, base: Path, n: int, per_process: bool
) -> tuple[list[Path], list[Popen], list[IO[bytes]]]:
    groups = [[i] for i in range(n)] if per_process else [list(range(n))]
    dirs, procs, logs = [], [], []
    for g, cams in enumerate(groups):
        d = base / (f"p{g:02d}" if per_process else "data")
        d.mkdir()
        cfg = write_config(d, ctx.web_port())
        add_cameras(d, [(i, ctx.url(i)) for i in cams])
        logf: IO[bytes] = open(d.parent / f"{d.name}.log", "wb")  # noqa: SIM115
        logs.append(logf)
        cmd = [*ctx.edge_cmd, "--config", str(cfg), "run"]
        procs.append(Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL))
        dirs.append(d)
    wait_edge_recording(dirs, procs, timeout_s=60 + 3 * n)
    return dirs, procs, logs


def run_edge(ctx: Ctx, n: int, rnd: int, *, per_process: bool, hook: Hook | None = None) -> Any:
    variant = "edge-proc" if per_process else "edge"
    base = fresh_dir(ctx.work / f"n{n}-r{rnd}-{variant}")
    started = time.monotonic()
    procs: list[Popen] = []
    logs: list[IO[bytes]] = []
    try:
        dirs, procs, logs = start_edge(ctx, base, n, per_process)
        if hook is not None:
            time.sleep(ctx.args.settle)
            return hook([p.pid for p in procs])
        res, w = measure(ctx, variant, n, rnd, [p.pid for p in procs], started)
        time.sleep(ctx.args.grace)
    finally:
        errors = stop_all(procs)
        for f in logs:
            f.close()
        if hook is not None:
            shutil.rmtree(base, ignore_errors=True)
    res.errors += errors
    for d in dirs:
        res.losses += edge_losses(d, w.t0_ns, w.t1_ns, ctx.fps)
    return res


def start_ffmpeg(ctx: Ctx, base: Path, n: int) -> tuple[list[Path], list[Popen], list[IO[bytes]]]:
    dirs, procs, logs = [], [], []
    for i in range(n):
        d = base / f"s{i:02d}"
        d.mkdir()
        logf: IO[bytes] = open(base / f"s{i:02d}.log", "wb")  # noqa: SIM115
        logs.append(logf)
        cmd = [
            FFMPEG,
            "-nostdin",
            "-loglevel",
            "error",
            "-rtsp_transport",
            "tcp",
            "-i",
            ctx.url(i),
            "-c",
            "copy",
            "-f",
            "segment",
            "-segment_time",
            "60",
            "-reset_timestamps",
            "1",
            "out%05d.mp4",
        ]
        procs.append(Popen(cmd, cwd=d, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL))
        dirs.append(d)
    deadline = time.monotonic() + 30 + n

    def recording(d: Path) -> bool:
        first = d / "out00000.mp4"
        return first.exists() and first.stat().st_size > 64 << 10

    while not all(recording(d) for d in dirs):
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("an ffmpeg process exited during start-up (see its log)")
        if time.monotonic() > deadline:
            raise RuntimeError("ffmpeg processes not recording in time")
        time.sleep(0.25)
    return dirs, procs, logs


def run_ffmpeg(ctx: Ctx, n: int, rnd: int, *, hook: Hook | None = None) -> Any:
    base = fresh_dir(ctx.work / f"n{n}-r{rnd}-ffmpeg")
    started = time.monotonic()
    procs: list[Popen] = []
    logs: list[IO[bytes]] = []
    stop_ns = 0
    try:
        dirs, procs, logs = start_ffmpeg(ctx, base, n)
        if hook is not None:
            time.sleep(ctx.args.settle)
            return hook([p.pid for p in procs])
        res, w = measure(ctx, "ffmpeg", n, rnd, [p.pid for p in procs], started)
        time.sleep(ctx.args.grace)
        stop_ns = time.time_ns()
    finally:
        errors = stop_all(procs)
        for f in logs:
            f.close()
        if hook is not None:
            shutil.rmtree(base, ignore_errors=True)
    res.errors += errors
    for d in dirs:
        res.losses.append(ffmpeg_loss(d, w.t0_ns, w.t1_ns, stop_ns, ctx.fps))
    return res


# --- profiling ------------------------------------------------------------------------------------------


def pyspy(pid: int, out: Path, seconds: int, *extra: str) -> bool:
    spy = VENV_BIN / "py-spy"
    cmd = [str(spy), "record", "--rate", "100", "--duration", str(seconds), "-o", str(out), "--pid", str(pid)]
    subprocess.run([*cmd, *extra], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out.exists()


def top_functions(raw: Path, limit: int = 15) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """(self time, inclusive time of edge's own functions, samples) from py-spy's raw (collapsed) stacks."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [_frame_name(f) for f in stack.split(";")]
        self_c[frames[-1]] += c
        for f in set(frames):
            if "edge/" in f:
                incl[f] += c
    total = max(total, 1)
    return (
        [(k, c / total) for k, c in self_c.most_common(limit)],
        [(k, c / total) for k, c in incl.most_common(limit)],
        total,
    )


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (file.py)``; a native frame keeps its library name."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", str(REPO) + "/", "/lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    if name.startswith("0x"):
        name = "?"  # an unresolved libc address: the same function under many addresses
    return f"{name} ({file})" if file else name


def perf_profile(pids: list[int], out: Path, seconds: int) -> dict[str, Any] | None:
    """CPU profile with the kernel (``perf record -g``): share by library, and by system call (inclusive)."""
    if shutil.which("perf") is None:
        return None
    freq = 499
    subprocess.run(
        [
            "perf",
            "record",
            "-F",
            str(freq),
            "-g",
            "-o",
            str(out),
            "-p",
            ",".join(map(str, pids)),
            "--",
            "sleep",
            str(seconds),
        ],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not out.exists():
        return None

    def report(*opts: str) -> list[tuple[float, str]]:
        text = subprocess.run(
            ["perf", "report", "-i", str(out), "--stdio", "-g", "none", *opts],
            check=False,
            capture_output=True,
            text=True,
        ).stdout
        rows = []
        for line in text.splitlines():
            parts = line.split()
            if line.startswith("#") or not parts or not parts[0].endswith("%"):
                continue
            rows.append((float(parts[0].rstrip("%")) / 100, " ".join(parts[1:])))
        return rows

    header = subprocess.run(
        ["perf", "report", "-i", str(out), "--stdio", "--header-only"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    samples = 0
    total_text = subprocess.run(
        ["perf", "report", "-i", str(out), "--stdio", "-g", "none", "--sort", "dso"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    for line in total_text.splitlines():
        if line.startswith("# Samples:"):
            v = line.split()[2]
            samples = int(float(v[:-1]) * 1000) if v.endswith("K") else int(v)
    del header
    dsos = report("--no-children", "--sort", "dso")
    syscalls = []
    for share, sym in report("--children", "--sort", "sym"):
        # "--children" rows: children% self% [k] name
        parts = sym.split()
        name = parts[-1]
        if name.startswith("__x64_sys_"):
            syscalls.append((float(share), name.removeprefix("__x64_sys_")))
    return {"cores": samples / freq / seconds, "dsos": dsos[:10], "syscalls": syscalls[:10]}


SYSCALLS = (
    "fsync",
    "fdatasync",
    "fcntl",
    "futex",
    "recvfrom",
    "poll",
    "write",
    "pwrite64",
    "clock_nanosleep",
)


def syscall_rates(pids: list[int], seconds: int) -> dict[str, float] | None:
    """System calls per second (``perf stat`` on the syscall tracepoints: counts only, nothing is paused)."""
    if shutil.which("perf") is None:
        return None
    events = ",".join(f"syscalls:sys_enter_{c}" for c in SYSCALLS) + ",context-switches"
    cmd = [
        "perf",
        "stat",
        "-x",
        ",",
        "-e",
        events,
        "-p",
        ",".join(map(str, pids)),
        "--",
        "sleep",
        str(seconds),
    ]
    text = subprocess.run(cmd, check=False, capture_output=True, text=True).stderr
    rates = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].strip().isdigit():
            rates[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0]) / seconds
    return rates or None


def _rows_pairs(pe: list[tuple[float, str]], pf: list[tuple[float, str]]) -> list[str]:
    return list(dict.fromkeys([k for _, k in pe] + [k for _, k in pf]))


def profile(ctx: Ctx, n: int) -> str:
    """Separate runs at N streams, least intrusive first: perf stat (counts), perf record (CPU samples with
    the kernel), py-spy --gil --nonblocking, py-spy --native (which pauses the process ~100 times a second:
    edge falls behind while it runs, so it goes last and nothing is measured after it)."""
    secs = int(ctx.args.profile_seconds)
    work = ctx.work
    found: dict[str, Any] = {}
    spy_md: list[str] = []

    def edge_hook(pids: list[int]) -> str:
        pid = pids[0]
        log(f"perf stat + perf record on edge pid {pid}, {secs} s each")
        found["edge_sys"] = syscall_rates([pid], secs)
        found["edge_perf"] = perf_profile([pid], work / "perf-edge.data", secs)
        if not (VENV_BIN / "py-spy").exists():
            spy_md.append(
                "py-spy is not installed in the venv (`.venv/bin/pip install py-spy`): no py-spy profile."
            )
            return ""
        raw, gil, svg = work / "pyspy-native.txt", work / "pyspy-gil.txt", work / "pyspy-native.svg"
        log(f"py-spy --gil, then --native on edge pid {pid}, {secs} s each")
        pyspy(pid, gil, secs, "--gil", "--nonblocking", "--format", "raw")
        pyspy(pid, raw, secs, "--native", "--format", "raw")
        pyspy(pid, svg, min(secs, 15), "--native")
        for path, what in (
            (
                gil,
                "py-spy --gil --nonblocking: the thread holding the GIL, i.e. where Python itself spends CPU",
            ),
            (
                raw,
                "py-spy --native: every thread not idle (wall time: sleeping in C counts; the process is"
                " paused for each sample)",
            ),
        ):
            if not path.exists():
                continue
            selft, incl, total = top_functions(path)
            spy_md.append(f"{what}; {total} samples ({path}; flame graph {svg}):\n")
            spy_md.append(md_table(["function (self)", "share"], [[f"`{k}`", f"{v:.1%}"] for k, v in selft]))
            spy_md.append("")
            spy_md.append(
                md_table(["edge function (inclusive)", "share"], [[f"`{k}`", f"{v:.1%}"] for k, v in incl])
            )
            spy_md.append("")
        return ""

    def ffmpeg_hook(pids: list[int]) -> str:
        log(f"perf stat + perf record on {len(pids)} ffmpeg processes, {secs} s each")
        found["ff_sys"] = syscall_rates(pids, secs)
        found["ff_perf"] = perf_profile(pids, work / "perf-ffmpeg.data", secs)
        return ""

    run_ffmpeg(ctx, n, 99, hook=ffmpeg_hook)
    run_edge(ctx, n, 99, per_process=False, hook=edge_hook)
    md: list[str] = []
    se, sf = found.get("edge_sys"), found.get("ff_sys")
    if se and sf:
        md.append(f"System calls per second per stream (`perf stat`, {secs} s, {n} streams):\n")
        rows = [
            [f"`{k}`", f"{se.get(k, 0) / n:.1f}", f"{sf.get(k, 0) / n:.1f}"]
            for k in [*SYSCALLS, "context-switches"]
        ]
        md += [md_table(["call", "edge", "ffmpeg"], rows), ""]
    pe, pf = found.get("edge_perf"), found.get("ff_perf")
    if pe and pf:
        md.append(
            f"`perf record -g` ({secs} s, {n} streams): edge {pe['cores']:.3f} cores, {n} x ffmpeg"
            f" {pf['cores']:.3f} cores, by library:\n"
        )
        de, df = {k: v for v, k in pe["dsos"]}, {k: v for v, k in pf["dsos"]}
        rows = [
            [f"`{k}`", f"{de.get(k, 0) * pe['cores']:.3f}", f"{df.get(k, 0) * pf['cores']:.3f}"]
            for k in _rows_pairs(pe["dsos"], pf["dsos"])
        ]
        md += [md_table(["library", "edge cores", "ffmpeg cores"], rows), ""]
        ce, cf = {k: v for v, k in pe["syscalls"]}, {k: v for v, k in pf["syscalls"]}
        rows = [
            [f"`{k}`", f"{ce.get(k, 0) * pe['cores']:.3f}", f"{cf.get(k, 0) * pf['cores']:.3f}"]
            for k in _rows_pairs(pe["syscalls"], pf["syscalls"])
        ]
        md += [
            md_table(["system call (with the kernel work below it)", "edge cores", "ffmpeg cores"], rows),
            "",
        ]
    return "\n".join(md + spy_md)


# --- report ---------------------------------------------------------------------------------------------


def report(results: list[RunResult], args: argparse.Namespace, mach: dict[str, str]) -> str:
    out = [f"Machine: {machine_line(mach)}", "", f"Command: `{command_line()}`", ""]
    header = [
        "streams",
        "recorder",
        "CPU s / stream-min",
        "vs ffmpeg (x)",
        "peak PSS total",
        "PSS / stream",
        "largest RSS",
        "lost frames",
        "gap frames",
        "all streams OK",
    ]
    rows = []
    for n in args.streams:
        ff = {r.round: r for r in results if r.streams == n and r.variant == "ffmpeg"}
        for v in args.variants:
            runs = [r for r in results if r.streams == n and r.variant == v]
            if not runs:
                continue
            ratios = [r.cpu_per_stream_min / ff[r.round].cpu_per_stream_min for r in runs if r.round in ff]
            pss = median(r.peak_pss_kib for r in runs) / 1024
            ok = sum(r.ok for r in runs)
            rows.append(
                [
                    str(n),
                    LABELS[v],
                    fmt(median(r.cpu_per_stream_min for r in runs), 3),
                    fmt(median(ratios)) if v != "ffmpeg" and ratios else "1",
                    f"{pss:.0f} MiB",
                    f"{pss / n:.1f} MiB",
                    f"{median(r.peak_rss_max_kib for r in runs) / 1024:.0f} MiB",
                    "/".join(str(r.lost) for r in runs),
                    "/".join(str(r.gap_frames) for r in runs),
                    f"{'yes' if ok == len(runs) else 'NO'} ({ok}/{len(runs)} rounds)",
                ]
            )
    out.append(md_table(header, rows))
    out += [
        "",
        "Per round (side by side; CPU s / stream-min, machine busy cores and steal during the window):",
        "",
    ]
    rows = []
    for r in results:
        rows.append(
            [
                str(r.streams),
                str(r.round + 1),
                r.variant,
                fmt(r.cpu_per_stream_min, 3),
                f"{r.sys_s / r.cpu_s:.0%}" if r.cpu_s else "-",
                f"{r.window_s:.1f}",
                f"{r.peak_pss_kib / 1024:.0f}",
                fmt(r.server_cpu_s / r.window_s * 100, 1) + " %",
                fmt(r.machine_busy),
                fmt(r.machine_steal * 100, 1) + " %",
                f"{r.startup_s:.1f}",
                f"{min((x.counted / x.expected for x in r.losses if x.expected), default=0):.4f}",
                "; ".join(r.errors)[:80] or "-",
            ]
        )
    out.append(
        md_table(
            [
                "N",
                "round",
                "recorder",
                "CPU s/stream-min",
                "kernel share",
                "window s",
                "peak PSS MiB",
                "RTSP server CPU",
                "machine busy",
                "steal",
                "start-up s",
                "min counted/expected",
                "errors",
            ],
            rows,
        )
    )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--streams", default="1,8,32", help="comma-separated stream counts (default 1,8,32)")
    p.add_argument("--seconds", type=float, default=45.0, help="measured window per run (default 45)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clip", default="h264_720p", help="tests/peers/media.py clip (h264_720p, h264_1080p)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--settle", type=float, default=3.0, help="seconds between 'all recording' and the window")
    p.add_argument("--grace", type=float, default=2.0, help="seconds recorded after the window, before stop")
    p.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="py-spy the edge process at the largest N (auto: if edge CPU > ffmpeg's)",
    )
    p.add_argument("--profile-seconds", type=float, default=15.0, help="length of each profile")
    p.add_argument("--edge-cmd", help="command that starts edge (default .venv/bin/edge), e.g. another build")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="on the real disk")
    p.add_argument("--keep", action="store_true", help="keep the recordings")
    p.add_argument("--quick", action="store_true", help="smoke run: 1,8 streams, 12 s, 1 round")
    args = p.parse_args()
    if args.quick:
        args.streams, args.seconds, args.rounds = "1,8", 12.0, 1
        args.profile = "never" if args.profile == "auto" else args.profile
    args.streams = [int(x) for x in str(args.streams).split(",") if x]
    args.variants = [v for v in VARIANTS if v in args.variants.split(",")]

    from tests.peers.media import CLIPS, make_media
    from tests.peers.rtsp_server import RtspPeer

    mach = machine()
    work = fresh_dir(args.workdir / f"record-{args.clip}")
    log(f"encoding/caching clip {args.clip}")
    media = args.workdir / "media" / args.clip
    make_media(media, [args.clip])
    fps = CLIPS[args.clip].fps
    rtsp_log = open(work / "rtsp_server.log", "w")  # noqa: SIM115
    peer = RtspPeer(media, mount_copies=max(args.streams), log=rtsp_log)
    peer.start()
    ctx = Ctx(args, work, peer, fps)
    results: list[RunResult] = []
    profile_md = ""
    try:
        for n in args.streams:
            variants = [v for v in args.variants if not (v == "edge-proc" and n == 1)]
            for rnd in range(args.rounds):
                for v in variants if rnd % 2 == 0 else variants[::-1]:
                    log(f"N={n} round {rnd + 1}/{args.rounds}: {v}")
                    try:
                        res = (
                            run_ffmpeg(ctx, n, rnd)
                            if v == "ffmpeg"
                            else run_edge(ctx, n, rnd, per_process=v == "edge-proc")
                        )
                    except Exception as e:
                        log(f"  failed: {e}")
                        nan = float("nan")
                        res = RunResult(v, n, rnd, 0, nan, nan, nan, 0, 0, 0, 0, 0, 0, errors=[str(e)])
                    results.append(res)
                    pss = res.peak_pss_kib / 1024
                    log(
                        f"  {res.cpu_per_stream_min:.3f} CPU s/stream-min, peak PSS {pss:.0f} MiB,"
                        f" lost {res.lost}, gaps {res.gap_frames}, busy {res.machine_busy:.2f}"
                        f" {'; '.join(res.errors)}"
                    )
                    if not args.keep:
                        shutil.rmtree(ctx.work / f"n{n}-r{rnd}-{v}", ignore_errors=True)
        nmax = max(args.streams)
        edge_cpu = median(r.cpu_per_stream_min for r in results if r.streams == nmax and r.variant == "edge")
        ff_cpu = median(r.cpu_per_stream_min for r in results if r.streams == nmax and r.variant == "ffmpeg")
        if args.profile == "always" or (args.profile == "auto" and not edge_cpu <= ff_cpu):
            log(f"profiling edge and ffmpeg at N={nmax}")
            profile_md = profile(ctx, nmax)
    finally:
        peer.stop()
        rtsp_log.close()
    (work / "results.json").write_text(
        json.dumps(
            {
                "machine": mach,
                "command": command_line(),
                "args": {k: v for k, v in vars(args).items() if k != "workdir"},
                "results": [asdict(r) | {"ok": r.ok} for r in results],
            },
            indent=1,
            default=str,
        )
    )
    md = report(results, args, mach)
    if profile_md:
        md += (
            f"\n\nProfiles at N={max(args.streams)} (separate runs after the measured rounds):\n\n"
            + profile_md
        )
    print(md)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
