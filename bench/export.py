"""Export benchmark: `edge export` of 1 h vs. `ffmpeg -f concat -c copy -movflags +faststart`, side by side.

    .venv/bin/python bench/export.py [--minutes 60] [--rounds 5] [--clip h264_720p] [--cache cold,warm]
    .venv/bin/python bench/export.py --quick          # 10 min of footage, 2 rounds: a smoke run

One hour of footage is made by the real segmenter fed from a file (``tests/recordings.record_file``, 60 s
segments, faster than real time). Then, for every round and cache mode, in alternating order, each
command runs as its own process with a fresh output path:

* ``edge --config FILE export --camera 1 --from <first segment start> --to <last segment end> -o out.mp4``
  (stream copy, ``+faststart``, manifest with SHA-256 of every source segment and of the clip, fsync);
* ``ffmpeg -nostdin -f concat -safe 0 -i list.txt -c copy -movflags +faststart out.mp4`` over the same
  segment files.

Before every command: ``sync``, then (cache mode ``cold``) ``echo 3 > /proc/sys/vm/drop_caches``, or (mode
``warm``) one untimed read of every segment. Measured: wall time and CPU (user + sys, from the child's
rusage). ffmpeg does not fsync its output while edge does, so "ffmpeg + fsync" (ffmpeg's time plus an
fsync of its output, timed from the bench) is reported too. Prints the markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import (
    DEFAULT_WORKDIR,
    EDGE,
    FFMPEG,
    REPO,
    command_line,
    drop_caches,
    fmt,
    fresh_dir,
    log,
    machine,
    machine_line,
    md_table,
    median,
)

NS = 1_000_000_000


@dataclass
class Timing:
    tool: str
    cache: str
    round: int
    wall_s: float
    cpu_s: float
    fsync_s: float  # ffmpeg only: fsync of its output after it exited
    out_bytes: int


def run_timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall, user+sys CPU) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def fsync_path(path: Path) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def count_video(path: Path) -> tuple[int, float]:
    """(video packets, seconds from first to last dts) of a file."""
    import av

    n, first, last = 0, None, 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb = s.time_base
        assert tb is not None
        for pkt in c.demux(s):
            if pkt.dts is None:
                continue
            n += 1
            first = pkt.dts if first is None else first
            last = pkt.dts
    return n, float((last - (first or 0)) * tb)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--minutes", type=float, default=60.0, help="footage to export (default 60)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clip", default="h264_720p")
    p.add_argument(
        "--cache", default="cold,warm", help="cold (drop_caches before each command), warm, or both"
    )
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--keep", action="store_true", help="keep the footage for the next run (--reuse)")
    p.add_argument("--reuse", action="store_true", help="reuse the footage of a --keep run if present")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 min of footage, 2 rounds")
    args = p.parse_args()
    if args.quick:
        args.minutes, args.rounds = 10.0, 2
    modes = [m for m in ("cold", "warm") if m in args.cache.split(",")]

    from edge.store import Store
    from tests.peers.media import make_media
    from tests.recordings import record_file

    mach = machine()
    work = args.workdir / "export"
    data = work / f"data-{args.clip}-{args.minutes:g}min"
    db = data / "edge.db"
    if not (args.reuse and db.exists()):
        fresh_dir(data)
        media = args.workdir / "media" / args.clip
        make_media(media, [args.clip])
        log(f"recording {args.minutes:g} min of {args.clip} with the real segmenter (faster than real time)")
        t0 = time.perf_counter()
        record_file(data, media / f"{args.clip}.mkv", args.minutes * 60, segment_s=60)
        log(f"  took {time.perf_counter() - t0:.1f} s")
    store = Store.open(data)
    try:
        cam = store.cameras()[0].id
        segs = store.segments(camera_id=cam)
    finally:
        store.close()
    paths = [data / s.path for s in segs]
    size = sum(s.bytes for s in segs)
    media_s = sum(s.media_duration_ns for s in segs) / NS
    t_from, t_to = segs[0].start_utc_ns, segs[-1].end_utc_ns
    log(f"{len(segs)} segments, {media_s:.0f} s of media, {size / 1e6:.0f} MB")
    cfg = work / "edge.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\n\n[log]\nlevel = "warning"\n')
    concat = work / "list.txt"
    concat.write_text("".join(f"file '{p}'\n" for p in paths))
    outdir = work / "out"
    fresh_dir(outdir)

    edge_cmd = [
        str(EDGE),
        "--config",
        str(cfg),
        "export",
        "--camera",
        str(cam),
        "--from",
        str(t_from),
        "--to",
        str(t_to),
        "-o",
    ]
    ff_cmd = [
        FFMPEG,
        "-nostdin",
        "-loglevel",
        "error",
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        str(concat),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
    ]
    can_drop = drop_caches()
    if "cold" in modes and not can_drop:
        log("cannot drop the page cache (not root?): cold runs skipped, warm only")
        modes = ["warm"]

    # What any `edge` command pays before it starts working (interpreter, PyAV and edge imports), warm.
    imports = [sys.executable, "-c", "import edge.cli, edge.recorder.export"]
    startup_s = median(run_timed(imports)[0] for _ in range(5))

    timings: list[Timing] = []
    checked: dict[str, tuple[int, float]] = {}
    seq = 0
    for rnd in range(args.rounds):
        for mode in modes:
            order = ["edge", "ffmpeg"] if (rnd + modes.index(mode)) % 2 == 0 else ["ffmpeg", "edge"]
            for tool in order:
                seq += 1
                out = outdir / f"{tool}-{mode}-{rnd}-{seq}.mp4"
                os.sync()
                if mode == "cold":
                    drop_caches()
                else:
                    warm(paths)
                cmd = [*edge_cmd, str(out)] if tool == "edge" else [*ff_cmd, str(out)]
                wall, cpu = run_timed(cmd)
                fs = fsync_path(out) if tool == "ffmpeg" else 0.0
                timings.append(Timing(tool, mode, rnd, wall, cpu, fs, out.stat().st_size))
                log(
                    f"round {rnd + 1} {mode} {tool}: {wall:.2f} s wall, {cpu:.2f} s CPU"
                    + (f", fsync {fs:.2f} s" if tool == "ffmpeg" else "")
                )
                if tool not in checked:
                    checked[tool] = count_video(out)
                out.unlink()
                out.with_name(out.name + ".manifest.json").unlink(missing_ok=True)

    header = [
        "cache",
        "tool",
        "wall s (median)",
        "CPU s (median)",
        "vs ffmpeg (x)",
        "vs ffmpeg + fsync (x)",
        "rounds",
    ]
    rows = []
    for mode in modes:
        ed = {t.round: t for t in timings if t.tool == "edge" and t.cache == mode}
        ff = {t.round: t for t in timings if t.tool == "ffmpeg" and t.cache == mode}
        ratio = [ed[r].wall_s / ff[r].wall_s for r in ed if r in ff]
        ratio_fs = [ed[r].wall_s / (ff[r].wall_s + ff[r].fsync_s) for r in ed if r in ff]
        rows.append(
            [
                mode,
                "edge export",
                fmt(median(t.wall_s for t in ed.values())),
                fmt(median(t.cpu_s for t in ed.values())),
                fmt(median(ratio)),
                fmt(median(ratio_fs)),
                " ".join(f"{t.wall_s:.2f}" for t in ed.values()),
            ]
        )
        rows.append(
            [
                mode,
                "ffmpeg concat",
                fmt(median(t.wall_s for t in ff.values())),
                fmt(median(t.cpu_s for t in ff.values())),
                "1",
                "-",
                " ".join(f"{t.wall_s:.2f}" for t in ff.values()),
            ]
        )
        rows.append(
            [
                mode,
                "ffmpeg concat + fsync",
                fmt(median(t.wall_s + t.fsync_s for t in ff.values())),
                "-",
                "-",
                "1",
                " ".join(f"{t.wall_s + t.fsync_s:.2f}" for t in ff.values()),
            ]
        )
    lines = [
        f"Machine: {machine_line(mach)}",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Footage: {len(segs)} segments of {args.clip}, {media_s / 60:.1f} min, {size / 1e6:.0f} MB.",
        "Outputs (video packets, seconds first to last dts): "
        + ", ".join(f"{k} {v[0]} / {v[1]:.1f} s" for k, v in checked.items()),
        "",
        md_table(header, rows),
        "",
        f"edge's start-up (Python + imports, warm, included in its times above): {startup_s:.2f} s.",
    ]
    (work / "results.json").write_text(
        json.dumps({"machine": mach, "timings": [asdict(t) for t in timings]}, indent=1)
    )
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
