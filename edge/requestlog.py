"""What police asked of this box, read back from the audit log: one record per request, with its outcome and
the sessions it led to.

The audit log is the only record (nothing else to keep in step): ``request.received`` carries the officer,
case, reason and the raw token; ``request.accepted``/``request.refused`` the decision;
``session.started``/``session.ended`` what was sent. A **notice** is a request refused ``not_integrated``:
police asked about a camera the owner registered but did not open; the owner may answer it by sharing a clip
by hand (``edge share``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.audit import AuditLog


@dataclass
class RequestRecord:
    jti: str
    utc_ns: int
    cameras: tuple[int, ...]
    officer: str | None = None
    case: str | None = None
    reason: str | None = None
    mode: str | None = None
    incident: str | None = None
    token: str | None = None  # the raw JWS as received (None if it was oversized)
    outcome: str | None = None  # "accepted" | "refused"
    code: str | None = None
    camera: int | None = None  # the camera the refusal is about, when it is about one
    sessions: list[dict[str, Any]] = field(default_factory=list)  # session.ended details, per camera

    @property
    def notice(self) -> bool:
        return self.outcome == "refused" and self.code == "not_integrated"

    def to_json(self) -> dict[str, Any]:
        return {
            "jti": self.jti, "utc_ns": self.utc_ns, "cameras": list(self.cameras), "officer": self.officer,
            "case": self.case, "reason": self.reason, "mode": self.mode, "incident": self.incident,
            "outcome": self.outcome, "code": self.code, "camera": self.camera, "notice": self.notice,
            "sessions": self.sessions,
        }  # fmt: skip


def requests(audit: AuditLog, *, since_utc_ns: int | None = None) -> list[RequestRecord]:
    """Every request in the log (oldest first), with its outcome and ended sessions."""
    records: dict[str, RequestRecord] = {}
    types = ("request", "session")
    for e in audit.entries(since_utc_ns=since_utc_ns, types=types):
        if e.request is None:
            continue
        rec = records.get(e.request)
        if e.type == "request.received":
            d = e.details
            incident = d.get("incident")
            records[e.request] = RequestRecord(
                jti=e.request, utc_ns=e.utc_ns, cameras=e.cameras, officer=d.get("sub"), case=d.get("case"),
                reason=d.get("reason"), mode=d.get("mode"),
                incident=incident.get("kind") if isinstance(incident, dict) else None, token=d.get("jws"),
            )  # fmt: skip
        elif rec is None:
            continue
        elif e.type in ("request.accepted", "request.refused"):
            rec.outcome = e.type.split(".")[1]
            rec.code = e.details.get("code")
            rec.camera = e.details.get("camera")
        elif e.type == "session.ended":
            rec.sessions.append({"camera": e.cameras[0] if e.cameras else None, **e.details})
    return list(records.values())


def find(audit: AuditLog, jti: str) -> RequestRecord | None:
    return next((r for r in requests(audit) if r.jti == jti), None)
