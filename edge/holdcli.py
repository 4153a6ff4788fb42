"""`edge hold list|release`: the owner's view of legal holds (edge/holds.py) on footage of police sessions
and shares, and the only way to release one. Each release is a ``hold.released`` audit entry; the next
retention pass may then delete that footage like any other.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edge.clock import NS_PER_S
from edge.config import Config
from edge.errors import Error

if TYPE_CHECKING:
    from edge.holds import Hold

Loader = Callable[[argparse.Namespace], Config]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _utc(ns: int) -> str:
    """ISO 8601 UTC to the millisecond (the JSON keeps the exact ns)."""
    return (
        datetime.fromtimestamp(ns // NS_PER_S, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        + f".{ns % NS_PER_S // 10**6:03d}Z"
    )


def add_parsers(sub: Any, load: Loader) -> None:
    hold = sub.add_parser("hold", help="footage kept for police sessions and shares").add_subparsers(
        dest="hold_command", required=True, metavar="ACTION"
    )
    ls = hold.add_parser("list", help="holds in force (retention keeps their footage)")
    ls.add_argument("--all", action="store_true", help="include released holds")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=lambda a: cmd_list(a, load))

    rl = hold.add_parser("release", help="release holds: retention may delete their footage again")
    rl.add_argument("ids", type=int, nargs="*", metavar="ID")
    rl.add_argument("--all", action="store_true", help="release every hold in force")
    rl.set_defaults(fn=lambda a: cmd_release(a, load))


def cmd_list(args: argparse.Namespace, load: Loader) -> int:
    from edge import holds
    from edge.store import Store

    store = Store.open(load(args).storage.data_dir)
    try:
        found = holds.every(store) if args.all else holds.active(store)
    finally:
        store.close()
    if args.json:
        _out(json.dumps([_as_json(h) for h in found], indent=2))
        return 0
    if not found:
        _out("no holds" if args.all else "no holds in force")
        return 0
    _out(f"{'ID':>4}  {'CAMERA':>6}  {'FROM (UTC)':<24}  {'TO (UTC)':<24}  {'WHY':<7}  REQUEST")
    for h in found:
        _out(
            f"{h.id:>4}  {h.camera_id:>6}  {_utc(h.from_utc_ns):<24}  {_utc(h.to_utc_ns):<24}  {h.reason:<7}"
            f"  {h.request}"
        )
        _out(f"{'':>14}placed {_utc(h.placed_utc_ns)} by {h.placed_by}")
        if h.released_utc_ns is not None:
            _out(f"{'':>14}released {_utc(h.released_utc_ns)} by {h.released_by}")
    return 0


def cmd_release(args: argparse.Namespace, load: Loader) -> int:
    from edge import holds
    from edge.audit import cli_actor
    from edge.store import Store

    if bool(args.ids) == bool(args.all):
        raise Error("give the ids of the holds to release (edge hold list shows them), or --all")
    store = Store.open(load(args).storage.data_dir)
    try:
        before = {h.id: h for h in holds.every(store)}
        released = holds.release(
            store, "all" if args.all else args.ids, actor=cli_actor(), now_utc_ns=time.time_ns()
        )
    finally:
        store.close()
    for h in released:
        _out(
            f"released hold {h.id}: camera {h.camera_id}, {_utc(h.from_utc_ns)} to {_utc(h.to_utc_ns)}"
            f" ({h.reason} {h.request})"
        )
    done = {h.id for h in released}
    for i in dict.fromkeys(args.ids):
        earlier = before.get(i)
        if i not in done and earlier is not None and earlier.released_utc_ns is not None:
            _out(f"hold {i} was already released ({_utc(earlier.released_utc_ns)} by {earlier.released_by})")
    if args.all and not released:
        _out("no holds in force")
    if released:
        _out("retention may delete this footage on its next pass")
    return 0


def _as_json(h: Hold) -> dict[str, object]:
    return {
        "id": h.id,
        "camera": h.camera_id,
        "from": _utc(h.from_utc_ns),
        "to": _utc(h.to_utc_ns),
        "from_utc_ns": h.from_utc_ns,
        "to_utc_ns": h.to_utc_ns,
        "reason": h.reason,
        "request": h.request,
        "placed_by": h.placed_by,
        "placed_utc_ns": h.placed_utc_ns,
        "released_by": h.released_by,
        "released_utc_ns": h.released_utc_ns,
        "active": h.active,
    }
