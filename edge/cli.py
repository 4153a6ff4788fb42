"""`edge …`: the installer's and owner's command line. Errors are one clear line on stderr, exit code 1
(2 for usage and configuration errors); never a traceback for a known failure."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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

from edge import auditcli, consentcli, control, holdcli, paircli, requestcli
from edge.clock import NS_PER_S, SystemClock
from edge.config import Config, StorageBudget, load_config
from edge.errors import ConfigError, Error
from edge.logsetup import configure_logging
from edge.redact import Redactor, redact_url

DEFAULT_CONFIG = Path("/etc/edge/edge.toml")


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
    config: Config,
    *,
    on_tick: Callable[[Any], Any] | None = None,
    duration_s: float | None = None,
    companion: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
) -> int:
    """Run the daemon until SIGTERM/SIGINT (or ``duration_s``); ``companion``: entered before it starts and
    left after it stops, in the same loop (the demo's local hub)."""
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
        async with companion() if companion is not None else contextlib.nullcontext():
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
    root = (args.data_dir or Path(tempfile.mkdtemp(prefix="edge-demo-"))).resolve()
    data_dir, hub_dir = root, root.with_name(root.name + "-hub")
    base = load_config(None)
    config = replace(
        base,
        storage=replace(
            base.storage, data_dir=data_dir, budget=StorageBudget(bytes=2 * 10**9), min_free_bytes=64 << 20
        ),
        log=replace(base.log, level="warning"),
    )
    from edge import demo  # both parties: the box and a local police hub

    _out(f"edge demo: recording 3 synthetic cameras into {data_dir}, with a local police hub")
    _out("Ctrl-C stops it cleanly.\n")

    async def ticker(daemon: Any) -> None:
        await daemon.ready.wait()
        while True:
            await asyncio.sleep(args.every_s)
            _print_status(await daemon.camera_table())

    demo.prepare_box(data_dir)
    _run_daemon(
        config,
        on_tick=ticker,
        duration_s=args.duration_s,
        companion=lambda: demo.local_hub(data_dir, hub_dir, _out),
    )
    _out(f"\nstopped. Recordings are in {data_dir / 'recordings'}; what the hub received is in {hub_dir}")
    _out(f"export a clip:  edge --data-dir {data_dir} export --camera 1 --from -30s --to now -o clip.mp4")
    _out(f"the audit log:  edge --data-dir {data_dir} audit show")
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
        _print_uplink(reply.get("uplink") or {})
    return 0


def _print_uplink(up: dict[str, Any]) -> None:
    if not up.get("paired"):
        _out("\nuplink: not paired with a hub (edge pair)")
        return
    state = "connected to" if up.get("connected") else "not connected (retrying) to"
    _out(f"\nuplink: {state} {up.get('hub')}")
    for s in up.get("sessions", []):
        _out(f"  sending camera {s['camera']} ({s['mode']}) for request {s['request']}: "
             f"{s['frames']} frames, {fmt_bytes(s['bytes'])}")  # fmt: skip


def _notify_daemon(data_dir: Path) -> None:
    try:
        control.call(data_dir, "reload")
    except control.DaemonUnavailable:
        sys.stderr.write("note: the daemon is not running; it will use this when it starts\n")


def cmd_cameras_add(args: argparse.Namespace) -> int:
    from edge import cameras
    from edge.credentials import Sealer
    from edge.store import Store

    config = _load(args)
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
    target = cameras.parse_target(args.url, username=args.user, password=password)
    data_dir = config.storage.data_dir
    sealer = Sealer.load(data_dir)
    max_age = parse_duration_s(args.max_age) if args.max_age else None
    now = time.time_ns()
    found = None
    if target.kind == "onvif":
        from edge.discovery.scan import inquire_address

        found = asyncio.run(
            inquire_address(
                target.url,
                username=target.username,
                password=target.password,
                timeout_s=args.timeout,
                probe_stream=False,  # the recorder starts at once and reports the stream itself
            )
        )
    store = Store.open(data_dir)
    try:
        if found is not None:
            assert found.onvif is not None
            cam = cameras.add_onvif(
                store, sealer, target, found.onvif, name=args.name, max_age_s=max_age, now_utc_ns=now
            )
        else:
            twin = cameras.same_stream(store, target.url)
            if twin is not None:
                sys.stderr.write(f"note: camera {twin.id} ({twin.name}) records the same stream already\n")
            cam = cameras.add_stream(store, sealer, target, name=args.name, max_age_s=max_age, now_utc_ns=now)
    finally:
        store.close()
    _out(
        f"added camera {cam.id}: {cam.name} {redact_url(cam.url)}"
        + (f" (user {cam.username})" if cam.username else "")
    )
    if found is not None and found.onvif is not None:
        for label, prof in (("main", found.onvif.main), ("sub", found.onvif.sub)):
            if prof is not None:
                _out(f"  {label} stream: {_profile_text(prof)}")
    _notify_daemon(data_dir)
    return 0


def _profile_text(prof: Any) -> str:
    size = f"{prof.width}x{prof.height}" if prof.width and prof.height else "?"
    fps = f" {prof.fps:g} fps" if prof.fps else ""
    return f"{prof.encoding or '?'} {size}{fps}"


def cmd_cameras_set(args: argparse.Namespace) -> int:
    from edge import cameras
    from edge.store import Store

    config = _load(args)
    changes: dict[str, object] = {}
    if args.name is not None:
        changes["name"] = args.name.strip() or _usage("--name cannot be empty")
    if args.location is not None:
        changes["location"] = args.location.strip() or None
    if args.lat is not None or args.lon is not None:
        changes["lat"], changes["lon"] = args.lat, args.lon
    if args.no_position:
        changes["lat"] = changes["lon"] = None
    if args.max_age is not None:
        changes["max_age_s"] = parse_duration_s(args.max_age) if args.max_age != "none" else None
    if not changes:
        raise Error(
            "nothing to change: give --name, --location, --lat/--lon or --max-age"
            " (what police may do is `edge consent set`)"
        )
    store = Store.open(config.storage.data_dir)
    try:
        before, after = cameras.change(store, args.id, changes, now_utc_ns=time.time_ns())
    finally:
        store.close()
    for line in cameras.describe_change(before, after):
        _out(line)
    _notify_daemon(config.storage.data_dir)
    return 0


def _usage(message: str) -> Any:
    raise ConfigError(message)


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
            "sub_url": redact_url(c.sub_url) if c.sub_url else None,
            "user": c.username,
            "password": "set" if c.password_blob else None,
            "consent": c.consent,
            "location": c.location,
            "lat": c.lat,
            "lon": c.lon,
            "maker": c.maker,
            "model": c.model,
            "serial": c.serial,
            "firmware": c.firmware,
            "onvif_url": c.onvif_url,
            "max_age_s": c.max_age_s,
            "radius_m": c.radius_m,
            "allow_live": c.allow_live,
            "max_session_s": c.max_session_s,
            "max_lookback_s": c.max_lookback_s,
            "hourly_quota": c.hourly_quota,
            "removed": c.removed_utc_ns is not None,
        }
        for c in cams
    ]
    if args.json:
        _out(json.dumps(rows, indent=2))
        return 0
    out = []
    for c in cams:
        where = c.location or ""
        if c.lat is not None and c.lon is not None:
            where = f"{where} ({c.lat:.5f}, {c.lon:.5f})".strip()
        out.append(
            [
                str(c.id),
                c.name,
                " ".join(x for x in (c.maker, c.model) if x) or "-",
                redact_url(c.url),
                c.username or "-",
                "yes" if c.password_blob else "-",
                c.consent,
                where or "-",
                "removed" if c.removed_utc_ns is not None else "active",
            ]
        )
    _out(table(out, ["id", "name", "camera", "url", "user", "password", "consent", "location", "state"]))
    return 0


