"""What an emergency access request says, once verified: the types shared by the request verifier
(:mod:`edge.uplink.request`), the owner's consent decision (:mod:`edge.consent`) and the uplink.

The wire format and every limit are specified in docs/protocol.md; the constants here are those limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

MAX_TOKEN_BYTES: Final = 8192
CLOCK_SKEW_S: Final = 60
MAX_LIFETIME_S: Final = 300  # exp - iat
NONCE_TTL_S: Final = 120
MAX_DUR_S: Final = 3600  # no request, and no owner, may ask for a longer session
MAX_CAMERAS: Final = 16
MIN_JTI_BYTES: Final = 16  # 128 random bits
TYP: Final = "edge-access+jwt"
ALG: Final = "Ed25519"  # RFC 9864: the fully specified algorithm name; "EdDSA" is refused
REASONS: Final = ("threat_to_life", "violent_crime", "missing_person", "crime_in_progress", "public_safety")

Mode = Literal["live", "recorded"]


@dataclass(frozen=True)
class Scope:
    cameras: tuple[int, ...]
    mode: Mode
    from_s: int | None = None  # recorded only: Unix seconds
    to_s: int | None = None


@dataclass(frozen=True)
class Incident:
    """Where the emergency is: access is promised only near the camera."""

    lat: float
    lon: float
    kind: str


@dataclass(frozen=True)
class AccessRequest:
    """A request whose signature, header and claims have been verified (not yet its nonce, jti or policy)."""

    token: str  # the compact JWS as received, for the audit log
    kid: str
    iss: str
    aud: str
    jti: str
    iat: int
    nbf: int
    exp: int
    sub: str
    case: str
    reason: str
    scope: Scope
    max_dur: int
    incident: Incident
    viewer_key: bytes  # raw 32-byte X25519 public key
    dev_nonce: str
