"""The simulated cameras' credential checks, verdicts only (what to answer is onvif_http.py's).

HTTP Digest per RFC 7616 as cameras speak it (MD5, qop=auth): the nonces a camera handed out are remembered,
an unknown nonce with the right password is stale, a repeated nc is a replay. WS-Security UsernameToken with
PasswordDigest only, its ``Created`` checked against the camera's clock (real clock + ``clock_offset_s``,
within ±5 s).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
from xml.etree.ElementTree import Element

from tests.peers.onvif_discovery import Camera
from tests.peers.onvif_shapes import WSSE, WSU

PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest"
)
CLOCK_TOLERANCE_S = 5.0

log = logging.getLogger("onvif_camera")

_DIGEST_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))')


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()  # HTTP Digest MD5: what cameras speak


def digest_challenge(cam: Camera, stale: bool = False) -> str:
    """A fresh HTTP Digest challenge (WWW-Authenticate value); its nonce is remembered for the checks."""
    nonce = secrets.token_hex(16)
    cam.nonces[nonce] = set()
    while len(cam.nonces) > 512:
        cam.nonces.popitem(last=False)
    st = ", stale=TRUE" if stale else ""
    return f'Digest realm="{cam.realm}", qop="auth", nonce="{nonce}", algorithm=MD5{st}'


def check_digest(cam: Camera, authorization: str | None, method: str, raw_uri: str) -> tuple[str, bool]:
    """-> ("ok" | "absent" | "bad", stale)."""
    if not authorization or not authorization.lower().startswith("digest "):
        return "absent", False
    p = {m[1].lower(): (m[2] if m[2] is not None else m[3]) for m in _DIGEST_PARAM.finditer(authorization)}
    try:
        user, nonce, uri, nc_s = p["username"], p["nonce"], p["uri"], p["nc"]
        cnonce, qop, response, realm = p["cnonce"], p["qop"], p["response"], p["realm"]
        nc = int(nc_s, 16)
    except (KeyError, ValueError):
        return "bad", False
    if p.get("algorithm", "MD5").upper() != "MD5" or qop != "auth" or realm != cam.realm:
        return "bad", False
    if user != cam.spec.user or uri != raw_uri:
        return "bad", False
    ha1 = _md5(f"{cam.spec.user}:{cam.realm}:{cam.spec.password}")
    ha2 = _md5(f"{method}:{uri}")
    expected = _md5(f"{ha1}:{nonce}:{nc_s}:{cnonce}:{qop}:{ha2}")
    if not hmac.compare_digest(expected, response.lower()):
        return "bad", False
    seen = cam.nonces.get(nonce)
    if seen is None:
        return "bad", True  # right password, nonce we never gave (or forgot): stale
    if nc in seen:
        return "bad", False  # replay
    seen.add(nc)
    return "ok", False


def check_wsse(cam: Camera, header: Element | None) -> str:
    """-> "ok" | "absent" | "bad" for the WS-Security UsernameToken (PasswordDigest only)."""
    sec = header.find(f"{{{WSSE}}}Security") if header is not None else None
    tok = sec.find(f"{{{WSSE}}}UsernameToken") if sec is not None else None
    if tok is None:
        return "absent"
    pw = tok.find(f"{{{WSSE}}}Password")
    nonce_text = tok.findtext(f"{{{WSSE}}}Nonce")
    created = tok.findtext(f"{{{WSU}}}Created") or tok.findtext(f"{{{WSSE}}}Created")
    user = tok.findtext(f"{{{WSSE}}}Username")
    if pw is None or nonce_text is None or created is None or user != cam.spec.user:
        return "bad"
    if pw.get("Type", PASSWORD_DIGEST) != PASSWORD_DIGEST:
        return "bad"  # PasswordText: not on this camera
    try:
        nonce = base64.b64decode(nonce_text.strip(), validate=True)
        when = dt.datetime.fromisoformat(created.strip())
    except ValueError:
        return "bad"
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    skew = abs((when - cam.now()).total_seconds())
    if skew > CLOCK_TOLERANCE_S:
        log.info("%s: WS-Security Created is %.1f s off the camera clock", cam.spec.ip, skew)
        return "bad"
    digest = base64.b64encode(
        hashlib.sha1(nonce + created.strip().encode() + cam.spec.password.encode()).digest()
    ).decode()
    return "ok" if hmac.compare_digest(digest, (pw.text or "").strip()) else "bad"
