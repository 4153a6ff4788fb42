"""Replay guards for access requests, in the database so they survive a reboot.

* ``dev_nonce``: the box hands the hub fresh single-use challenges (16 random bytes, base64url); a request
  must carry one that this box issued less than 120 s ago and that was never used. Consuming it is one
  conditional UPDATE, so two requests racing for one nonce cannot both win.
* ``jti``: every request that got this far is remembered by its jti under a PRIMARY KEY; the same jti again —
  even after a restart — is a replay. Rows are kept well past the tokens' lifetime (a replayed old token is
  refused as expired anyway), then pruned so the table stays small.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3

from edge.clock import NS_PER_S
from edge.store import Store
from edge.uplink.claims import CLOCK_SKEW_S, MAX_LIFETIME_S, NONCE_TTL_S
from edge.uplink.request import Refused

NONCE_BYTES = 16
MAX_OPEN_NONCES = 256  # unused challenges kept; a hub asking for more is asking for nothing good
JTI_KEEP_S = 24 * 3600 + MAX_LIFETIME_S + CLOCK_SKEW_S


class ReplayGuard:
    def __init__(self, store: Store) -> None:
        self.store = store

    def issue_nonce(self, *, now_utc_ns: int) -> str:
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(NONCE_BYTES)).rstrip(b"=").decode()
        with self.store.transaction() as c:
            c.execute(
                "DELETE FROM dev_nonces WHERE used_utc_ns IS NOT NULL OR issued_utc_ns < ?",
                (now_utc_ns - NONCE_TTL_S * NS_PER_S,),
            )
            c.execute(
                "DELETE FROM dev_nonces WHERE nonce NOT IN"
                " (SELECT nonce FROM dev_nonces ORDER BY issued_utc_ns DESC LIMIT ?)",
                (MAX_OPEN_NONCES - 1,),
            )
            c.execute("INSERT INTO dev_nonces (nonce, issued_utc_ns) VALUES (?, ?)", (nonce, now_utc_ns))
        return nonce

    def consume_nonce(self, nonce: str, *, now_utc_ns: int) -> None:
        with self.store.transaction() as c:
            cur = c.execute(
                "UPDATE dev_nonces SET used_utc_ns = ?"
                " WHERE nonce = ? AND used_utc_ns IS NULL AND issued_utc_ns >= ? AND issued_utc_ns <= ?",
                (now_utc_ns, nonce, now_utc_ns - NONCE_TTL_S * NS_PER_S, now_utc_ns),
            )
            if cur.rowcount != 1:
                raise Refused("bad_nonce", "dev_nonce unknown, already used, or older than 120 s")

    def record_jti(self, jti: str, *, iss: str, exp: int, now_utc_ns: int) -> None:
        with self.store.transaction() as c:
            c.execute("DELETE FROM request_jtis WHERE exp < ?", (now_utc_ns // NS_PER_S - JTI_KEEP_S,))
            try:
                c.execute(
                    "INSERT INTO request_jtis (jti, iss, exp, seen_utc_ns) VALUES (?, ?, ?, ?)",
                    (jti, iss, exp, now_utc_ns),
                )
            except sqlite3.IntegrityError:
                raise Refused("replayed", "this request (jti) was seen before") from None
