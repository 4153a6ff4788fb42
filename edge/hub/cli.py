"""`edge hub keygen|enroll-code|serve|request`: the reference police hub (for tests, demos and hub vendors).

``serve`` also listens on the admin socket ``<data>/hub.sock`` (:mod:`edge.hub.admin`) and, with ``--console
HOST:PORT``, serves the console page on that loopback address (:mod:`edge.hub.console`); ``request`` talks
to a running ``serve`` through the socket: sends an emergency request, prints the decision and where the
video was saved (exit 0 video saved, 1 refused, 2 error).

Imports are inside the commands: registering them must not slow every other `edge` command down.

Registered by :mod:`edge.paircli`. Every command takes ``--data DIR``, the hub's own directory
(:mod:`edge.hub.state`), never the box's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.errors import Error

DEFAULT_LISTEN = "127.0.0.1:8443"


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def add_parsers(sub: Any) -> None:
    hub = sub.add_parser("hub", help="the reference police hub (tests, demos, hub vendors)").add_subparsers(
        dest="hub_command", required=True, metavar="ACTION"
    )
    k = hub.add_parser("keygen", help="make a new hub: root CA, signing key, key set version 1")
    k.add_argument("--data", type=Path, required=True, help="the hub's directory (created)")
    k.add_argument("--agency", default="Reference Police Hub", help="the agency name boxes show their owner")
    k.add_argument("--hub-id", help="the hub's id (default: hub-<random>)")
    k.add_argument("--terms", type=Path, help="the programme's terms, a UTF-8 text file")
    k.add_argument("--terms-version", help="the terms' version (required with --terms)")
    k.set_defaults(fn=cmd_keygen)

    e = hub.add_parser("enroll-code", help="a one-time enrollment code for one box")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--url", required=True, help="the hub's https:// URL, as boxes will reach it")
    e.add_argument("--ttl", default="1d", help="how long the code is valid, e.g. 30m, 1d (default 1d)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_enroll_code)

    s = hub.add_parser("serve", help="serve the hub over HTTPS (TLS 1.3) until SIGTERM/SIGINT")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT, port 0 for any (default {DEFAULT_LISTEN})"
    )
    s.add_argument(
        "--name",
        action="append",
        default=[],
        help="another DNS name or IP address for the server certificate (repeatable)",
    )
    s.add_argument(
        "--console",
        metavar="HOST:PORT",
        help="also serve the console web page on this loopback address, e.g. 127.0.0.1:8080",
    )
    s.set_defaults(fn=cmd_serve)

    k2 = hub.add_parser("rotate-keys", help="a new signing key set, pushed to every connected box")
    k2.add_argument("--data", type=Path, required=True)
    k2.add_argument("--add", type=int, default=1, help="new keys to add (default 1)")
    k2.add_argument(
        "--retire", action="append", default=[], metavar="KID", help="a kid to drop (boxes revoke it)"
    )
    k2.set_defaults(fn=cmd_rotate_keys)

    r = hub.add_parser("request", help="send an emergency request through a running `edge hub serve`")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--device", required=True, help="the box's device id")
    r.add_argument("--camera", type=int, action="append", required=True, help="a camera id (repeatable)")
    mode = r.add_mutually_exclusive_group(required=True)
    mode.add_argument("--live", action="store_const", const="live", dest="mode")
    mode.add_argument("--recorded", action="store_const", const="recorded", dest="mode")
    r.add_argument("--from", dest="from_", help="recorded: start, ISO 8601 UTC, Unix seconds, -5m or now")
    r.add_argument("--to", help="recorded: end, as --from")
    r.add_argument("--case", required=True, help="the case or incident number")
    r.add_argument("--reason", required=True, help="threat_to_life, violent_crime, missing_person, …")
    r.add_argument("--officer", default="reference hub operator", help="who asks (the request's sub)")
    r.add_argument("--max-dur", default="10m", help="the session's longest duration, e.g. 90s, 10m (10m)")
    r.add_argument("--lat", type=float, help="the incident's latitude (default: the camera's)")
    r.add_argument("--lon", type=float, help="the incident's longitude (default: the camera's)")
    r.add_argument("--kind", default="emergency", help="the incident's kind (emergency)")
    r.add_argument("--stop-after", help="close each stream this long after its first fragment, e.g. 30s")
    r.set_defaults(fn=cmd_request)


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge.hub.state import DEFAULT_TERMS, HubState
    from edge.uplink.enroll import Terms

    terms = DEFAULT_TERMS
    if args.terms is not None:
        if not args.terms_version:
            raise Error("--terms needs --terms-version")
        try:
            terms = Terms(version=args.terms_version, text=args.terms.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise Error(f"cannot read terms {args.terms}: {e}") from None
    hub_id = args.hub_id or f"hub-{secrets.token_hex(4)}"
    state = HubState.create(
        args.data, hub_id=hub_id, agency=args.agency, terms=terms, now_utc_ns=time.time_ns()
    )
    _out(f"hub id               {state.hub_id}")
    _out(f"agency               {state.agency}")
    _out(f"root fingerprint     {state.root_fingerprint}")
    _out(f"key set fingerprint  {state.keyset_fingerprint()}")
    _out(f"terms                {state.terms.version} (sha256 {state.terms.sha256})")
    return 0


def cmd_enroll_code(args: argparse.Namespace) -> int:
    from edge.hub.state import HubState
    from edge.uplink.enroll import check_hub_url, make_code

    state = HubState(args.data)
    url = check_hub_url(args.url)
    ttl_s = parse_ttl_s(args.ttl)
    now = time.time_ns()
    token = state.issue_token(ttl_s=ttl_s, now_utc_ns=now)
    code = make_code(url, token, state.root_fingerprint)
    expires = datetime.fromtimestamp(now / 1e9 + ttl_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    info = {
        "code": code,
        "keyset_fingerprint": state.keyset_fingerprint(),
        "agency": state.agency,
        "hub_id": state.hub_id,
        "expires": expires,
    }
    if args.json:
        _out(json.dumps(info, indent=2))
        return 0
    _out(f"enrollment code      {code}")
    _out(f"key set fingerprint  {info['keyset_fingerprint']}")
    _out(f"expires              {expires}")
    _out(f"on the box: edge pair CODE --confirm-fingerprint {info['keyset_fingerprint']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from edge.hub import server
    from edge.hub.state import HubState

    state = HubState(args.data)
    host, port = parse_listen(args.listen)
    console_at = None
    if args.console is not None:
        from edge.hub.console import check_loopback

        console_host, console_port = parse_listen(args.console, "--console")
        console_at = check_loopback(console_host), console_port
    names = ([] if host in ("0.0.0.0", "::") else [host]) + list(args.name)  # noqa: S104 - not a bind
    if not names:
        raise Error("listening on every address: name the server certificate with --name HOST")
    cert, key = state.write_server_cert(names, now_utc_ns=time.time_ns())
    ctx = server.server_context(cert, key, state.root_pem)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    async def run() -> None:
        from edge.hub.admin import start_admin
        from edge.hub.console import ConsoleServer, start_console

        hub = await server.start(state, host=host, port=port, ssl_context=ctx)
        console: ConsoleServer | None = None
        try:
            admin = await start_admin(state, hub.control, hub.media)
            if console_at is not None:
                try:
                    console = await start_console(
                        state, hub.control, hub.media, host=console_at[0], port=console_at[1]
                    )
                except BaseException:
                    await admin.close()
                    raise
        except BaseException:
            await hub.close()
            raise
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        _out(f"hub {state.hub_id} ({state.agency}), root fingerprint {state.root_fingerprint}")
        _out(f"listening on {hub.url}")
        _out(f"admin socket {admin.path}")
        if console is not None:
            _out(f"console      {console.url}")
        try:
            await stop.wait()
        finally:
            if console is not None:
                await console.close()
            await admin.close()
            await hub.close()

    asyncio.run(run())
    return 0


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    """Through the running hub (it pushes the set to the boxes at once); without one, in its directory (boxes
    get the set when they next connect)."""
    from edge.hub.admin import SOCKET_FILE
    from edge.hub.state import HubState

    sock = args.data / SOCKET_FILE
    if sock.exists():
        reply = asyncio.run(
            _admin_post(sock, "/v1/admin/keys/rotate", {"add": args.add, "retire": args.retire})
        )
        if "error" in reply:
            raise Error(str(reply.get("detail", reply["error"])))
        pushed = ", ".join(reply["pushed_to"]) or "no box connected"
        _out(f"key set version {reply['version']}: {', '.join(reply['kids'])}; pushed to {pushed}")
        return 0
    state = HubState(args.data)
    state.rotate_keys(add=args.add, retire=args.retire, now_utc_ns=time.time_ns())
    claims = state.keyset_claims()
    _out(f"key set version {claims['version']}: {', '.join(state.current_kids())}")
    _out("the hub is not running: boxes get the new set when they next connect")
    return 0


async def _admin_post(sock: Path, path: str, body: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s,
        s.post(f"http://hub{path}", json=body, timeout=aiohttp.ClientTimeout(total=30)) as resp,
    ):
        reply: dict[str, Any] = await resp.json()
        return reply


def cmd_request(args: argparse.Namespace) -> int:
    from edge.hub.admin import SOCKET_FILE

    try:
        body = request_body(args, now_utc_ns=time.time_ns())
        return asyncio.run(_request(args.data / SOCKET_FILE, body))
    except Error as e:
        sys.stderr.write(f"edge: {e.message}\n")
        return 2


def request_body(args: argparse.Namespace, *, now_utc_ns: int) -> dict[str, Any]:
    """The admin API's request body from the command line."""
    from_s: int | None = None
    to_s: int | None = None
    if args.mode == "recorded":
        if args.from_ is None or args.to is None:
            raise Error("--recorded needs --from and --to")
        from_s, to_s = parse_time_s(args.from_, now_utc_ns), parse_time_s(args.to, now_utc_ns)
    elif args.from_ is not None or args.to is not None:
        raise Error("--from and --to go with --recorded")
    incident: dict[str, Any] = {"kind": args.kind}
    if (args.lat is None) != (args.lon is None):
        raise Error("give both --lat and --lon, or neither (the camera's position)")
    if args.lat is not None:
        incident |= {"lat": args.lat, "lon": args.lon}
    body: dict[str, Any] = {
        "device": args.device, "cameras": args.camera, "mode": args.mode,
        "max_dur": parse_duration_s(args.max_dur, "--max-dur"), "case": args.case, "reason": args.reason,
        "sub": args.officer, "incident": incident,
    }  # fmt: skip
    if from_s is not None:
        body |= {"from": from_s, "to": to_s}
    if args.stop_after is not None:
        body["stop_after_s"] = parse_seconds(args.stop_after)
    return body


