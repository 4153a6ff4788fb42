"""Box-wide owner settings: the contact sent with the hub registry, and the kill switch.

The kill switch is the owner's "stop everything now": while it is engaged every access request is refused
(``killswitch``) whatever each camera's consent says, and the daemon ends open sessions. Engaging and
releasing it are audit-logged; so is a change of contact.
"""

from __future__ import annotations

import re

from edge.audit import AuditLog, Event
from edge.errors import Malformed
from edge.store import Store

KILLSWITCH = "killswitch_utc_ns"
EMAIL = "owner_email"
PHONE = "owner_phone"
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}")
_PHONE = re.compile(r"\+?[0-9 ()-]{5,32}")


def killswitch_engaged(store: Store) -> int | None:
    """When it was engaged (UTC ns), or None."""
    value = store.setting(KILLSWITCH)
    return int(value) if value is not None else None


def set_killswitch(store: Store, engaged: bool, *, actor: str, now_utc_ns: int) -> bool:
    """Engage or release; returns whether anything changed (and only then logs)."""
    if (killswitch_engaged(store) is not None) == engaged:
        return False
    store.set_setting(KILLSWITCH, str(now_utc_ns) if engaged else None)
    AuditLog(store).log(Event("killswitch", actor, details={"engaged": engaged}), now_utc_ns=now_utc_ns)
    return True


def contact(store: Store) -> dict[str, str | None]:
    return {"email": store.setting(EMAIL), "phone": store.setting(PHONE)}


def set_contact(store: Store, *, email: str | None, phone: str | None, actor: str, now_utc_ns: int) -> None:
    """``""`` clears a field, ``None`` leaves it. Sent with the registry, so only what the owner typed."""
    if email and not _EMAIL.fullmatch(email):
        raise Malformed(f"not an e-mail address: {email[:60]!r}")
    if phone and not _PHONE.fullmatch(phone):
        raise Malformed(f"not a phone number: {phone[:60]!r}")
    before = contact(store)
    for key, value in ((EMAIL, email), (PHONE, phone)):
        if value is not None:
            store.set_setting(key, value or None)
    after = contact(store)
    if after != before:
        AuditLog(store).log(Event("owner.changed", actor, details=dict(after)), now_utc_ns=now_utc_ns)
