"""Adding cameras: by RTSP URL, or by ONVIF device address (resolved to its main and sub streams).

Shared by the CLI now and the owner's page later, so both refuse the same things the same way: a URL scheme
we cannot record, a password without a user, the same camera twice. Passwords are sealed to the daemon's
public key before they reach the database (see :mod:`edge.credentials`); the caller never stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from edge.audit import AuditLog, Event, cli_actor
from edge.credentials import Sealer
from edge.errors import Error, Malformed
from edge.redact import redact_url
from edge.store import Camera, Store

if TYPE_CHECKING:  # the ONVIF client (zeep) is loaded only by the commands that talk ONVIF
    from edge.discovery.onvif import DeviceReport

RECORDABLE_SCHEMES = ("rtsp", "rtsps", "synthetic")
ONVIF_SCHEMES = ("http", "https")
ONVIF_DEFAULT_PATH = "/onvif/device_service"  # ONVIF Core: the device service's well-known path


@dataclass(frozen=True)
class Target:
    """What the installer typed, sorted out: a stream to record, or an ONVIF device to ask first."""

    kind: str  # "stream" | "onvif"
    url: str  # without credentials
    username: str | None
    password: str | None


def parse_target(text: str, *, username: str | None, password: str | None) -> Target:
    """``rtsp://…`` is a stream; ``http(s)://…`` or a bare ``host[:port]`` is an ONVIF device.

    Credentials typed into the URL are moved out of it: the URL is stored and shown without them.
    """
    text = text.strip()
    if "://" not in text and not text.startswith("synthetic:"):
        text = f"http://{text}"  # a bare "host[:port]" is what installers read off a camera's label
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in RECORDABLE_SCHEMES + ONVIF_SCHEMES:
        raise Malformed(
            f"unsupported camera address {redact_url(text)!r}: use rtsp://host[:port]/path, or the camera's"
            " ONVIF address (http://host[:port][/onvif/device_service] or just its IP address)"
        )
    if scheme != "synthetic" and not parts.hostname:
        raise Malformed(f"camera address {redact_url(text)!r} has no host")
    if parts.username or parts.password:
        username = username or (unquote(parts.username) if parts.username else None)
        if parts.password is not None:
            password = password if password is not None else unquote(parts.password)
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    if password is not None and not username:
        raise Malformed("a password needs a user name (--user)")
    if scheme in ONVIF_SCHEMES:
        if parts.path in ("", "/"):
            parts = parts._replace(path=ONVIF_DEFAULT_PATH)
        return Target("onvif", parts.geturl(), username, password)
    return Target("stream", parts.geturl(), username, password)


def same_stream(store: Store, url: str) -> Camera | None:
    """An active camera already recording ``url`` (the CLI warns: twice the disk for the same picture)."""
    return next((c for c in store.cameras() if c.url == url), None)


def add_stream(
    store: Store,
    sealer: Sealer,
    target: Target,
    *,
    name: str | None,
    max_age_s: int | None,
    now_utc_ns: int,
) -> Camera:
    blob = sealer.seal(target.password, target.url.encode()) if target.password is not None else None
    cam = store.add_camera(
        name=name or _default_name(target.url),
        url=target.url,
        username=target.username,
        password_blob=blob,
        max_age_s=max_age_s,
        now_utc_ns=now_utc_ns,
    )
    _log_added(store, cam, now_utc_ns)
    return cam


def add_onvif(
    store: Store,
    sealer: Sealer,
    target: Target,
    report: DeviceReport,
    *,
    name: str | None,
    max_age_s: int | None,
    now_utc_ns: int,
) -> Camera:
    """Record the device's main stream; keep its sub stream, snapshot URI and identity alongside."""
    if report.state != "ok":
        raise Error(f"{redact_url(target.url)}: {report.state}: {report.detail}")
    main, sub = report.main, report.sub
    if main is None or main.stream_uri is None:
        raise Error(f"{redact_url(target.url)}: the camera reports no RTSP stream")
    stream_url = _without_userinfo(main.stream_uri)
    # One ONVIF device is one camera: adding it again is a mistake, not a second recording.
    dup = next((c for c in store.cameras() if c.onvif_url == target.url), None)
    if dup is not None:
        raise Error(f"that camera is already camera {dup.id} ({dup.name})")
    blob = sealer.seal(target.password, stream_url.encode()) if target.password is not None else None
    cam = store.add_camera(
        name=name
        or " ".join(x for x in (report.manufacturer, report.model) if x)
        or _default_name(stream_url),
        url=stream_url,
        username=target.username,
        password_blob=blob,
        max_age_s=max_age_s,
        now_utc_ns=now_utc_ns,
        maker=report.manufacturer,
        model=report.model,
        serial=report.serial,
        firmware=report.firmware,
        onvif_url=target.url,
        sub_url=_without_userinfo(sub.stream_uri) if sub is not None and sub.stream_uri else None,
        snapshot_url=main.snapshot_uri,
    )
    _log_added(store, cam, now_utc_ns)
    return cam


