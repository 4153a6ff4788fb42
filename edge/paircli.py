"""`edge pair CODE --confirm-fingerprint HEX` and `edge pairing`: pair the box with a police hub, with the
owner's confirmation and without a prompt; show the pairing. Also registers `edge hub …` (the reference hub,
:mod:`edge.hub.cli`), so that edge/cli.py needs one line for both.

Pairing pins nothing unless the key set fingerprint the hub sent equals the one the owner confirms (the
police portal shows it next to the code). The private TLS key is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edge.config import Config
from edge.errors import ConfigError, Error

Loader = Callable[[argparse.Namespace], Config]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def add_parsers(sub: Any, load: Loader) -> None:
    p = sub.add_parser("pair", help="pair this box with a police hub (the owner confirms the hub's keys)")
    p.add_argument("code", nargs="?", help="the enrollment code from the police registry portal")
    p.add_argument(
        "--confirm-fingerprint",
        metavar="HEX",
        help="the hub key set fingerprint the portal shows with the code (required: nothing is pinned unless"
        " the hub's keys match it)",
    )
    p.add_argument("--replace", action="store_true", help="replace the current pairing with this hub")
    p.add_argument("--status", action="store_true", help="show the current pairing instead")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per request to the hub (15)")
    p.add_argument("--json", action="store_true", help="with --status: as JSON")
    p.set_defaults(fn=lambda a: cmd_pair(a, load))

    s = sub.add_parser("pairing", help="the police hub this box is paired with")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=lambda a: cmd_status(a, load))

    from edge.hub.cli import add_parsers as add_hub_parsers  # the police side: only its commands are wired

    add_hub_parsers(sub)


def cmd_pair(args: argparse.Namespace, load: Loader) -> int:
    if args.status:
        return cmd_status(args, load)
    if not args.code or not args.confirm_fingerprint:
        raise ConfigError(
            "edge pair needs the enrollment CODE and --confirm-fingerprint HEX, both from the police portal"
        )
    from edge import __version__
    from edge.audit import cli_actor
    from edge.identity import load_or_create
    from edge.store import Store
    from edge.uplink import pairing
    from edge.uplink.enroll import enroll, parse_code

    code = parse_code(args.code)
    confirmed = parse_fingerprint(args.confirm_fingerprint)
    data_dir = load(args).storage.data_dir
    store = Store.open(data_dir)
    try:
        current = pairing.load(store)
        if current is not None and not args.replace:  # before the hub is asked: the code stays unused
            raise Error(
                f"already paired with {current.agency} (hub {current.hub_id}); re-pairing needs --replace"
            )
        identity = load_or_create(data_dir)
        enrollment = asyncio.run(
            enroll(code, identity, box_version=__version__, now_s=int(time.time()), timeout_s=args.timeout)
        )
        got = enrollment.keyset.fingerprint
        if not hmac.compare_digest(got, confirmed):
            raise Error(
                f"the hub's key set fingerprint is {got}, not {confirmed} as confirmed: nothing was pinned."
                " The hub has used up this code; ask the police portal for a new one"
            )
        paired = pairing.pin(
            store, data_dir, enrollment, actor=cli_actor(), now_utc_ns=time.time_ns(), replace=args.replace
        )
    finally:
        store.close()
    _out(f"paired with {paired.agency} (hub {paired.hub_id})")
    _show(_summary(paired, identity.public.device_id))
    return 0


def cmd_status(args: argparse.Namespace, load: Loader) -> int:
    from edge.identity import load_public
    from edge.store import Store
    from edge.uplink import pairing

    data_dir = load(args).storage.data_dir
    store = Store.open(data_dir)
    try:
        current = pairing.load(store)
    finally:
        store.close()
    if current is None:
        if args.json:
            _out(json.dumps({"paired": False}))
        else:
            _out("not paired with a hub (edge pair CODE --confirm-fingerprint HEX)")
        return 0
    info = _summary(current, load_public(data_dir).device_id)
    if args.json:
        _out(json.dumps({"paired": True, **info}, indent=2))
        return 0
    _out(f"paired with {current.agency} (hub {current.hub_id})")
    _show(info)
    return 0


def parse_fingerprint(text: str) -> str:
    """64 hex digits; case, spaces and colons as people copy them are forgiven."""
    hex_text = re.sub(r"[\s:]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hex_text):
        raise ConfigError("--confirm-fingerprint must be the 64 hex digits of a SHA-256 fingerprint")
    return hex_text


def _summary(paired: Any, device_id: str) -> dict[str, Any]:
    from cryptography import x509

    from edge.uplink.keyset import key_fingerprint

    cert = x509.load_pem_x509_certificate(paired.client_cert_pem.encode("ascii"))
    ks = paired.keyset
    return {
        "hub_id": paired.hub_id,
        "agency": paired.agency,
        "hub_url": paired.hub_url,
        "device_id": device_id,
        "root_sha256": paired.root_fingerprint,
        "keyset": {
            "version": ks.version,
            "fingerprint": ks.fingerprint,
            "keys": [{"kid": kid, "sha256": key_fingerprint(raw)} for kid, raw in ks.keys.items()],
            "revoked": sorted(ks.revoked),
        },
        "terms": {"version": paired.terms.version, "sha256": paired.terms.sha256},
        "client_cert_expires": cert.not_valid_after_utc.strftime("%Y-%m-%d"),
        "paired": datetime.fromtimestamp(paired.paired_utc_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def _show(info: dict[str, Any]) -> None:
    ks = info["keyset"]
    _out(f"hub URL              {info['hub_url']}")
    _out(f"root certificate     sha256 {info['root_sha256']}")
    _out(f"key set              version {ks['version']}, fingerprint {ks['fingerprint']}")
    for key in ks["keys"]:
        _out(f"  key {key['kid']:<16} sha256 {key['sha256']}")
    if ks["revoked"]:
        _out(f"  revoked            {', '.join(ks['revoked'])}")
    _out(f"terms                version {info['terms']['version']}, sha256 {info['terms']['sha256']}")
    _out(f"this box             {info['device_id']} (client certificate until {info['client_cert_expires']})")
    _out(f"paired               {info['paired']}")
