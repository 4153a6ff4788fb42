"""`edge …`: the installer's and owner's command line. Errors are one clear line on stderr, exit code 1
(2 for usage and configuration errors); never a traceback for a known failure."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edge import control
from edge.clock import NS_PER_S, SystemClock
from edge.config import Config, StorageBudget, load_config
from edge.errors import ConfigError, Error
from edge.logsetup import configure_logging
from edge.redact import Redactor, redact_url

DEFAULT_CONFIG = Path("/etc/edge/edge.toml")
DEMO_CAMERAS = (
    ("Front door (synthetic)", "synthetic:?w=1280&h=720&fps=15&gop=2&color=2060c0"),
    ("Yard (synthetic)", "synthetic:?w=640&h=360&fps=25&gop=1&color=30a040"),
    ("Till (synthetic)", "synthetic:?w=320&h=240&fps=10&gop=4&color=c04030"),
)


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None:
        env = os.environ.get("EDGE_CONFIG")
        path = Path(env) if env else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    config = load_config(path)
    if args.data_dir is not None:
        config = replace(config, storage=replace(config.storage, data_dir=args.data_dir.resolve()))
    return config


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# --- time and sizes ------------------------------------------------------------------------------

_REL = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")


def parse_time(text: str, now_utc_ns: int) -> int:
    """`now`, `-90s`/`-5m`/`-2h`/`-1d`, a UTC ns integer, or ISO 8601 (naive means UTC)."""
    text = text.strip()
    if text == "now":
        return now_utc_ns
    m = _REL.match(text)
    if m:
        return now_utc_ns - int(
            float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] * NS_PER_S
        )
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Error(f"cannot read time {text!r}: use ISO 8601 (2026-11-21T10:00:00Z), -5m or now") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * NS_PER_S + dt.microsecond * 1000


def parse_duration_s(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m:
        raise Error(f"cannot read duration {text!r}: use e.g. 7d, 12h, 3600")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def fmt_time(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / NS_PER_S, UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in [header, *rows]
    ]
    return "\n".join(lines)


# --- commands ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    return _run_daemon(config)


def _run_daemon(
    config: Config, *, on_tick: Callable[[Any], Any] | None = None, duration_s: float | None = None
) -> int:
    from edge.daemon import Daemon  # the composition root is only imported to run it

    redactor = Redactor()
    configure_logging(config.log.level, redactor)
    daemon = Daemon(config, clock=SystemClock(), redactor=redactor)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if duration_s is not None:
            loop.call_later(duration_s, stop.set)
        task = asyncio.create_task(daemon.run(stop))
        if on_tick is not None:
            ticker = asyncio.create_task(on_tick(daemon))
            await task
            ticker.cancel()
        else:
            await task

    asyncio.run(main())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="edge-demo-"))).resolve()
    base = load_config(None)
    config = replace(
        base,
        storage=replace(
            base.storage, data_dir=data_dir, budget=StorageBudget(bytes=2 * 10**9), min_free_bytes=64 << 20
        ),
        log=replace(base.log, level="warning"),
    )
    from edge.store import Store

    store = Store.open(data_dir)
    if not store.cameras():
        for name, url in DEMO_CAMERAS:
            store.add_camera(
                name=name,
                url=url,
                username=None,
                password_blob=None,
                max_age_s=None,
                now_utc_ns=time.time_ns(),
            )
    store.close()
    _out(f"edge demo: recording 3 synthetic cameras into {data_dir}")
    _out("Ctrl-C stops it cleanly.\n")

    async def ticker(daemon: Any) -> None:
        await daemon.ready.wait()
        while True:
            await asyncio.sleep(args.every_s)
            _print_status(await daemon.camera_table())

    _run_daemon(config, on_tick=ticker, duration_s=args.duration_s)
    _out(f"\nstopped. Recordings are in {data_dir / 'recordings'}")
    _out(f"export a clip:  edge --data-dir {data_dir} export --camera 1 --from -30s --to now -o clip.mp4")
    return 0


def _print_status(rows: list[dict[str, Any]]) -> None:
    out = []
    for r in rows:
        stream = r.get("stream") or {}
        desc = (
            f"{stream.get('video_codec', '')} {stream.get('width', '')}x{stream.get('height', '')}"
            if stream
            else ""
        )
        state = r["state"] if not r.get("error_kind") else f"{r['state']} ({r['error_kind']})"
        out.append(
            [
                str(r["id"]),
                r["name"][:24],
                state,
                desc,
                str(r["segments"]),
                fmt_bytes(r["bytes"]),
                fmt_time(r["oldest_utc_ns"]),
                fmt_time(r["newest_utc_ns"]),
            ]
        )
    _out(f"{datetime.now(UTC):%H:%M:%S} UTC")
    _out(table(out, ["id", "camera", "state", "stream", "segments", "on disk", "oldest", "newest"]))
    _out()


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    reply = control.call(config.storage.data_dir, "status")
    if args.json:
        _out(json.dumps(reply["cameras"], indent=2))
    else:
        _print_status(reply["cameras"])
    return 0


def _notify_daemon(data_dir: Path) -> None:
    try:
        control.call(data_dir, "reload")
    except control.DaemonUnavailable:
        sys.stderr.write("note: the daemon is not running; it will use this when it starts\n")


def cmd_cameras_add(args: argparse.Namespace) -> int:
    from edge.credentials import Sealer
    from edge.store import Store

    config = _load(args)
    url = args.url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("rtsp", "rtsps", "synthetic"):
        raise Error(f"unsupported camera URL {redact_url(url)!r}: use rtsp://host[:port]/path")
    username = args.user
    password: str | None = None
    if parts.username or parts.password:
        # Credentials typed into the URL are moved out of it: the URL is stored and shown without them.
        username = username or (unquote(parts.username) if parts.username else None)
        password = unquote(parts.password) if parts.password is not None else None
        url = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if password is not None and not username:
        raise Error("a password needs a user name (--user)")
    data_dir = config.storage.data_dir
    blob = Sealer.load(data_dir).seal(password, url.encode()) if password is not None else None
    max_age = parse_duration_s(args.max_age) if args.max_age else None
    store = Store.open(data_dir)
    try:
        cam = store.add_camera(
            name=args.name or parts.hostname or "camera",
            url=url,
            username=username,
            password_blob=blob,
            max_age_s=max_age,
            now_utc_ns=time.time_ns(),
        )
    finally:
        store.close()
    _out(
        f"added camera {cam.id}: {cam.name} {redact_url(cam.url)}"
        + (f" (user {username})" if username else "")
    )
    _notify_daemon(data_dir)
    return 0


def cmd_cameras_list(args: argparse.Namespace) -> int:
    from edge.store import Store

    config = _load(args)
    store = Store.open(config.storage.data_dir)
    try:
        cams = store.cameras(include_removed=args.all)
    finally:
        store.close()
    rows = [
        {
            "id": c.id,
            "name": c.name,
            "url": redact_url(c.url),
            "user": c.username,
            "password": "set" if c.password_blob else None,
            "max_age_s": c.max_age_s,
            "removed": c.removed_utc_ns is not None,
        }
        for c in cams
    ]
    if args.json:
        _out(json.dumps(rows, indent=2))
    else:
        _out(
            table(
                [
                    [
                        str(r["id"]),
                        str(r["name"]),
                        str(r["url"]),
                        str(r["user"] or "-"),
                        "yes" if r["password"] else "-",
                        "removed" if r["removed"] else "active",
                    ]
                    for r in rows
                ],
                ["id", "name", "url", "user", "password", "state"],
            )
        )
    return 0


def cmd_cameras_remove(args: argparse.Namespace) -> int:
    from edge.store import Store

    config = _load(args)
    store = Store.open(config.storage.data_dir)
    try:
        cam = store.remove_camera(args.id, now_utc_ns=time.time_ns())
    finally:
        store.close()
    _out(f"removed camera {cam.id} ({cam.name}); its recordings stay until retention deletes them")
    _notify_daemon(config.storage.data_dir)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edge.recorder.export import export_clip
    from edge.store import Store

    config = _load(args)
    now = time.time_ns()
    t1, t2 = parse_time(args.from_, now), parse_time(args.to, now)
    store = Store.open(config.storage.data_dir)
    try:
        manifest = export_clip(
            store,
            config.storage.data_dir,
            camera_id=args.camera,
            from_utc_ns=t1,
            to_utc_ns=t2,
            out_path=args.output,
            now_utc_ns=now,
        )
    finally:
        store.close()
    _out(
        f"wrote {args.output} ({fmt_bytes(manifest.clip_size)}, {manifest.duration_s:.1f} s,"
        f" sha256 {manifest.clip_sha256})"
    )
    _out(
        f"manifest {args.output}.manifest.json"
        + (f"; {len(manifest.gaps)} gap(s) inside the range" if manifest.gaps else "")
    )
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        reply = control.call(config.storage.data_dir, "snapshot", camera=args.camera)
        jpeg = base64.b64decode(reply["jpeg_b64"])
        source = "live"
    except control.DaemonUnavailable:
        from edge.recorder.snapshot import jpeg_from_segment
        from edge.store import Store

        store = Store.open(config.storage.data_dir)
        try:
            segs = store.segments(camera_id=args.camera)
        finally:
            store.close()
        if not segs:
            raise Error(f"camera {args.camera} has no recordings") from None
        jpeg = jpeg_from_segment(config.storage.data_dir / segs[-1].path, limit_bytes=segs[-1].bytes)
        source = f"latest recording, {fmt_time(segs[-1].end_utc_ns)}"
    args.output.write_bytes(jpeg)
    _out(f"wrote {args.output} ({len(jpeg)} bytes, {source})")
    return 0


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge", description="The community camera box: records locally, shares only on consent."
    )
    p.add_argument("--config", type=Path, help=f"settings file (default: $EDGE_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--data-dir", type=Path, help="override storage.data_dir")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT").set_defaults(fn=cmd_run)

    d = sub.add_parser("demo", help="record three synthetic cameras into a fresh directory")
    d.add_argument("--duration-s", type=float, help="stop after this long (default: until Ctrl-C)")
    d.add_argument("--every-s", type=float, default=5.0, help="status table interval")
    d.set_defaults(fn=cmd_demo)

    s = sub.add_parser("status", help="cameras as the running daemon sees them")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)

    cams = sub.add_parser("cameras", help="add, list and remove cameras").add_subparsers(
        dest="cameras_command", required=True, metavar="ACTION"
    )
    a = cams.add_parser("add", help="add a camera by RTSP URL")
    a.add_argument("url")
    a.add_argument("--name")
    a.add_argument("--user")
    a.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    a.add_argument(
        "--max-age", help="delete this camera's footage after e.g. 7d (default: storage budget only)"
    )
    a.set_defaults(fn=cmd_cameras_add)
    ls = cams.add_parser("list", help="list cameras")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="include removed cameras")
    ls.set_defaults(fn=cmd_cameras_list)
    rm = cams.add_parser("remove", help="stop recording a camera (its footage stays until retention)")
    rm.add_argument("id", type=int)
    rm.set_defaults(fn=cmd_cameras_remove)

    e = sub.add_parser("export", help="export a time range of one camera into one MP4 plus a manifest")
    e.add_argument("--camera", type=int, required=True)
    e.add_argument("--from", dest="from_", required=True, help="ISO 8601 UTC, -5m, or a UTC ns number")
    e.add_argument("--to", required=True)
    e.add_argument("-o", "--output", type=Path, required=True)
    e.set_defaults(fn=cmd_export)

    sn = sub.add_parser("snapshot", help="latest picture of a camera as JPEG")
    sn.add_argument("--camera", type=int, required=True)
    sn.add_argument("-o", "--output", type=Path, required=True)
    sn.set_defaults(fn=cmd_snapshot)
    return p


TIME_OPTIONS = ("--from", "--to")


def _join_time_values(argv: Sequence[str]) -> list[str]:
    """`--from -5m` → `--from=-5m`: argparse would take a relative time for an option."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in TIME_OPTIONS:
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_join_time_values(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.fn(args))
    except ConfigError as e:
        sys.stderr.write(f"edge: {e.message}\n")
        return 2
    except Error as e:
        sys.stderr.write(f"edge: {e.message}\n")
        return 1
    except KeyboardInterrupt:
        return 130
