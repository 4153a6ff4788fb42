"""`edge identity` and `edge audit verify|export|show|checkpoint`: the owner's view of the audit log.

Separate from edge/cli.py (which registers these commands) because it is one job: read, check and hand out
the log. Output is for people; `verify` ends in exactly one `OK: …` or `FAIL: …` line and exit code 0/1.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.clock import NS_PER_S
from edge.config import Config
from edge.errors import Error

Loader = Callable[[argparse.Namespace], Config]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _fmt(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS_PER_S, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def add_parsers(sub: Any, load: Loader, parse_time: Callable[[str, int], int]) -> None:
    ident = sub.add_parser("identity", help="this box's device key: id, fingerprint, verifier key")
    ident.add_argument("--json", action="store_true")
    ident.set_defaults(fn=lambda a: cmd_identity(a, load))

    audit = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    v = audit.add_parser("verify", help="recompute the log and check every checkpoint (exit 0 OK, 1 FAIL)")
    v.add_argument("--trusted-checkpoint", type=Path, help="a checkpoint kept off the box")
    v.add_argument("--bundle", type=Path, help="verify an exported bundle instead of this box's log")
    v.set_defaults(fn=lambda a: cmd_verify(a, load))

    e = audit.add_parser("export", help="write entries, checkpoints, proofs and the key into a zip")
    e.add_argument("-o", "--output", type=Path, required=True)
    e.add_argument("--from", dest="from_", help="first entry time (ISO 8601, -7d, …)")
    e.add_argument("--to", help="last entry time")
    e.set_defaults(fn=lambda a: cmd_export(a, load, parse_time))

    s = audit.add_parser("show", help="the entries as a table")
    s.add_argument("--since", help="ISO 8601, -1d, …")
    s.add_argument("--type", action="append", default=[], help="e.g. camera.added, or a prefix: request")
    s.add_argument("--limit", type=int, help="only the newest N")
    s.add_argument("--json", action="store_true", help="the entries' canonical JSON, one per line")
    s.set_defaults(fn=lambda a: cmd_show(a, load, parse_time))

    c = audit.add_parser("checkpoint", help="sign the log now and print the checkpoint (keep it off the box)")
    c.set_defaults(fn=lambda a: cmd_checkpoint(a, load))


def _identity_for_signing(data_dir: Path) -> Any:
    from edge.identity import load_or_create

    return load_or_create(data_dir)


def _public(data_dir: Path) -> Any:
    from edge.identity import PRIVATE_KEY_NAME, load_public

    if not (data_dir / PRIVATE_KEY_NAME).exists():
        _identity_for_signing(data_dir)  # made on first use, as the daemon would on its first start
    return load_public(data_dir)


def cmd_identity(args: argparse.Namespace, load: Loader) -> int:
    from edge.audit import verifier_key

    data_dir = load(args).storage.data_dir
    public = _public(data_dir)
    info = {
        "device_id": public.device_id,
        "fingerprint": public.fingerprint,
        "short_fingerprint": public.short_fingerprint,
        "public_key": base64.b64encode(public.public_key).decode(),
        "audit_origin": public.log_origin,
        "verifier_key": verifier_key(public),
    }
    if args.json:
        _out(json.dumps(info, indent=2))
        return 0
    _out(f"device id      {info['device_id']}")
    _out(f"fingerprint    {info['fingerprint']}")
    _out(f"               {info['short_fingerprint']}")
    _out(f"public key     {info['public_key']} (Ed25519)")
    _out(f"verifier key   {info['verifier_key']}")
    return 0


def cmd_verify(args: argparse.Namespace, load: Loader) -> int:
    from edge.auditverify import verify_bundle, verify_log

    if args.bundle is not None:
        result = verify_bundle(args.bundle, trusted=args.trusted_checkpoint)
    else:
        from edge.audit import AuditLog
        from edge.store import Store

        data_dir = load(args).storage.data_dir
        public = _public(data_dir)
        store = Store.open(data_dir)
        try:
            result = verify_log(AuditLog(store), public, trusted=args.trusted_checkpoint)
        finally:
            store.close()
    for note in result.notes:
        _out(f"note: {note}")
    _out(result.line())
    return 0 if result.ok else 1


def _fresh_checkpoint(data_dir: Path) -> bytes:
    """A checkpoint of the log as it is now: from the running daemon, or signed here (same user)."""
    from edge import control

    try:
        reply = control.call(data_dir, "checkpoint", timeout_s=10)
        return base64.b64decode(reply["note_b64"])
    except control.DaemonUnavailable:
        from edge.audit import AuditLog
        from edge.store import Store

        identity = _identity_for_signing(data_dir)
        store = Store.open(data_dir)
        try:
            return AuditLog(store).checkpoint(identity, now_utc_ns=time.time_ns()).note
        finally:
            store.close()


def cmd_checkpoint(args: argparse.Namespace, load: Loader) -> int:
    note = _fresh_checkpoint(load(args).storage.data_dir)
    sys.stdout.write(note.decode())
    return 0


def cmd_export(args: argparse.Namespace, load: Loader, parse_time: Callable[[str, int], int]) -> int:
    from edge.audit import AuditLog, Event, cli_actor, decode
    from edge.auditverify import export_bundle
    from edge.identity import load_public
    from edge.store import Store

    data_dir = load(args).storage.data_dir
    now = time.time_ns()
    _fresh_checkpoint(data_dir)  # so the newest entries are covered by a signature too
    public = load_public(data_dir)
    store = Store.open(data_dir)
    try:
        log = AuditLog(store)
        size = log.size()
        start, end = 0, size
        if args.from_ or args.to:
            t1 = parse_time(args.from_, now) if args.from_ else 0
            t2 = parse_time(args.to, now) if args.to else now
            seqs = [s for s, raw, _l in log.raw_entries() if t1 <= decode(raw).utc_ns <= t2]
            if not seqs:
                raise Error("no audit entries in that time range")
            start, end = seqs[0], seqs[-1] + 1
        n_bytes = export_bundle(log, public, args.output, start=start, end=end, created_utc_ns=now)
        log.log(
            Event(
                "audit.exported", cli_actor(), details={"file": args.output.name, "start": start, "end": end}
            ),
            now_utc_ns=now,
        )
    finally:
        store.close()
    _out(f"wrote {args.output} ({n_bytes} bytes): entries {start}..{end - 1} of {size}")
    _out(f"check it anywhere: edge audit verify --bundle {args.output}")
    return 0


def cmd_show(args: argparse.Namespace, load: Loader, parse_time: Callable[[str, int], int]) -> int:
    from edge.audit import AuditLog
    from edge.store import Store

    data_dir = load(args).storage.data_dir
    since = parse_time(args.since, time.time_ns()) if args.since else None
    store = Store.open(data_dir)
    try:
        entries = AuditLog(store).entries(since_utc_ns=since, types=args.type, limit=args.limit)
    finally:
        store.close()
    if args.json:
        for e in entries:
            _out(e.raw.decode())
        return 0
    rows = [
        [
            str(e.seq),
            _fmt(e.utc_ns),
            e.type,
            e.actor,
            ",".join(str(c) for c in e.cameras) or "-",
            e.request or "-",
            json.dumps(e.details, separators=(",", ":"), ensure_ascii=False)[:80],
        ]
        for e in entries
    ]
    header = ["seq", "time (UTC)", "event", "actor", "cameras", "request", "details"]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
    for r in [header, *rows]:
        _out("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip())
    return 0