# The camera row and its audit entry are two transactions: a crash between them leaves a camera whose
# addition is not logged (never an entry for a camera that does not exist). The same holds for change().
def _log_added(store: Store, cam: Camera, now_utc_ns: int) -> None:
    details = {"name": cam.name, "url": redact_url(cam.url), "consent": cam.consent}
    if cam.onvif_url:
        details |= {"onvif_url": cam.onvif_url, "maker": cam.maker or "", "model": cam.model or ""}
    AuditLog(store).log(
        Event("camera.added", cli_actor(), cameras=(cam.id,), details=details), now_utc_ns=now_utc_ns
    )


def remove(store: Store, camera_id: int, *, now_utc_ns: int) -> Camera:
    """Stop recording it (its footage stays until retention deletes it); logged."""
    cam = store.remove_camera(camera_id, now_utc_ns=now_utc_ns)
    AuditLog(store).log(
        Event("camera.removed", cli_actor(), cameras=(cam.id,), details={"name": cam.name}),
        now_utc_ns=now_utc_ns,
    )
    return cam


# The consent level and the owner's limits on police access: changes to these are consent changes.
CONSENT_FIELDS = ("radius_m", "allow_live", "max_session_s", "max_lookback_s", "hourly_quota")


def change(
    store: Store, camera_id: int, changes: dict[str, object], *, now_utc_ns: int
) -> tuple[Camera, Camera]:
    """Apply ``changes`` (see Store.update_camera); consent and limit changes are their own audit event."""
    before, after = store.update_camera(camera_id, **changes)
    changed = {k for k in changes if getattr(before, k) != getattr(after, k)}
    consent: dict[str, object] = {}
    if "consent" in changed:
        consent |= {"from": before.consent, "to": after.consent}
    consent |= {
        k: [_jsonable(getattr(before, k)), _jsonable(getattr(after, k))]
        for k in CONSENT_FIELDS
        if k in changed
    }
    other = {k: _jsonable(getattr(after, k)) for k in sorted(changed - {"consent", *CONSENT_FIELDS})}
    actor = cli_actor()
    events = [Event("consent.changed", actor, cameras=(camera_id,), details=consent)] if consent else []
    if other:
        events.append(Event("camera.changed", actor, cameras=(camera_id,), details=other))
    if events:
        AuditLog(store).append(events, now_utc_ns=now_utc_ns)
    return before, after


def describe_change(before: Camera, after: Camera) -> list[str]:
    """One line per field that changed, for people (the CLI now, the owner's page later)."""
    changed = [(f.name, getattr(before, f.name), getattr(after, f.name)) for f in fields(Camera)]
    lines = [
        f"camera {after.id}: {k} {_or_dash(old)} -> {_or_dash(new)}" for k, old, new in changed if old != new
    ]
    return lines or [f"camera {after.id}: unchanged"]


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _jsonable(value: object) -> object:
    # RFC 8785 numbers are IEEE doubles; coordinates go in as text so they read back exactly as set.
    return repr(value) if isinstance(value, float) else value


def _without_userinfo(url: str) -> str:
    # Some firmwares put the account into the URI they hand out; the recorder gets it from the sealed blob.
    parts = urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    return parts.geturl()


def _default_name(url: str) -> str:
    return urlsplit(url).hostname or "camera"
