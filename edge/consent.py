"""The owner's consent as a pure function: may this verified request open these cameras, now?

:func:`decide` is the last step of a request's checks (after the signature, claims, nonce and ``jti``), and
it does no I/O and reads no clock: the caller passes the policies, what is in use and the time. Its refusal
codes are part of the protocol (docs/protocol.md). The checks, for each camera in the order the request
names them, and the first one that fails gives the code:

1. ``no_such_camera`` — no such camera, **or a private one**: same code and same detail text, so the hub
   cannot learn which private cameras a box has;
2. ``not_integrated`` — registered: the hub knows the camera, but video is not shared;
3. ``no_location`` — integrated without a position (the promise is access "at or near your camera's
   location", so without one no request can be in range);
4. ``too_far`` — the incident is farther from the camera than the owner's radius;
5. ``live_not_allowed`` — live asked of a recordings-only camera;
6. ``duration_over_cap`` — ``max_dur`` over the owner's session cap;
7. ``lookback_over_cap`` — recorded: ``from`` older than the owner's look-back;
8. ``bad_range`` — recorded: ``to <= from``, or ``to`` more than the clock skew in the future;
9. ``busy`` — a session is already open on the camera;
10. ``quota`` — the camera's accepted requests this hour reached the owner's hourly quota.

Every named camera must pass: a request wider than consent is refused, never trimmed to what would pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from edge.errors import ConfigError
from edge.uplink.claims import CLOCK_SKEW_S, MAX_DUR_S, AccessRequest

Consent = Literal["private", "registered", "integrated"]
CONSENT_LEVELS: Final[tuple[str, ...]] = get_args(Consent)

DEFAULT_RADIUS_M: Final = 300
DEFAULT_MAX_SESSION_S: Final = 900
HARD_MAX_SESSION_S: Final = MAX_DUR_S
# A week: footage is usually asked for within days of an incident (it is reported, a case is opened, an
# officer canvasses the street), and a weekend plus a few working days covers that; longer would make the box
# a searchable archive of the street for months, which the owner should choose, not get by default. The owner
# may go up to MAX_LOOKBACK_S (90 days) or down to 0 (nothing recorded before the request, in effect).
DEFAULT_MAX_LOOKBACK_S: Final = 7 * 86400
DEFAULT_HOURLY_QUOTA: Final = 4

MIN_RADIUS_M: Final = 10
MAX_RADIUS_M: Final = 50_000
MAX_LOOKBACK_S: Final = 90 * 86400
MAX_HOURLY_QUOTA: Final = 100
EARTH_RADIUS_M: Final = 6_371_008.8  # IUGG mean radius

# Refusal codes, in check order.
NO_SUCH_CAMERA: Final = "no_such_camera"
NOT_INTEGRATED: Final = "not_integrated"
NO_LOCATION: Final = "no_location"
TOO_FAR: Final = "too_far"
LIVE_NOT_ALLOWED: Final = "live_not_allowed"
DURATION_OVER_CAP: Final = "duration_over_cap"
LOOKBACK_OVER_CAP: Final = "lookback_over_cap"
BAD_RANGE: Final = "bad_range"
BUSY: Final = "busy"
QUOTA: Final = "quota"
CODES: Final = (
    NO_SUCH_CAMERA,
    NOT_INTEGRATED,
    NO_LOCATION,
    TOO_FAR,
    LIVE_NOT_ALLOWED,
    DURATION_OVER_CAP,
    LOOKBACK_OVER_CAP,
    BAD_RANGE,
    BUSY,
    QUOTA,
)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    # bool is an int to Python, never to the owner
    if type(value) is not int or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer from {lo} to {hi}, not {value!r}")


def _check_coordinate(name: str, value: object, limit: float) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not -limit <= value <= limit:
        # NaN fails the comparison
        raise ConfigError(f"{name} must be a number from {-limit:g} to {limit:g}, not {value!r}")


@dataclass(frozen=True)
class CameraPolicy:
    """What the owner allows for one camera. Invalid values raise :class:`ConfigError` naming the field."""

    camera_id: int
    consent: Consent
    lat: float | None
    lon: float | None
    radius_m: int = DEFAULT_RADIUS_M
    allow_live: bool = True
    max_session_s: int = DEFAULT_MAX_SESSION_S
    max_lookback_s: int = DEFAULT_MAX_LOOKBACK_S
    hourly_quota: int = DEFAULT_HOURLY_QUOTA

    def __post_init__(self) -> None:
        if type(self.camera_id) is not int:
            raise ConfigError(f"camera_id must be an integer, not {self.camera_id!r}")
        if self.consent not in CONSENT_LEVELS:
            raise ConfigError(f"consent must be one of {', '.join(CONSENT_LEVELS)}, not {self.consent!r}")
        _check_coordinate("lat", self.lat, 90)
        _check_coordinate("lon", self.lon, 180)
        if (self.lat is None) != (self.lon is None):
            raise ConfigError("lat and lon must both be set or both be unset")
        if type(self.allow_live) is not bool:
            raise ConfigError(f"allow_live must be true or false, not {self.allow_live!r}")
        _check_int("radius_m", self.radius_m, MIN_RADIUS_M, MAX_RADIUS_M)
        _check_int("max_session_s", self.max_session_s, 1, HARD_MAX_SESSION_S)
        _check_int("max_lookback_s", self.max_lookback_s, 0, MAX_LOOKBACK_S)
        _check_int("hourly_quota", self.hourly_quota, 0, MAX_HOURLY_QUOTA)


@dataclass(frozen=True)
class Usage:
    """What is in use now, as the caller counts it."""

    open_sessions: frozenset[int] = frozenset()  # camera ids with a session open now
    requests_this_hour: Mapping[int, int] = field(default_factory=dict)  # camera id -> accepted, last hour


@dataclass(frozen=True)
class Decision:
    """``code`` and ``camera_id`` are None when accepted; ``detail`` is for people (owner, officer)."""

    accepted: bool
    code: str | None
    camera_id: int | None
    detail: str


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two points in degrees (haversine on the mean-radius sphere).

    The sphere is off from the ellipsoid by at most about 0.5 %, far less than what an owner's radius means.
    A coordinate that is NaN or infinite gives NaN.
    """
    if not all(math.isfinite(v) for v in (lat1, lon1, lat2, lon2)):
        return math.nan  # no distance, and never a small one: callers compare with ``not d <= limit``
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    # rounding can push a a hair past 1 near the antipode, out of asin's domain
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def _refuse(code: str, camera_id: int | None, detail: str) -> Decision:
    return Decision(False, code, camera_id, detail)