def cmd_cameras_remove(args: argparse.Namespace) -> int:
    from edge import cameras
    from edge.store import Store

    config = _load(args)
    store = Store.open(config.storage.data_dir)
    try:
        cam = cameras.remove(store, args.id, now_utc_ns=time.time_ns())
    finally:
        store.close()
    _out(f"removed camera {cam.id} ({cam.name}); its recordings stay until retention deletes them")
    _notify_daemon(config.storage.data_dir)
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from edge.discovery import scan
    from edge.store import Store

    config = _load(args)
    store = Store.open(config.storage.data_dir)
    try:
        if args.known:
            return _print_candidates(store, args.json)
        password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
        if password is not None and not args.user:
            raise Error("a password needs a user name (--user)")
        interfaces = _interfaces(config.discovery.interfaces)
        timeout = args.timeout if args.timeout is not None else config.discovery.timeout_s
        result = asyncio.run(
            scan.scan(
                timeout,
                username=args.user,
                password=password,
                interfaces=interfaces,
                unicast=args.address,
                use_mdns=not args.no_mdns,
            )
        )
        now = time.time_ns()
        for f in result.found:
            if f.source != "address":  # named by the installer, not seen on the LAN
                store.saw_candidate(
                    key=f.key,
                    source=f.source,
                    address=f.address,
                    now_utc_ns=now,
                    device_url=f.device_url,
                    stream_url=f.stream_url if f.source == "mdns" else None,
                    name=f.name,
                    hardware=f.hardware,
                    location=f.location,
                )
        added = {c.onvif_url: c.id for c in store.cameras() if c.onvif_url}
        added |= {c.url: c.id for c in store.cameras()}
    finally:
        store.close()
    if args.json:
        rows = []
        for f in result.found:
            row = f.to_json()
            row["camera_id"] = added.get(f.device_url or "") or added.get(f.stream_url or "")
            rows.append(row)
        _out(json.dumps({"elapsed_s": round(result.elapsed_s, 3), "found": rows}, indent=2))
        return 0
    out = []
    for f in result.found:
        rep = f.onvif
        maker = " ".join(x for x in (rep.manufacturer, rep.model) if x) if rep else ""
        profiles = ", ".join(_profile_text(p) for p in rep.profiles) if rep else ""
        if not profiles and f.stream is not None and f.stream.ok:
            profiles = f"{f.stream.video_codec} {f.stream.width}x{f.stream.height}"
        cam_id = added.get(f.device_url or "") or added.get(f.stream_url or "")
        out.append(
            [
                f.address,
                maker or f.hardware or "-",
                f.name or "-",
                profiles or "-",
                redact_url(f.stream_url) if f.stream_url else "-",
                f.state + (f" (camera {cam_id})" if cam_id else ""),
            ]
        )
    _out(table(out, ["address", "camera", "name", "profiles", "stream", "state"]))
    _out(f"\n{len(result.found)} camera(s) in {result.elapsed_s:.1f} s.")
    if any(f.state == "needs password" for f in result.found):
        _out("Some need a password: edge discover --user USER --password-stdin")
    _out("Add one:  edge cameras add <address> [--user USER --password-stdin]")
    return 0


