"""The reference hub sends an emergency request (docs/protocol.md §5, §7, §8.1) and gets ready for its video.

:func:`make_request`: a fresh X25519 viewer key, a ``dev_nonce`` from the box over the control channel, the
request signed with the hub's current key, the media expectation registered *before* the request goes (the box
connects right after its decision), then the decision. Saved under ``<hub data>/sessions/<session>/``:

    request.jwt     the compact JWS as sent
    request.json    its claims
    decision.json   the box's signed decision (absent if none came)

The viewer's private key stays in this process's memory only (:class:`edge.hub.media.Expected`); a real
console would keep it on the officer's device.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge import jws, keyfiles
from edge.errors import Error
from edge.fsutil import makedirs_durable
from edge.hub.control import ControlError, ControlHub
from edge.hub.media import Expected, MediaHub
from edge.hub.state import HubState
from edge.uplink import controlwire as wire
from edge.uplink.claims import MAX_CAMERAS, MAX_DUR_S, MAX_LIFETIME_S, REASONS
from edge.uplink.media import session_handle
from edge.uplink.request import sign_token

REQUEST_JWT: Final = "request.jwt"
REQUEST_JSON: Final = "request.json"
DECISION_JSON: Final = "decision.json"
JTI_BYTES: Final = 16
MAX_TEXT: Final = 128
MAX_KIND: Final = 64


class RequestError(Error):
    """The request could not be made: bad arguments (``bad_request``), or the box's answer was unusable."""

    kind = "bad_request"


@dataclass(frozen=True)
class RequestResult:
    jti: str
    session: str
    directory: Path  # <hub data>/sessions/<session>
    claims: dict[str, Any]
    decision: dict[str, Any]
    expected: Expected | None  # the streams to wait for; None if refused (a notice: a share may come)

    @property
    def accepted(self) -> bool:
        return self.decision.get("decision") == "accepted"

    @property
    def code(self) -> str | None:
        code = self.decision.get("code")
        return code if isinstance(code, str) else None


def build_claims(
    *,
    hub_id: str,
    device_id: str,
    cameras: Sequence[int],
    mode: str,
    from_s: int | None,
    to_s: int | None,
    max_dur: int,
    case: str,
    reason: str,
    sub: str,
    incident: Mapping[str, Any],
    viewer_key: bytes,
    nonce: str,
    jti: str,
    now_s: int,
    ttl_s: int,
) -> dict[str, Any]:
    """The claims of §5, checked here so that a typo is a clear error rather than a box's refusal."""
    cams = list(cameras)
    if not 0 < len(cams) <= MAX_CAMERAS or len(set(cams)) != len(cams):
        raise RequestError(f"name 1..{MAX_CAMERAS} distinct cameras")
    if any(type(c) is not int or c < 0 for c in cams):
        raise RequestError("camera ids are non-negative integers")
    scope: dict[str, Any] = {"cameras": cams, "mode": mode}
    if mode == "recorded":
        if from_s is None or to_s is None:
            raise RequestError("a recorded request needs from and to")
        if to_s <= from_s:
            raise RequestError("to must be after from")
        scope |= {"from": from_s, "to": to_s}
    elif mode == "live":
        if from_s is not None or to_s is not None:
            raise RequestError("a live request has no from or to")
    else:
        raise RequestError("mode is live or recorded")
    if not 0 < max_dur <= MAX_DUR_S:
        raise RequestError(f"max_dur is 1..{MAX_DUR_S} s")
    if not 0 < ttl_s <= MAX_LIFETIME_S:
        raise RequestError(f"the request's lifetime is 1..{MAX_LIFETIME_S} s")
    if reason not in REASONS:
        raise RequestError(f"reason is one of {', '.join(REASONS)}")
    for name, text, limit in (("case", case, MAX_TEXT), ("officer", sub, MAX_TEXT)):
        if not 0 < len(text) <= limit:
            raise RequestError(f"{name} is 1..{limit} characters")
    lat, lon, kind = incident.get("lat"), incident.get("lon"), incident.get("kind")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float) or isinstance(lat, bool):
        raise RequestError("the incident needs lat and lon")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise RequestError("the incident's lat is -90..90 and lon -180..180")
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND:
        raise RequestError(f"the incident's kind is 1..{MAX_KIND} characters")
    return {
        "iss": hub_id, "aud": device_id, "jti": jti, "iat": now_s, "nbf": now_s, "exp": now_s + ttl_s,
        "sub": sub, "case": case, "reason": reason, "scope": scope, "max_dur": max_dur,
        "incident": {"lat": float(lat), "lon": float(lon), "kind": kind},
        "viewer_key": jws.b64url_encode(viewer_key), "dev_nonce": nonce,
    }  # fmt: skip