async def _request(sock: Path, body: dict[str, Any]) -> int:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=body["max_dur"] + 120)
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock)), timeout=timeout) as s,
            s.post("http://hub/v1/admin/request", json=body) as resp,
        ):
            if resp.status != 200:
                err = await resp.json(content_type=None)
                raise Error(f"{err.get('error')}: {err.get('detail')}")
            return await _print_events(resp.content)
    except (aiohttp.ClientConnectionError, FileNotFoundError) as e:
        raise Error(f"cannot reach the hub at {sock} (is `edge hub serve --data` running?): {e}") from None
    except TimeoutError:
        raise Error("the hub went silent") from None


async def _print_events(lines: Any) -> int:
    """Print the admin API's events; the exit code: 0 every camera's video saved, 1 refused, 2 otherwise."""
    code = 2
    ok: dict[int, bool] = {}
    async for line in lines:
        event = json.loads(line)
        kind = event.get("event")
        if kind == "decision":
            decision = event["decision"]
            if decision.get("decision") != "accepted":
                _out(f"decision   refused: {decision.get('code')}")
                return 1
            _out(f"decision   accepted, session {event['session']}")
            _out(f"files      {event['directory']}")
            code = 0
        elif kind == "first_fragment":
            after_ms = event["after_decision_ms"]
            _out(f"camera {event['camera']:<3} first fragment {after_ms:.0f} ms after the decision")
        elif kind == "end":
            rec = event["record"]
            # saved: the init segment and at least one fragment, and no failure (a stop or a cut is fine)
            saved = rec["first_frame_mono_ns"] is not None and rec["failed"] is None
            ok[event["camera"]] = saved
            what = "complete" if rec["complete"] else "incomplete"
            if saved:
                _out(f"camera {event['camera']:<3} saved {rec['video']} ({rec['reason']}, {what}, "
                     f"{rec['frames']} frames, {rec['bytes']} bytes)")  # fmt: skip
            else:
                _out(f"camera {event['camera']:<3} no video: {rec['reason']}")
    return code if ok and all(ok.values()) else 2


