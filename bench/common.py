"""Shared helpers for the benchmarks: /proc accounting, machine description, medians, markdown tables.

Stdlib only (the scripts add the repo root to ``sys.path`` so they can use ``edge`` and ``tests``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_WORKDIR = Path(os.environ.get("EDGE_BENCH_DIR", "/var/tmp/edge-bench"))
VENV_BIN = REPO / ".venv" / "bin"
EDGE = VENV_BIN / "edge"
FFMPEG = "/usr/bin/ffmpeg"


# --- /proc ------------------------------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds: all its threads, live and exited."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is the state (field 3 of stat(5)); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_s(pid: int) -> float:
    """utime + stime of a process in seconds."""
    return sum(cpu_times(pid))


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split among the processes sharing them, so PSS adds up."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def system_cpu() -> tuple[float, float]:
    """(busy, steal) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = parts[:8]
    return float(user + nice + system + irq + softirq), float(steal)


class Window:
    """CPU of a set of processes over a measured window, with PSS sampled every ``every_s`` (peak of the sum).

    The machine-wide busy and steal time over the same window are kept too, as a noise indicator.
    """

    def __init__(self, pids: Sequence[int], *, every_s: float = 1.0, others: Sequence[int] = ()) -> None:
        self.pids = list(pids)
        self.others = list(others)  # e.g. the RTSP server: measured for context, not summed
        self.every_s = every_s
        self.peak_pss_kib = 0
        self.samples: list[int] = []
        self.peak_rss_max_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="pss-sampler", daemon=True)

    def _sample_once(self) -> None:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += pss_kib(pid)
                self.peak_rss_max_kib = max(self.peak_rss_max_kib, rss_kib(pid))
        self.samples.append(total)
        self.peak_pss_kib = max(self.peak_pss_kib, total)

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample_once()

    def __enter__(self) -> Window:
        self._sys0 = system_cpu()
        self._cpu0 = [cpu_times(p) for p in self.pids]
        self._oth0 = [cpu_s(p) for p in self.others]
        self.t0_ns = time.time_ns()
        self._m0 = time.monotonic()
        self._sample_once()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu1 = [cpu_times(p) for p in self.pids]
        self.user_s = sum(u for u, _ in cpu1) - sum(u for u, _ in self._cpu0)
        self.sys_s = sum(s for _, s in cpu1) - sum(s for _, s in self._cpu0)
        self.cpu_s = self.user_s + self.sys_s
        self.other_cpu_s = sum(cpu_s(p) for p in self.others) - sum(self._oth0)
        self.t1_ns = time.time_ns()
        self.wall_s = time.monotonic() - self._m0
        sys1 = system_cpu()
        self._stop.set()
        self._thread.join()
        self._sample_once()
        ticks = self.wall_s * CLK_TCK
        self.machine_busy = (sys1[0] - self._sys0[0]) / ticks  # in cores (2.0 = both cores busy)
        self.machine_steal = (sys1[1] - self._sys0[1]) / ticks


# --- machine ----------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    ffmpeg = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [FFMPEG, "-version"], check=False, capture_output=True, text=True, timeout=10
        ).stdout
        ffmpeg = out.split("\n", 1)[0].split(" Copyright")[0].replace("ffmpeg version ", "")
    try:
        import av

        pyav = f"{av.__version__} (libav {av.library_versions.get('libavformat', ('?',))})"
    except ImportError:
        pyav = "?"
    rev = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "edge"], check=False, capture_output=True, text=True
        )
        rev = head.stdout.strip() + (" + uncommitted changes in edge/" if dirty.stdout.strip() else "")
    return {
        "code": rev,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ffmpeg": ffmpeg,
        "pyav": pyav,
    }


def machine_line(m: dict[str, str]) -> str:
    return (
        f"{m['date']}; {m['nproc']} x {m['cpu']}, {m['ram']} RAM, Linux {m['kernel']}, Python {m['python']},"
        f" ffmpeg {m['ffmpeg']}, PyAV {m['pyav']}; code {m['code']}"
    )


def drop_caches() -> bool:
    """Drop the page cache (needs root). False if not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# --- numbers ----------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def fmt(value: float, digits: int = 2) -> str:
    if value != value:
        return "-"
    return f"{value:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def command_line() -> str:
    """How this script was run, relative to the repo root (for the report)."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(REPO)
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO)
    return " ".join([str(exe), str(script), *sys.argv[1:]])


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
