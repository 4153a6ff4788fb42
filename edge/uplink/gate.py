"""The gate every access request passes: verify, consume the nonce, refuse replays, ask the owner's policy,
log, and answer with a decision signed by the device key (docs/protocol.md §5-7).

Nothing here opens media; an accepted decision is what the session code needs to start one. Every request —
refused ones included, and tokens too malformed to parse — leaves ``request.received`` and then
``request.refused`` or ``request.accepted`` in the audit log, in one append.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rfc8785

from edge.audit import AuditLog, Event
from edge.clock import NS_PER_S
from edge.consent import CameraPolicy, Decision, Usage, decide
from edge.identity import DeviceIdentity
from edge.owner import killswitch_engaged
from edge.store import Store
from edge.uplink import pairing
from edge.uplink.claims import MAX_TOKEN_BYTES, AccessRequest
from edge.uplink.guard import ReplayGuard
from edge.uplink.keyset import KeysetError, PinnedKeyset
from edge.uplink.media import session_handle
from edge.uplink.request import HubKeys, Refused, verify_token

HOUR_S = 3600


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    code: str | None
    detail: str
    request: AccessRequest | None  # None when the token never verified
    message: dict[str, Any]  # the signed decision message for the hub

    @property
    def jti(self) -> str:
        return str(self.message["jti"])


def policies(store: Store) -> dict[int, CameraPolicy]:
    """The owner's current policy for every active camera (private ones too: decide() hides them)."""
    return {
        c.id: CameraPolicy(
            camera_id=c.id,
            consent=c.consent,
            lat=c.lat,
            lon=c.lon,
            radius_m=c.radius_m,
            allow_live=c.allow_live,
            max_session_s=c.max_session_s,
            max_lookback_s=c.max_lookback_s,
            hourly_quota=c.hourly_quota,
        )
        for c in store.cameras()
    }


def accepted_this_hour(store: Store, now_utc_ns: int) -> dict[int, int]:
    """Accepted requests per camera in the last hour, read back from the audit log's newest entries."""
    since = now_utc_ns - HOUR_S * NS_PER_S
    counts: dict[int, int] = {}
    for (raw,) in store.iterate("SELECT entry FROM audit_entries ORDER BY seq DESC", batch=256):
        entry = json.loads(raw)
        if int(entry["time"]) < since:
            break
        if entry["type"] == "request.accepted":
            for cam in entry["cameras"]:
                counts[cam] = counts.get(cam, 0) + 1
    return counts


class Gate:
    def __init__(
        self,
        store: Store,
        identity: DeviceIdentity,
        hub: HubKeys,
        *,
        open_sessions: Callable[[], frozenset[int]] = frozenset,
        on_accept: Callable[[AccessRequest], None] | None = None,
        actor: str | None = None,
    ) -> None:
        """``on_accept`` runs on this (the database) thread right after an acceptance, before the next request
        is decided: the place to mark its cameras busy, so a second request at once is refused ``busy``."""
        self.store = store
        self.identity = identity
        self.hub = hub
        self.guard = ReplayGuard(store)
        self.audit = AuditLog(store)
        self._open_sessions = open_sessions
        self._on_accept = on_accept
        self._actor = actor or f"hub:{hub.hub_id}"

    def accept_keyset(self, token: str, *, now_utc_ns: int) -> PinnedKeyset | None:
        """A key set the hub pushed: None if it is the one pinned already; else (newer, signed by a pinned
        key, no revoked kid back) pinned and logged (``hub.keys.changed``), and requests are checked against
        it from the next one on. :class:`KeysetError` (nothing changes) for anything else."""
        current = pairing.load(self.store)
        if current is None:
            raise KeysetError("wrong_hub", "not paired with a hub")
        if current.keyset.jws == token:
            return None
        rotated = pairing.rotate(self.store, token, actor=self._actor, now_utc_ns=now_utc_ns)
        self.hub = rotated.hub_keys()
        return rotated.keyset

    def issue_nonce(self, *, now_utc_ns: int) -> str:
        return self.guard.issue_nonce(now_utc_ns=now_utc_ns)

    def handle(self, token: str | bytes, *, now_utc_ns: int) -> Outcome:
        raw = token.encode("utf-8", "replace") if isinstance(token, str) else bytes(token)
        now_s = now_utc_ns // NS_PER_S
        request: AccessRequest | None = None
        try:
            request = verify_token(raw, hub=self.hub, device_id=self.identity.public.device_id, now_s=now_s)
            self.guard.consume_nonce(request.dev_nonce, now_utc_ns=now_utc_ns)
            self.guard.record_jti(request.jti, iss=request.iss, exp=request.exp, now_utc_ns=now_utc_ns)
            if killswitch_engaged(self.store) is not None:
                raise Refused("killswitch", "the owner has stopped all sharing")
            usage = Usage(
                open_sessions=self._open_sessions(),
                requests_this_hour=accepted_this_hour(self.store, now_utc_ns),
            )
            decision = decide(request, policies(self.store), usage, now_s)
        except Refused as r:
            decision = Decision(False, r.code, None, r.detail)
        jti = request.jti if request is not None else _token_id(raw)
        self._log(raw, request, jti, decision, now_utc_ns)
        if decision.accepted and request is not None and self._on_accept is not None:
            self._on_accept(request)
        message = self._message(jti, decision, now_s)
        return Outcome(decision.accepted, decision.code, decision.detail, request, message)

    def _log(
        self, raw: bytes, request: AccessRequest | None, jti: str, decision: Decision, now_utc_ns: int
    ) -> None:
        cameras = request.scope.cameras if request is not None else ()
        received: dict[str, Any] = {
            # The raw JWS is the evidence; an oversized one is logged by its hash and size only.
            "jws": raw.decode("ascii", "replace") if len(raw) <= MAX_TOKEN_BYTES else None,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "bytes": len(raw),
        }
        if request is not None:
            received |= {
                "sub": request.sub,
                "case": request.case,
                "reason": request.reason,
                "mode": request.scope.mode,
                "incident": {"lat": repr(request.incident.lat), "lon": repr(request.incident.lon),
                             "kind": request.incident.kind},
            }  # fmt: skip
        outcome = "request.accepted" if decision.accepted else "request.refused"
        details: dict[str, Any] = {"code": decision.code, "detail": decision.detail}
        if decision.camera_id is not None:
            details["camera"] = decision.camera_id
        self.audit.append(
            [
                Event("request.received", self._actor, cameras=cameras, request=jti, details=received),
                Event(outcome, "daemon", cameras=cameras, request=jti, details=details),
            ],
            now_utc_ns=now_utc_ns,
        )

    def _message(self, jti: str, decision: Decision, now_s: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "decision",
            "jti": jti,
            "decision": "accepted" if decision.accepted else "refused",
            "code": decision.code,
            "session": session_handle(jti) if decision.accepted else None,
            "time": now_s,
            "device_id": self.identity.public.device_id,
        }
        sig = self.identity.sign(rfc8785.dumps(body))
        return body | {"sig": base64.urlsafe_b64encode(sig).rstrip(b"=").decode()}


def _token_id(raw: bytes) -> str:
    """For a token too broken to name its jti: base64url SHA-256 of its bytes (docs/protocol.md §7)."""
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()