def _interfaces(names: Sequence[str]) -> Any:
    """The configured interface names as discovery interfaces (None = every LAN interface)."""
    if not names:
        return None
    from edge.discovery.wsdiscovery import lan_interfaces

    have = {i.name: i for i in lan_interfaces()}
    missing = [n for n in names if n not in have]
    if missing:
        raise Error(
            f"discovery.interfaces: no multicast IPv4 interface {', '.join(missing)}"
            f" (have: {', '.join(sorted(have)) or 'none'})"
        )
    return [have[n] for n in names]


def _print_candidates(store: Any, as_json: bool) -> int:
    cands = store.candidates()
    if as_json:
        _out(json.dumps([c.__dict__ for c in cands], indent=2))
        return 0
    rows = [
        [
            c.address,
            c.source,
            c.name or "-",
            c.hardware or "-",
            c.device_url or (redact_url(c.stream_url) if c.stream_url else "-"),
            fmt_time(c.last_seen_utc_ns),
            "gone (Bye)" if c.gone_utc_ns else "present",
        ]
        for c in cands
    ]
    _out(table(rows, ["address", "seen by", "name", "hardware", "address to add", "last seen", "state"]))
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
        from edge.audit import AuditLog, Event, cli_actor

        AuditLog(store).log(
            Event(
                "export.created",
                cli_actor(),
                cameras=(args.camera,),
                details={
                    "file": args.output.name,
                    "from": str(t1),
                    "to": str(t2),
                    "bytes": manifest.clip_size,
                    "sha256": manifest.clip_sha256,
                },
            ),
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

    d = sub.add_parser("demo", help="three synthetic cameras and a local police hub, in a fresh directory")
    d.add_argument("--duration-s", type=float, help="stop after this long (default: until Ctrl-C)")
    d.add_argument("--every-s", type=float, default=5.0, help="status table interval")
    d.set_defaults(fn=cmd_demo)

    s = sub.add_parser("status", help="cameras as the running daemon sees them")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)

    cams = sub.add_parser("cameras", help="add, list, change and remove cameras").add_subparsers(
        dest="cameras_command", required=True, metavar="ACTION"
    )
    a = cams.add_parser("add", help="add a camera by RTSP URL or ONVIF address")
    a.add_argument("url", help="rtsp://host[:port]/path, or the camera's ONVIF address (http://host or host)")
    a.add_argument("--timeout", type=float, default=5.0, help="ONVIF answer timeout in seconds")
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
    st = cams.add_parser("set", help="change a camera's name, location or retention (sharing: edge consent)")
    st.add_argument("id", type=int)
    st.add_argument("--name")
    st.add_argument("--location", help='free text for people ("" clears it)')
    st.add_argument("--lat", type=float, help="latitude, decimal degrees (with --lon)")
    st.add_argument("--lon", type=float, help="longitude, decimal degrees (with --lat)")
    st.add_argument("--no-position", action="store_true", help="forget --lat/--lon")
    st.add_argument("--max-age", help="delete footage older than e.g. 7d; 'none' for the storage budget only")
    st.set_defaults(fn=cmd_cameras_set)
    rm = cams.add_parser("remove", help="stop recording a camera (its footage stays until retention)")
    rm.add_argument("id", type=int)
    rm.set_defaults(fn=cmd_cameras_remove)

    dc = sub.add_parser("discover", help="find cameras on the LAN (ONVIF, mDNS) and show their streams")
    dc.add_argument(
        "--timeout", type=float, help="seconds to listen for answers (default: discovery.timeout_s)"
    )
    dc.add_argument("--json", action="store_true")
    dc.add_argument("--user", help="try this ONVIF/RTSP user on every camera found")
    dc.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    dc.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="HOST",
        help="also ask this address directly (a camera on another subnet); repeatable",
    )
    dc.add_argument("--no-mdns", action="store_true", help="ONVIF WS-Discovery only")
    dc.add_argument("--known", action="store_true", help="list cameras seen so far, without searching")
    dc.set_defaults(fn=cmd_discover)

    e = sub.add_parser("export", help="export a time range of one camera into one MP4 plus a manifest")
    e.add_argument("--camera", type=int, required=True)
    e.add_argument("--from", dest="from_", required=True, help="ISO 8601 UTC, -5m, or a UTC ns number")
    e.add_argument("--to", required=True)
    e.add_argument("-o", "--output", type=Path, required=True)
    e.set_defaults(fn=cmd_export)

    auditcli.add_parsers(sub, _load, parse_time)
    consentcli.add_parsers(sub, _load, _notify_daemon, parse_duration_s)
    holdcli.add_parsers(sub, _load)  # edge hold list|release
    requestcli.add_parsers(sub, _load, parse_time)  # edge requests, edge share

    sn = sub.add_parser("snapshot", help="latest picture of a camera as JPEG")
    sn.add_argument("--camera", type=int, required=True)
    sn.add_argument("-o", "--output", type=Path, required=True)
    sn.set_defaults(fn=cmd_snapshot)
    paircli.add_parsers(sub, _load)  # edge pair, edge pairing, edge hub …
    return p


TIME_OPTIONS = ("--from", "--to", "--since")


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
