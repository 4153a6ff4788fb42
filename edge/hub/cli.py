"""`edge hub keygen|enroll-code|serve`: run the reference police hub (for tests, demos and hub vendors).

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
    s.set_defaults(fn=cmd_serve)


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
    names = ([] if host in ("0.0.0.0", "::") else [host]) + list(args.name)  # noqa: S104 - not a bind
    if not names:
        raise Error("listening on every address: name the server certificate with --name HOST")
    cert, key = state.write_server_cert(names, now_utc_ns=time.time_ns())
    ctx = server.server_context(cert, key, state.root_pem)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    async def run() -> None:
        hub = await server.start(state, host=host, port=port, ssl_context=ctx)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        _out(f"hub {state.hub_id} ({state.agency}), root fingerprint {state.root_fingerprint}")
        _out(f"listening on {hub.url}")
        try:
            await stop.wait()
        finally:
            await hub.close()

    asyncio.run(run())
    return 0


def parse_listen(text: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", text.strip())
    if not m or int(m.group(2)) > 65535:
        raise Error(f"cannot read --listen {text!r}: use HOST:PORT, e.g. 127.0.0.1:8443")
    return m.group(1), int(m.group(2))


def parse_ttl_s(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m or int(m.group(1)) == 0:
        raise Error(f"cannot read --ttl {text!r}: use e.g. 30m, 12h, 1d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