async def make_request(
    hub_state: HubState,
    control: ControlHub,
    media: MediaHub,
    *,
    device_id: str,
    cameras: Sequence[int],
    mode: str,
    from_s: int | None = None,
    to_s: int | None = None,
    max_dur: int,
    case: str,
    reason: str,
    sub: str,
    incident: Mapping[str, Any],
    ttl_s: int = 120,
    clock_s: Callable[[], float] = time.time,
    on_expected: Callable[[Expected], None] | None = None,
) -> RequestResult:
    """Sign and send one request to ``device_id``; the decision and, if accepted, the streams to wait for.
    :class:`ControlError` if the box is not connected or gives no (valid) decision; :class:`RequestError` for
    bad arguments."""
    viewer = X25519PrivateKey.generate()
    viewer_key = viewer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jti = jws.b64url_encode(os.urandom(JTI_BYTES))
    kid, key = await asyncio.to_thread(_signing_key, hub_state)
    # Checked before asking for a nonce: a bad argument should not use one up.
    common: dict[str, Any] = dict(
        hub_id=hub_state.hub_id, device_id=device_id, cameras=cameras, mode=mode, from_s=from_s, to_s=to_s,
        max_dur=max_dur, case=case, reason=reason, sub=sub, incident=incident, viewer_key=viewer_key,
        jti=jti, ttl_s=ttl_s,
    )  # fmt: skip
    build_claims(nonce="-", now_s=int(clock_s()), **common)
    nonce = await control.ask_nonce(device_id)
    claims = build_claims(nonce=nonce, now_s=int(clock_s()), **common)
    token = sign_token(claims, kid=kid, key=key)
    session = session_handle(jti)
    directory = media.root / session
    await asyncio.to_thread(_save, directory, {REQUEST_JWT: token.encode(), REQUEST_JSON: _json(claims)})
    meta = {"mode": mode, "case": case, "reason": reason, "sub": sub, "max_dur": max_dur}
    expected = media.expect(device_id, jti, claims["scope"]["cameras"], viewer, meta)
    if on_expected is not None:  # e.g. a live viewer subscribing before the first fragment can come
        on_expected(expected)
    del viewer  # the expectation holds the only reference now
    try:
        decision = await control.send_request(device_id, token)
    except ControlError:
        media.cancel(expected, "no_decision")
        raise
    await asyncio.to_thread(_save, directory, {DECISION_JSON: _json(decision)})
    if decision.get("decision") != "accepted":
        if decision.get("code") == "not_integrated":
            media.await_share(expected)  # a notice to the owner, who may answer with a share
            return RequestResult(jti, session, directory, claims, decision, expected)
        media.cancel(expected, "refused")
        return RequestResult(jti, session, directory, claims, decision, None)
    if decision.get("session") != session:
        media.cancel(expected, "bad_decision")
        raise RequestError(f"the box accepted with session {decision.get('session')!r}, not {session}")
    return RequestResult(jti, session, directory, claims, decision, expected)


def _signing_key(state: HubState) -> tuple[str, Ed25519PrivateKey]:
    kid = state.current_kids()[0]
    return kid, state.signing_key(kid)


def _json(value: Mapping[str, Any]) -> bytes:
    return wire.encode(dict(value)).encode() + b"\n"


def _save(directory: Path, files: Mapping[str, bytes]) -> None:
    makedirs_durable(directory, mode=0o700)
    for name, data in files.items():
        keyfiles.write_atomically(directory / name, data, keyfiles.PUBLIC_MODE)
