"""Audit log: append N entries the way the daemon does (batches on its database thread while its event loop
keeps running) and verify them, with the floor run side by side: reading the same entries and hashing each
once (no tree, no checks), in the same process, right after.

    .venv/bin/python bench/audit.py [--entries 1000000] [--batch 100] [--rounds 3]

Prints a markdown section for docs/benchmarks.md. Target (DESIGN.md §10 / issue 4): verify 1 M entries in
≤ 3 s; appends never block the event loop (the loop's worst tick delay is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DEFAULT_WORKDIR, command_line, fmt, fresh_dir, log, machine, machine_line, md_table, median

from edge import identity
from edge.audit import AuditLog, Event
from edge.store import Store

JWS = "eyJhbGciOiJFZDI1NTE5IiwidHlwIjoiZWRnZS1hY2Nlc3Mrand0Iiwia2lkIjoiaHViLTEifQ." + "x" * 300


def _event(i: int) -> Event:
    """A request.received entry about the size of a real one (~500 bytes canonical)."""
    return Event(
        "request.received",
        "hub:edge-hub-1",
        cameras=(i % 7,),
        request=f"jti-{i:012d}",
        details={"jws": JWS, "officer": "PC 4512", "case": f"2026/{i:07d}", "reason": "violent-crime"},
    )


async def _append_all(data: Path, n: int, batch: int) -> tuple[float, float]:
    """Appends on one database thread, as the daemon does; returns (seconds, worst event-loop lag)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(pool, Store.open, data)
    audit = AuditLog(store)
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            t = loop.time()
            await asyncio.sleep(0.005)
            worst = max(worst, loop.time() - t - 0.005)

    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        events = [_event(i) for i in range(start, min(n, start + batch))]
        await loop.run_in_executor(pool, lambda ev=events: audit.append(ev, now_utc_ns=time.time_ns()))
    ident = await loop.run_in_executor(pool, identity.load_or_create, data)
    await loop.run_in_executor(pool, lambda: audit.checkpoint(ident, now_utc_ns=time.time_ns()))
    elapsed = time.perf_counter() - t0
    done.set()
    await tick
    await loop.run_in_executor(pool, store.close)
    pool.shutdown()
    return elapsed, worst


VERIFY = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from edge import identity
from edge.audit import AuditLog
from edge.auditverify import verify_log
from edge.merkle import leaf_hash
from edge.store import Store
data = Path(sys.argv[1])
store = Store.open(data)
t0 = time.perf_counter()
result = verify_log(AuditLog(store), identity.load_public(data))
t_verify = time.perf_counter() - t0
t0 = time.perf_counter()
n = 0
for (raw,) in store.iterate("SELECT entry FROM audit_entries ORDER BY seq"):
    leaf_hash(raw)
    n += 1
t_floor = time.perf_counter() - t0
store.close()
print(json.dumps({"line": result.line(), "verify_s": t_verify, "floor_s": t_floor, "n": n,
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "audit")
    args = ap.parse_args()
    data = fresh_dir(args.workdir)
    m = machine()
    log(f"appending {args.entries} entries in batches of {args.batch}")
    append_s, lag = asyncio.run(_append_all(data, args.entries, args.batch))
    append_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    db_bytes = sum(p.stat().st_size for p in data.glob("edge.db*"))
    rounds = []
    for r in range(args.rounds):
        out = subprocess.run(
            [sys.executable, "-c", VERIFY, str(data), str(Path(__file__).resolve().parent.parent)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rounds.append(json.loads(out.stdout))
        log(f"round {r + 1}: {rounds[-1]}")
    assert all(x["line"].startswith(f"OK: {args.entries} entries") for x in rounds), rounds
    v = median(x["verify_s"] for x in rounds)
    f = median(x["floor_s"] for x in rounds)
    print(f"### {args.entries:,} entries ({command_line()})\n")
    print(machine_line(m) + "\n")
    print(
        md_table(
            [
                "round",
                "verify (s)",
                "entries/s",
                "floor: read + leaf hash (s)",
                "verify / floor",
                "peak RSS (MiB)",
            ],
            [
                [
                    str(i + 1),
                    fmt(x["verify_s"]),
                    f"{x['n'] / x['verify_s']:,.0f}",
                    fmt(x["floor_s"]),
                    fmt(x["verify_s"] / x["floor_s"]),
                    fmt(x["rss_kib"] / 1024, 0),
                ]
                for i, x in enumerate(rounds)
            ],
        )
    )
    print()
    print(
        md_table(
            ["", "value"],
            [
                [
                    f"append: entries/s (batches of {args.batch}, one DB thread, fsync per batch)",
                    f"{args.entries / append_s:,.0f} ({fmt(append_s, 1)} s)",
                ],
                ["append: worst event-loop tick delay", f"{lag * 1000:.1f} ms"],
                ["append: peak RSS of the appending process", f"{append_rss / 1024:.0f} MiB"],
                [
                    "verify: median",
                    f"{fmt(v)} s ({args.entries / v:,.0f} entries/s), {fmt(v / f)} x the floor",
                ],
                ["database size", f"{db_bytes / 2**20:.0f} MiB ({db_bytes / args.entries:.0f} B/entry)"],
            ],
        )
    )
    print()
    print(f"hashlib {hashlib.sha256().name}; verify target ≤ 3 s: {'met' if v <= 3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
