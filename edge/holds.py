"""Legal holds: footage of a police session or an owner's share that retention must keep.

A hold names one camera, a wall-time range [from_utc_ns, to_utc_ns], why (``session`` or ``share``) and the
access request (its ``jti``) it belongs to. A segment is held while an *active* hold on its camera overlaps
it (its [start, end] meets the range); the ring buffer (edge/recorder/ringbuffer.py) never deletes a held
segment, and the store's delete step re-checks it in the same statement, so a hold placed while retention
runs still wins. Only the owner releases a hold (``edge hold release``); the next retention pass may then
delete the footage like any other.

Placing and releasing are audit-logged (``hold.placed``, ``hold.released``). A live session's range grows as
footage is sent (:func:`extend`); extensions are not logged one by one: the final range is in
``hold.released`` and in the session's own entries.

The hold row and its audit entry are two transactions (the audit log keeps its own). The order keeps
footage on a crash between them: a hold is stored before ``hold.placed`` is logged, and ``hold.released`` is
logged before the hold is released.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from edge.audit import AuditLog, Event
from edge.errors import Malformed, NotFound
from edge.store import Store

Reason = Literal["session", "share"]
REASONS: tuple[Reason, ...] = get_args(Reason)
MAX_REQUEST_CHARS = 256  # a jti is a short random string; this only keeps junk out of the table and the log
_MAX_NS = (1 << 63) - 1  # SQLite's INTEGER

_SELECT = (
    "SELECT id, camera_id, from_utc_ns, to_utc_ns, reason, request, placed_by, placed_utc_ns, released_by,"
    " released_utc_ns FROM holds"
)


@dataclass(frozen=True)
class Hold:
    id: int
    camera_id: int
    from_utc_ns: int
    to_utc_ns: int
    reason: Reason
    request: str  # the access request's jti
    placed_by: str  # an audit actor: "daemon", "cli:<user>", …
    placed_utc_ns: int
    released_by: str | None
    released_utc_ns: int | None

    @property
    def active(self) -> bool:
        return self.released_utc_ns is None

    def covers(self, camera_id: int, start_utc_ns: int, end_utc_ns: int) -> bool:
        """Whether this hold keeps footage of ``camera_id`` spanning [start, end]."""
        return (
            self.active
            and camera_id == self.camera_id
            and self.from_utc_ns <= end_utc_ns
            and self.to_utc_ns >= start_utc_ns
        )


def place(
    store: Store,
    *,
    camera_id: int,
    from_utc_ns: int,
    to_utc_ns: int,
    reason: Reason,
    request: str,
    actor: str,
    now_utc_ns: int,
) -> Hold:
    """Hold a camera's footage of [from, to]; logs ``hold.placed``. The camera may have been removed since:
    its footage is still on disk and still evidence. Raises NotFound for a camera that never existed."""
    if reason not in REASONS:
        raise Malformed(f"a hold's reason is one of {', '.join(REASONS)}, not {reason!r}")
    if not 0 <= from_utc_ns <= to_utc_ns <= _MAX_NS:
        raise Malformed(f"a hold's range must run forwards: [{from_utc_ns}, {to_utc_ns}]")
    if not request or len(request) > MAX_REQUEST_CHARS or not request.isprintable():
        raise Malformed("a hold needs the request id (jti) it belongs to")
    store.camera(camera_id)  # NotFound, with the store's message
    with store.transaction() as c:
        cur = c.execute(
            "INSERT INTO holds (camera_id, from_utc_ns, to_utc_ns, reason, request, placed_by, placed_utc_ns)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (camera_id, from_utc_ns, to_utc_ns, reason, request, actor, now_utc_ns),
        )
        assert cur.lastrowid is not None
        hold_id = cur.lastrowid
    hold = get(store, hold_id)
    AuditLog(store).log(
        Event(
            "hold.placed",
            actor,
            cameras=(camera_id,),
            request=request,
            details={"hold": hold.id, "reason": reason, "from": str(from_utc_ns), "to": str(to_utc_ns)},
        ),
        now_utc_ns=now_utc_ns,
    )
    return hold


def extend(store: Store, hold_id: int, to_utc_ns: int) -> Hold:
    """Grow an active hold's range to ``to_utc_ns`` (never shrinks it); not logged (see the module docs).

    A released hold stays released: the owner's release is not undone by a session still sending, and the
    returned hold (``active`` False) tells the caller so. Raises NotFound for an unknown id.
    """
    if not 0 <= to_utc_ns <= _MAX_NS:
        raise Malformed(f"not a time: {to_utc_ns}")
    with store.transaction() as c:
        c.execute(
            "UPDATE holds SET to_utc_ns = MAX(to_utc_ns, ?) WHERE id = ? AND released_utc_ns IS NULL",
            (to_utc_ns, hold_id),
        )
    return get(store, hold_id)


def release(
    store: Store, which: Sequence[int] | Literal["all"], *, actor: str, now_utc_ns: int
) -> list[Hold]:
    """Release the holds ``which`` names (or every active one); each is logged as ``hold.released``.

    Returns the holds this call released, as released. Ids already released are left as they are (and not
    logged again). An unknown id raises NotFound before anything is released.
    """
    if which == "all":
        targets = active(store)
    else:
        found = {i: _select(store, _SELECT + " WHERE id = ?", (i,)) for i in dict.fromkeys(which)}
        missing = [str(i) for i, rows in found.items() if not rows]
        if missing:
            raise NotFound(f"no hold with id {', '.join(missing)}")
        targets = [rows[0] for rows in found.values() if rows[0].active]
    if not targets:
        return []
    # Logged first: a crash in between leaves a hold still keeping footage, never footage freed unlogged.
    AuditLog(store).append(
        [
            Event(
                "hold.released",
                actor,
                cameras=(h.camera_id,),
                request=h.request,
                details={
                    "hold": h.id,
                    "reason": h.reason,
                    "from": str(h.from_utc_ns),
                    "to": str(h.to_utc_ns),
                    "placed": str(h.placed_utc_ns),
                    "placed_by": h.placed_by,
                },
            )
            for h in targets
        ],
        now_utc_ns=now_utc_ns,
    )
    with store.transaction() as c:
        c.executemany(
            "UPDATE holds SET released_by = ?, released_utc_ns = ? WHERE id = ? AND released_utc_ns IS NULL",
            [(actor, now_utc_ns, h.id) for h in targets],
        )
    return [get(store, h.id) for h in targets]


def get(store: Store, hold_id: int) -> Hold:
    rows = _select(store, _SELECT + " WHERE id = ?", (hold_id,))
    if not rows:
        raise NotFound(f"no hold with id {hold_id}")
    return rows[0]


def active(store: Store) -> list[Hold]:
    """Holds in force, oldest first."""
    return _select(store, _SELECT + " WHERE released_utc_ns IS NULL ORDER BY id")


def every(store: Store) -> list[Hold]:
    """Every hold ever placed, released ones included, oldest first."""
    return _select(store, _SELECT + " ORDER BY id")


def _select(store: Store, sql: str, args: Sequence[object] = ()) -> list[Hold]:
    return [_hold(r) for r in store.query(sql, args)]


def _hold(row: Sequence[Any]) -> Hold:
    return Hold(*row)
