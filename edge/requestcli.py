"""`edge requests [--notices]` and `edge share`: what police asked, and the owner's answer to a notice.

`edge requests` reads the audit log (no daemon needed). `edge share` asks the running daemon, which holds the
uplink, to send a clip in answer to a request refused ``not_integrated`` (a notice): the owner chooses the
camera and range; the clip goes end-to-end encrypted to the request's viewer key like any session.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edge.config import Config
from edge.errors import Error

Loader = Callable[[argparse.Namespace], Config]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def add_parsers(sub: Any, load: Loader, parse_time: Callable[[str, int], int]) -> None:
    r = sub.add_parser("requests", help="what police asked of this box, and what it answered")
    r.add_argument("--notices", action="store_true", help="only requests about registered cameras (notices)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=lambda a: cmd_requests(a, load))

    s = sub.add_parser("share", help="answer a notice: send police a clip of a registered camera")
    s.add_argument(
        "--request",
        required=True,
        metavar="JTI",
        help="the request id, as --request=JTI (edge requests --notices)",
    )
    s.add_argument("--camera", type=int, required=True)
    s.add_argument("--from", dest="from_", required=True, metavar="T", help="start (ISO 8601 UTC, -10m …)")
    s.add_argument("--to", required=True, metavar="T", help="end")
    s.set_defaults(fn=lambda a: cmd_share(a, load, parse_time))


def _when(utc_ns: int) -> str:
    return datetime.fromtimestamp(utc_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_requests(args: argparse.Namespace, load: Loader) -> int:
    from edge.audit import AuditLog
    from edge.requestlog import requests
    from edge.store import Store

    store = Store.open(load(args).storage.data_dir)
    try:
        records = requests(AuditLog(store))
    finally:
        store.close()
    if args.notices:
        records = [r for r in records if r.notice]
    if args.json:
        _out(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    if not records:
        _out("no notices" if args.notices else "no requests")
        return 0
    for r in records:
        cams = ",".join(str(c) for c in r.cameras)
        outcome = f"{r.outcome or '?'}{' ' + r.code if r.code else ''}"
        _out(f"{_when(r.utc_ns)} UTC  camera {cams:<5} {r.mode or '?':<8} {outcome:<24} request {r.jti}")
        _out(f"    officer {r.officer or '?'}, case {r.case or '?'}, {r.reason or '?'} ({r.incident or '?'})")
        for s in r.sessions:
            _out(f"    sent camera {s.get('camera')}: {s.get('bytes', 0)} bytes, {s.get('reason')}")
        if r.notice:
            # --request=JTI, not a space: a jti may start with "-", which argparse takes for an option.
            _out(f"    a notice: answer it with  edge share --request={r.jti} --camera {r.camera or cams}"
                 " --from … --to …")  # fmt: skip
    return 0


def cmd_share(args: argparse.Namespace, load: Loader, parse_time: Callable[[str, int], int]) -> int:
    from edge import control

    config = load(args)
    now = time.time_ns()
    from_ns, to_ns = parse_time(args.from_, now), parse_time(args.to, now)
    if to_ns <= from_ns:
        raise Error("--to must be after --from")
    reply = control.call(
        config.storage.data_dir, "share", timeout_s=30.0,
        request=args.request, camera=args.camera, from_ns=from_ns, to_ns=to_ns,
    )  # fmt: skip
    _out(f"sharing camera {args.camera} {_when(from_ns)} .. {_when(to_ns)} UTC with {reply['agency']}")
    _out(f"session {reply['session']}: sent end-to-end encrypted; `edge requests` shows the result")
    return 0
