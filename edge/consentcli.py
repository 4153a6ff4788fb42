"""`edge consent set|withdraw|show`: the owner's choices about sharing each camera, from the command line
(the owner's page comes later and calls the same :mod:`edge.cameras` functions).

Every change is a ``consent.changed`` audit entry (edge/cameras.py logs it) and the running daemon is told at
once over its control socket.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge.config import Config
from edge.errors import Error

if TYPE_CHECKING:
    from edge.store import Camera

Loader = Callable[[argparse.Namespace], Config]
Notify = Callable[[Any], None]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def add_parsers(sub: Any, load: Loader, notify: Notify, duration: Callable[[str], int]) -> None:
    consent = sub.add_parser("consent", help="what police may do with each camera").add_subparsers(
        dest="consent_command", required=True, metavar="ACTION"
    )
    s = consent.add_parser("set", help="set a camera's consent level and limits")
    s.add_argument("camera", type=int)
    s.add_argument(
        "--level",
        choices=("private", "registered", "integrated"),
        help="private: nobody outside; registered: police know it exists, no video; integrated: police may"
        " view it in an emergency near it, within your limits",
    )
    s.add_argument("--radius", type=int, metavar="M", help="only for emergencies within M metres (300)")
    s.add_argument("--max-dur", metavar="DUR", help="longest session, e.g. 15m (at most 60m)")
    s.add_argument("--lookback", metavar="DUR", help="oldest footage police may ask for, e.g. 7d")
    s.add_argument("--quota", type=int, metavar="N", help="requests per hour for this camera (4)")
    live = s.add_mutually_exclusive_group()
    live.add_argument("--recorded-only", action="store_true", help="no live view, recordings only")
    live.add_argument("--allow-live", action="store_true", help="allow live view again")
    s.set_defaults(fn=lambda a: cmd_set(a, load, notify, duration))

    w = consent.add_parser("withdraw", help="stop sharing a camera (or every camera) now: it becomes private")
    target = w.add_mutually_exclusive_group(required=True)
    target.add_argument("camera", type=int, nargs="?")
    target.add_argument("--all", action="store_true")
    w.set_defaults(fn=lambda a: cmd_withdraw(a, load, notify))

    k = sub.add_parser("killswitch", help="stop all sharing now: every request refused until --release")
    k.add_argument(
        "--release", action="store_true", help="allow requests again (each camera's consent applies)"
    )
    k.set_defaults(fn=lambda a: cmd_killswitch(a, load, notify))

    owner = sub.add_parser("owner", help="the owner's contact, sent with the police registry").add_subparsers(
        dest="owner_command", required=True, metavar="ACTION"
    )
    os_ = owner.add_parser("set", help='set the contact ("" clears a field)')
    os_.add_argument("--email")
    os_.add_argument("--phone")
    os_.set_defaults(fn=lambda a: cmd_owner_set(a, load))
    owner.add_parser("show", help="the contact and the kill switch").set_defaults(
        fn=lambda a: cmd_owner_show(a, load)
    )

    sh = consent.add_parser("show", help="every camera's consent level and limits")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(fn=lambda a: cmd_show(a, load))


def cmd_set(args: argparse.Namespace, load: Loader, notify: Notify, duration: Callable[[str], int]) -> int:
    from edge import cameras
    from edge.store import Store

    changes: dict[str, object] = {}
    if args.level is not None:
        changes["consent"] = args.level
    if args.radius is not None:
        changes["radius_m"] = args.radius
    if args.max_dur is not None:
        changes["max_session_s"] = duration(args.max_dur)
    if args.lookback is not None:
        changes["max_lookback_s"] = duration(args.lookback)
    if args.quota is not None:
        changes["hourly_quota"] = args.quota
    if args.recorded_only:
        changes["allow_live"] = False
    if args.allow_live:
        changes["allow_live"] = True
    if not changes:
        raise Error(
            "nothing to change: give --level, --radius, --max-dur, --lookback, --quota or --recorded-only"
        )
    config = load(args)
    store = Store.open(config.storage.data_dir)
    try:
        before, after = cameras.change(store, args.camera, changes, now_utc_ns=time.time_ns())
    finally:
        store.close()
    for line in cameras.describe_change(before, after):
        _out(line)
    _out(f"camera {after.id} ({after.name}): {_describe(after)}")
    notify(config.storage.data_dir)
    return 0


def cmd_withdraw(args: argparse.Namespace, load: Loader, notify: Notify) -> int:
    from edge import cameras
    from edge.store import Store

    config = load(args)
    store = Store.open(config.storage.data_dir)
    try:
        targets = [c.id for c in store.cameras() if c.consent != "private"] if args.all else [args.camera]
        now = time.time_ns()
        for cam_id in targets:
            before, after = cameras.change(store, cam_id, {"consent": "private"}, now_utc_ns=now)
            _out(f"camera {after.id} ({after.name}): {before.consent} -> private")
    finally:
        store.close()
    if not targets:
        _out("no camera was shared")
    notify(config.storage.data_dir)
    return 0


def cmd_killswitch(args: argparse.Namespace, load: Loader, notify: Notify) -> int:
    from edge import owner
    from edge.audit import cli_actor
    from edge.store import Store

    config = load(args)
    store = Store.open(config.storage.data_dir)
    try:
        changed = owner.set_killswitch(store, not args.release, actor=cli_actor(), now_utc_ns=time.time_ns())
    finally:
        store.close()
    if args.release:
        _out("kill switch released: requests are decided by each camera's consent again" if changed else
             "the kill switch was not engaged")  # fmt: skip
    else:
        _out("kill switch engaged: every police request is refused until `edge killswitch --release`"
             if changed else "the kill switch was already engaged")  # fmt: skip
    notify(config.storage.data_dir)
    return 0


def cmd_owner_set(args: argparse.Namespace, load: Loader) -> int:
    from edge import owner
    from edge.audit import cli_actor
    from edge.store import Store

    if args.email is None and args.phone is None:
        raise Error("nothing to change: give --email and/or --phone")
    store = Store.open(load(args).storage.data_dir)
    try:
        owner.set_contact(
            store, email=args.email, phone=args.phone, actor=cli_actor(), now_utc_ns=time.time_ns()
        )
        now = owner.contact(store)
    finally:
        store.close()
    _out(f"owner contact: {now['email'] or '-'} {now['phone'] or '-'}")
    return 0


def cmd_owner_show(args: argparse.Namespace, load: Loader) -> int:
    from edge import owner
    from edge.store import Store

    store = Store.open(load(args).storage.data_dir)
    try:
        info = owner.contact(store) | {"killswitch_utc_ns": owner.killswitch_engaged(store)}
    finally:
        store.close()
    _out(json.dumps(info, indent=2))
    return 0


def cmd_show(args: argparse.Namespace, load: Loader) -> int:
    from edge.store import Store

    store = Store.open(load(args).storage.data_dir)
    try:
        cams = store.cameras()
    finally:
        store.close()
    if args.json:
        rows = [
            {
                "id": c.id, "name": c.name, "consent": c.consent, "lat": c.lat, "lon": c.lon,
                "radius_m": c.radius_m, "allow_live": c.allow_live, "max_session_s": c.max_session_s,
                "max_lookback_s": c.max_lookback_s, "hourly_quota": c.hourly_quota,
            }
            for c in cams
        ]  # fmt: skip
        _out(json.dumps(rows, indent=2))
        return 0
    for c in cams:
        _out(f"{c.id:>3}  {c.name:<24} {_describe(c)}")
    return 0


def _describe(cam: Camera) -> str:
    if cam.consent != "integrated":
        return str(cam.consent)
    where = (
        f"within {cam.radius_m} m of ({cam.lat:.5f}, {cam.lon:.5f})"
        if cam.lat is not None
        else "no position!"
    )
    live = "live or recorded" if cam.allow_live else "recordings only"
    return (
        f"integrated: {live}, {where}, sessions up to {cam.max_session_s // 60} min,"
        f" footage up to {cam.max_lookback_s // 3600} h old, {cam.hourly_quota} requests/hour"
    )