def _check_camera(
    camera_id: int, policy: CameraPolicy | None, request: AccessRequest, usage: Usage, now_s: int
) -> Decision | None:
    """The first refusal for one camera, or None when it passes."""
    if policy is None or policy.consent == "private":
        # Nothing here may differ between the two cases: not the code, not the text, not the camera id.
        return _refuse(NO_SUCH_CAMERA, camera_id, f"camera {camera_id}: no such camera")
    if policy.consent != "integrated":
        return _refuse(NOT_INTEGRATED, camera_id, f"camera {camera_id}: registered only, video is not shared")
    if policy.lat is None or policy.lon is None:
        return _refuse(NO_LOCATION, camera_id, f"camera {camera_id}: has no location")
    incident = request.incident
    distance = distance_m(policy.lat, policy.lon, incident.lat, incident.lon)
    if not distance <= policy.radius_m:  # written so that a NaN refuses
        return _refuse(
            TOO_FAR,
            camera_id,
            f"camera {camera_id}: the incident is {distance:.1f} m away, over {policy.radius_m} m",
        )
    scope = request.scope
    if scope.mode == "live" and not policy.allow_live:
        return _refuse(LIVE_NOT_ALLOWED, camera_id, f"camera {camera_id}: recordings only, no live view")
    if request.max_dur > policy.max_session_s:
        return _refuse(
            DURATION_OVER_CAP,
            camera_id,
            f"camera {camera_id}: max_dur {request.max_dur} s is over the owner's cap of "
            f"{policy.max_session_s} s",
        )
    if scope.mode == "recorded":
        if scope.from_s is not None and now_s - scope.from_s > policy.max_lookback_s:
            return _refuse(
                LOOKBACK_OVER_CAP,
                camera_id,
                f"camera {camera_id}: from is {now_s - scope.from_s} s ago; the owner allows "
                f"{policy.max_lookback_s} s",
            )
        if scope.from_s is None or scope.to_s is None or scope.to_s <= scope.from_s:
            return _refuse(BAD_RANGE, camera_id, "the recorded range is empty (to must be after from)")
        if scope.to_s > now_s + CLOCK_SKEW_S:
            return _refuse(BAD_RANGE, camera_id, "the recorded range ends in the future")
    if camera_id in usage.open_sessions:
        return _refuse(BUSY, camera_id, f"camera {camera_id}: a session is already open")
    count = usage.requests_this_hour.get(camera_id, 0)
    if count >= policy.hourly_quota:
        return _refuse(
            QUOTA,
            camera_id,
            f"camera {camera_id}: {count} requests this hour; the owner allows {policy.hourly_quota}",
        )
    return None


def decide(
    request: AccessRequest, policies: Mapping[int, CameraPolicy], usage: Usage, now_s: int
) -> Decision:
    """Accept the request only if every camera it names passes every check; else the first refusal.

    ``policies`` maps camera id to the owner's policy (private cameras may be in it or not: same answer).
    ``request`` is verified (types, ranges, 1..16 distinct cameras); a request naming no camera is still
    refused rather than accepted for nothing.
    """
    cameras = request.scope.cameras
    if not cameras:
        return _refuse(NO_SUCH_CAMERA, None, "the request names no camera")
    for camera_id in cameras:
        refusal = _check_camera(camera_id, policies.get(camera_id), request, usage, now_s)
        if refusal is not None:
            return refusal
    names = ", ".join(str(c) for c in cameras)
    return Decision(True, None, None, f"accepted: {request.scope.mode} for camera(s) {names}")
