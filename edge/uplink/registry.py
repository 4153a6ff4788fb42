"""The registry document (docs/protocol.md §4.1): what the box tells its hub about the cameras it shares.

Only *registered* and *integrated* cameras that are active go in, never private ones, with the owner's
contact; the document is signed by the device key like the decision message (Ed25519 over the RFC 8785 JSON
of the object without ``sig``, base64url). Its ``version`` is strictly increasing per box (the Unix ms time of
the build, kept monotonic by a settings row, so a clock that steps back never makes a new document look old).

:func:`build` is the box's (it reads the store, on the store's thread); :func:`verify` is the hub's and, like
the rest of this module, needs none of the box's state, so the reference hub may import it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import jws
from edge.errors import Error
from edge.identity import DeviceIdentity

if TYPE_CHECKING:
    from edge.store import Camera, Store

TYPE: Final = "registry"
MEMBERS: Final = frozenset({"type", "device_id", "version", "cameras", "owner_contact", "sig"})
CAMERA_MEMBERS: Final = frozenset({"id", "name", "location", "lat", "lon", "consent"})
CONTACT_MEMBERS: Final = frozenset({"email", "phone"})
SHARED: Final = ("registered", "integrated")  # never "private"
MAX_VERSION: Final = 2**53 - 1  # exact in every JSON reader
MAX_CAMERAS: Final = 256
MAX_TEXT_CHARS: Final = 1024  # names and locations are the owner's free text: the hub escapes them
VERSION_SETTING: Final = "registry_version"
LOGGED_SETTING: Final = "registry_logged_sha256"


class RegistryError(Error):
    """A registry document that is not well formed or not signed by the device; the message says why."""

    kind = "registry"


@dataclass(frozen=True)
class SharedCamera:
    id: int
    name: str
    location: str | None
    lat: float | None
    lon: float | None
    consent: str


@dataclass(frozen=True)
class Registry:
    """A verified document, and the document itself (as received, ``sig`` included)."""

    device_id: str
    version: int
    cameras: tuple[SharedCamera, ...]
    owner_contact: Mapping[str, str | None] | None
    doc: Mapping[str, Any]

    @property
    def canonical(self) -> bytes:
        return rfc8785.dumps(dict(self.doc))


# --- the box's side -----------------------------------------------------------------------------------------


def build(store: Store, identity: DeviceIdentity, *, now_utc_ns: int) -> dict[str, Any]:
    """The signed document for the cameras shared now; takes the next version (a settings row)."""
    from edge import owner  # the box's state: imported here so the hub can import this module without it

    cameras = [_entry(c) for c in store.cameras() if c.active and c.consent in SHARED]
    contact = owner.contact(store)
    last = int(store.setting(VERSION_SETTING) or 0)
    version = max(now_utc_ns // 1_000_000, last + 1)
    store.set_setting(VERSION_SETTING, str(version))
    body: dict[str, Any] = {
        "type": TYPE,
        "device_id": identity.public.device_id,
        "version": version,
        "cameras": sorted(cameras, key=lambda c: int(c["id"])),
        "owner_contact": contact if any(v is not None for v in contact.values()) else None,
    }
    return sign(body, identity)


def sign(body: Mapping[str, Any], identity: DeviceIdentity) -> dict[str, Any]:
    """``body`` (without ``sig``) with the device key's signature over its RFC 8785 JSON."""
    return dict(body) | {"sig": jws.b64url_encode(identity.sign(rfc8785.dumps(dict(body))))}


def content_sha256(doc: Mapping[str, Any]) -> str:
    """Hex SHA-256 of what the document says (RFC 8785 without ``version`` and ``sig``): equal for two builds
    that share the same cameras with the same contact."""
    body = {k: v for k, v in doc.items() if k not in {"version", "sig"}}
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