def parse_time_s(text: str, now_utc_ns: int) -> int:
    """Unix seconds, ISO 8601 (naive means UTC), ``now`` or ``-90s``/``-5m``/``-2h``/``-1d`` → Unix seconds.
    Like the box's CLI (edge/cli.py, which a library may not import), except that bare digits are seconds."""
    text = text.strip()
    now_s = now_utc_ns // 1_000_000_000
    if text == "now":
        return now_s
    if text.isascii() and text.isdigit():
        return int(text)
    if text.startswith("-") and re.fullmatch(r"-\d+[smhd]", text):
        return now_s - parse_duration_s(text[1:], "the time")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Error(
            f"cannot read time {text!r}: use ISO 8601 (2026-11-21T10:00:00Z), Unix seconds, -5m or now"
        ) from None
    return int((dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp())


def parse_duration_s(text: str, what: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m or int(m.group(1)) == 0:
        raise Error(f"cannot read {what} {text!r}: use e.g. 90s, 10m, 1h")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not m or float(m.group(1)) == 0:
        raise Error(f"cannot read {text!r}: use e.g. 30s, 1.5, 2m")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", text.strip())
    if not m or int(m.group(2)) > 65535:
        raise Error(f"cannot read {option} {text!r}: use HOST:PORT, e.g. 127.0.0.1:8443")
    return m.group(1), int(m.group(2))


def parse_ttl_s(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m or int(m.group(1)) == 0:
        raise Error(f"cannot read --ttl {text!r}: use e.g. 30m, 12h, 1d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
