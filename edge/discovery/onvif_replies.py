"""Pure readers of what an ONVIF camera answers: elements or zeep objects in, clean values out, no I/O.

Two kinds: the Media2 replies we parse by hand (:func:`media2_response`, :func:`media2_fault`,
:func:`parse_media2_profiles`; the calls themselves are :func:`edge.discovery.onvif_soap.media2_call`), and
the cleaners every field a camera sends goes through before it reaches a report — printable, length-capped
text, plausible dimensions and frame rates, URIs of the schemes we use — plus the reading of faults and of the
camera's clock. A firmware's nonsense becomes ``None`` here, never an exception further up.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element

from zeep.exceptions import Fault

# Fault codes that mean "who are you?" (ONVIF ter:NotAuthorized; WS-Security 1.1's own codes).
_AUTH_FAULTS: Final = frozenset(
    {"NotAuthorized", "FailedAuthentication", "InvalidSecurity", "InvalidSecurityToken", "FailedCheck"}
)


# --- Media2 by hand --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Media2Profile:
    token: str
    name: str | None
    encoding: str | None
    width: int | None
    height: int | None
    fps: float | None


def media2_response(root: Element, op: str, status: int) -> Element:
    """The ``<op>Response`` element of a SOAP envelope; zeep's :class:`Fault` for a SOAP fault (1.2 or 1.1),
    so that hand-written and zeep calls fail alike; :class:`ValueError` for anything else."""
    body = child(root, "Body")
    first = next(iter(body), None) if body is not None else None
    if first is None:
        raise ValueError(f"HTTP {status}: an empty SOAP body")
    if local_name(first.tag) == "Fault":
        raise media2_fault(first)
    if status != 200 or local_name(first.tag) != f"{op}Response":
        raise ValueError(f"HTTP {status}: {local_name(first.tag)[:64]} instead of {op}Response")
    return first


def media2_fault(fault: Element) -> Fault:
    code_el = child(fault, "Code")
    if code_el is None:  # SOAP 1.1
        return _fault(child_text(fault, "faultstring"), child_text(fault, "faultcode"), [])
    subcodes: list[str] = []
    sub = child(code_el, "Subcode")
    while sub is not None and len(subcodes) < 8:
        subcodes.append(child_text(sub, "Value") or "")
        sub = child(sub, "Subcode")
    return _fault(child_text(child(fault, "Reason"), "Text"), child_text(code_el, "Value"), subcodes)


def _fault(reason: str | None, code: str | None, subcodes: list[str]) -> Fault:
    return Fault(reason or "", code=code, subcodes=subcodes)  # type: ignore[no-untyped-call]


def parse_media2_profiles(response: Element) -> list[Media2Profile]:
    """``tr2:GetProfilesResponse`` → profiles (those without a token skipped). Namespaces are matched
    loosely (local names): firmwares get them wrong more often than the element names."""
    found = []
    for el in response:
        token = clean_text(el.get("token"))
        if local_name(el.tag) != "Profiles" or token is None:
            continue
        encoder = child_path(el, "Configurations", "VideoEncoder")
        found.append(
            Media2Profile(
                token=token,
                name=clean_text(child_text(el, "Name")),
                encoding=clean_text(child_text(encoder, "Encoding"), 32),
                width=dimension(child_text(child_path(encoder, "Resolution"), "Width")),
                height=dimension(child_text(child_path(encoder, "Resolution"), "Height")),
                fps=frame_rate(child_text(child_path(encoder, "RateControl"), "FrameRateLimit")),
            )
        )
    return found


# --- elements, faults, the clock -------------------------------------------------------------------------


def items(value: object) -> list[Any]:
    """A zeep list answer as a list, whatever shape a firmware gave it."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def local_name(tag: object) -> str:
    """``{ns}Name``, ``prefix:Name`` or a QName → ``Name``."""
    return str(tag).rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def child(el: Element | None, local: str) -> Element | None:
    if el is None:
        return None
    return next((c for c in el if local_name(c.tag) == local), None)


def child_path(el: Element | None, *locals_: str) -> Element | None:
    for local in locals_:
        el = child(el, local)
    return el


def child_text(el: Element | None, local: str) -> str | None:
    found = child(el, local)
    return found.text if found is not None else None


def is_auth_fault(fault: Fault) -> bool:
    codes = [fault.code, *(fault.subcodes or [])]
    return any(local_name(c) in _AUTH_FAULTS for c in codes if c is not None)


def fault_text(fault: Fault) -> str:
    codes = "/".join(local_name(c) for c in [fault.code, *(fault.subcodes or [])] if c)
    reason = " ".join(str(fault.message or "").split())[:160]
    return ": ".join(x for x in (codes, reason) if x) or "a SOAP fault"


def clock_offset_s(reply: Any, local_mid_s: float) -> float | None:
    """Camera clock minus ours, from GetSystemDateAndTime's UTCDateTime (None without one). The camera
    counts whole seconds, so its clock is on average half a second past what it says."""
    try:
        utc = reply.UTCDateTime
        d, t = utc.Date, utc.Time
        camera = dt.datetime(
            int(d.Year), int(d.Month), int(d.Day), int(t.Hour), int(t.Minute), int(t.Second), tzinfo=dt.UTC
        )
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    return camera.timestamp() + 0.5 - local_mid_s


# --- field cleaners --------------------------------------------------------------------------------------


def clean_text(value: object, limit: int = 256) -> str | None:
    if value is None:
        return None
    text = printable(" ".join(str(value).split()))[:limit]
    return text or None


def printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable())


def dimension(value: object) -> int | None:
    try:
        n = int(str(value))
    except ValueError:
        return None
    return n if 0 < n <= 16384 else None


def frame_rate(value: object) -> float | None:
    try:
        n = float(str(value))
    except ValueError:
        return None
    return n if 0 < n <= 1000 else None


def clean_uri(value: object) -> str | None:
    text = clean_text(value, 2048)
    if text is None or " " in text:
        return None
    try:
        parts = urlsplit(text)
        ok = parts.scheme.lower() in ("rtsp", "rtsps", "http", "https") and bool(parts.hostname)
    except ValueError:
        return None
    return text if ok else None