def doc_sha256(doc: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the document as signed and sent (RFC 8785, ``sig`` included)."""
    return hashlib.sha256(rfc8785.dumps(dict(doc))).hexdigest()


def should_log(store: Store, doc: Mapping[str, Any]) -> bool:
    """Whether ``doc`` says something the last logged registry did not; if so, remembers it as logged. Call
    it just before appending ``registry.sent`` (details: :func:`audit_details`), on the store's thread."""
    digest = content_sha256(doc)
    if store.setting(LOGGED_SETTING) == digest:
        return False
    store.set_setting(LOGGED_SETTING, digest)
    return True


def audit_details(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``registry.sent`` details: the version, the camera ids, and the SHA-256 of the signed document."""
    return {
        "version": doc["version"],
        "cameras": [c["id"] for c in doc["cameras"]],
        "sha256": doc_sha256(doc),
    }


def _entry(camera: Camera) -> dict[str, Any]:
    return {
        "id": camera.id,
        "name": camera.name,
        "location": camera.location,
        "lat": camera.lat,
        "lon": camera.lon,
        "consent": camera.consent,
    }


# --- the hub's side -----------------------------------------------------------------------------------------


def verify(doc: Mapping[str, Any], device_key: bytes, device_id: str) -> Registry:
    """Check, in order: the members, the device id (the connection's), the signature under ``device_key``,
    then every field; :class:`RegistryError` otherwise."""
    missing, extra = sorted(MEMBERS - doc.keys()), sorted(doc.keys() - MEMBERS)
    if missing:
        raise RegistryError(f"the registry lacks {', '.join(missing)}")
    if extra:
        raise RegistryError(f"the registry has an unknown member {jws.show(extra[0])}")
    if doc["type"] != TYPE:
        raise RegistryError("not a registry")
    if doc["device_id"] != device_id:
        raise RegistryError("the registry names another device")
    sig = jws.b64url_decode(doc["sig"]) if isinstance(doc["sig"], str) else None
    body = {k: v for k, v in doc.items() if k != "sig"}
    try:
        if sig is None or len(sig) != 64:
            raise InvalidSignature
        Ed25519PublicKey.from_public_bytes(device_key).verify(sig, rfc8785.dumps(body))
    except (InvalidSignature, ValueError, TypeError, rfc8785.CanonicalizationError):
        raise RegistryError("the registry's signature does not verify") from None
    # Signed by the box from here on: what is left catches a broken box, not a forger.
    version = doc["version"]
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise RegistryError(f"version must be an integer 1..{MAX_VERSION}")
    return Registry(
        device_id=device_id,
        version=version,
        cameras=_cameras(doc["cameras"]),
        owner_contact=_contact(doc["owner_contact"]),
        doc=doc,
    )


def _cameras(value: object) -> tuple[SharedCamera, ...]:
    if not isinstance(value, list) or len(value) > MAX_CAMERAS:
        raise RegistryError(f"cameras must be an array of at most {MAX_CAMERAS}")
    out: list[SharedCamera] = []
    for item in value:
        if not isinstance(item, dict) or item.keys() != CAMERA_MEMBERS:
            raise RegistryError(f"each camera is exactly {{{', '.join(sorted(CAMERA_MEMBERS))}}}")
        cam_id, consent = item["id"], item["consent"]
        if type(cam_id) is not int or cam_id < 1 or (out and cam_id <= out[-1].id):
            raise RegistryError("camera ids must be positive integers, unique and in ascending order")
        if consent not in SHARED:
            raise RegistryError(f"camera {cam_id}: consent must be registered or integrated")
        lat, lon = _coordinate(item["lat"], 90.0, cam_id), _coordinate(item["lon"], 180.0, cam_id)
        if (lat is None) != (lon is None):
            raise RegistryError(f"camera {cam_id}: lat and lon go together")
        name = _text(item["name"], cam_id, "name")
        if name is None:
            raise RegistryError(f"camera {cam_id}: name must be a string")
        out.append(SharedCamera(cam_id, name, _text(item["location"], cam_id, "location"), lat, lon, consent))
    return tuple(out)


def _coordinate(value: object, limit: float, cam_id: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RegistryError(f"camera {cam_id}: lat and lon must be numbers or null")
    if not math.isfinite(value) or abs(value) > limit:
        raise RegistryError(f"camera {cam_id}: lat/lon out of range")
    return float(value)


def _text(value: object, cam_id: int, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise RegistryError(f"camera {cam_id}: {what} must be a string of at most {MAX_TEXT_CHARS} chars")
    return value


def _contact(value: object) -> dict[str, str | None] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.keys() != CONTACT_MEMBERS:
        raise RegistryError('owner_contact must be null or exactly {"email", "phone"}')
    for key in sorted(CONTACT_MEMBERS):
        if value[key] is not None and (not isinstance(value[key], str) or len(value[key]) > MAX_TEXT_CHARS):
            raise RegistryError(f"owner_contact.{key} must be null or a string")
    return {"email": value["email"], "phone": value["phone"]}
