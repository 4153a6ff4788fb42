"""The audit log: every request, decision and access as an append-only, Merkle-hashed list of entries, with
checkpoints signed by the device key.

An entry is a JSON object canonicalised by RFC 8785 (the ``rfc8785`` package); those canonical bytes are what
is stored and what is hashed, so verification never re-serialises anything::

    {"actor":"cli:root","cameras":[3],"details":{"url":"rtsp://…"},"request":null,"seq":17,
     "time":"1795250000123456789","type":"camera.added","v":1}

``time`` is UTC nanoseconds as a decimal string (RFC 8785 refuses integers beyond 2^53 - 1). ``seq`` is the
entry's index in the log, inside the hashed bytes so that a moved entry names itself. The leaf hash is
SHA-256(0x00 ‖ entry) and the tree is RFC 6962/9162 (:mod:`edge.merkle`). Appending is incremental: each
batch reads the tree's frontier (O(log n) stored subtree hashes) inside its write transaction, so the CLI and
the daemon can both append without either holding the tree in memory.

Root on the box holds the device key and can rewrite everything consistently; what makes that show is a
checkpoint kept off the box (the owner's download, or the hub's co-signed copy). Verification therefore
recomputes everything from the entries and checks it against every checkpoint and a trusted one.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import rfc8785

from edge import checkpoint, merkle
from edge.errors import Malformed
from edge.identity import DeviceIdentity, PublicIdentity
from edge.store import Store

ENTRY_VERSION: Final = 1
# The fixed list. A new kind of event is a code change (and a line in docs/audit.md), never free text.
EVENT_TYPES: Final = frozenset(
    {
        "request.received",
        "request.refused",
        "request.accepted",
        "session.started",
        "session.ended",
        "export.created",
        "consent.changed",
        "camera.added",
        "camera.removed",
        "camera.changed",
        "pairing.completed",
        "hub.keys.changed",
        "owner.login",
        "owner.login.failed",
        "killswitch",
        "owner.changed",
        "audit.exported",
        "hold.placed",
        "hold.released",
        "registry.sent",
    }
)
MAX_ENTRY_BYTES: Final = 64 * 1024  # a raw JWS is at most 8 KiB; details are small by construction
_WITH_LEAF: Final = "SELECT seq, entry, leaf FROM audit_entries WHERE seq >= ?"
_WITHOUT_LEAF: Final = "SELECT seq, entry, NULL FROM audit_entries WHERE seq >= ?"


@dataclass(frozen=True)
class Event:
    """What a module asks to log."""

    type: str
    actor: str
    cameras: tuple[int, ...] = ()
    request: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    seq: int
    utc_ns: int
    type: str
    actor: str
    cameras: tuple[int, ...]
    request: str | None
    details: dict[str, Any]
    raw: bytes  # the canonical bytes, as stored and hashed


def encode(seq: int, utc_ns: int, event: Event) -> bytes:
    if event.type not in EVENT_TYPES:
        raise Malformed(f"unknown audit event type {event.type!r}")
    obj: dict[str, Any] = {
        "v": ENTRY_VERSION,
        "seq": seq,
        "time": str(utc_ns),
        "type": event.type,
        "actor": event.actor,
        "cameras": list(event.cameras),
        "request": event.request,
        "details": dict(event.details),
    }
    try:
        raw = rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
        raise Malformed(f"audit event {event.type} cannot be canonicalised: {e}") from None
    if len(raw) > MAX_ENTRY_BYTES:
        raise Malformed(f"audit event {event.type} is {len(raw)} bytes (limit {MAX_ENTRY_BYTES})")
    return raw


def decode(raw: bytes) -> Entry:
    """Read an entry's fields (for showing it); its hash is always of ``raw`` itself."""
    try:
        obj = json.loads(raw)
        return Entry(
            seq=int(obj["seq"]),
            utc_ns=int(obj["time"]),
            type=str(obj["type"]),
            actor=str(obj["actor"]),
            cameras=tuple(int(c) for c in obj["cameras"]),
            request=obj["request"],
            details=dict(obj["details"]),
            raw=raw,
        )
    except (ValueError, KeyError, TypeError) as e:
        raise Malformed(f"not an audit entry: {e}") from None


def embedded_seq(raw: bytes) -> int | None:
    """The top-level ``seq`` without parsing the JSON (verification reads a million of these).

    In canonical JSON the keys are sorted and only ``time``, ``type`` and ``v`` (plain values) follow
    ``seq``, and ``,"seq":`` cannot occur inside a string (its quote would be escaped), so the last
    occurrence is the top-level one.
    """
    i = raw.rfind(b',"seq":')
    if i < 0:
        return None
    j = raw.find(b",", i + 7)
    try:
        return int(raw[i + 7 : j])
    except ValueError:
        return None


def cli_actor() -> str:
    try:
        return f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return f"cli:uid{os.geteuid()}"


class AuditLog:
    """The log in one :class:`Store`. Not thread-safe (like the store): one per thread."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- appending ------------------------------------------------------------------------------

    def append(self, events: Sequence[Event], *, now_utc_ns: int) -> list[int]:
        """Append in one transaction; returns the sequence numbers. Costs O(log n) reads plus the writes."""
        with self.store.transaction() as c:
            size = self._size(c)
            frontier = merkle.Frontier.load(size, lambda level, idx: self._node(c, level, idx))
            seqs, rows, nodes = [], [], []
            for i, event in enumerate(events):
                seq = size + i
                raw = encode(seq, now_utc_ns, event)
                leaf = merkle.leaf_hash(raw)
                nodes.extend(frontier.append(leaf))
                rows.append((seq, raw, leaf))
                seqs.append(seq)
            c.executemany("INSERT INTO audit_entries (seq, entry, leaf) VALUES (?, ?, ?)", rows)
            c.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
        return seqs

    def log(self, event: Event, *, now_utc_ns: int) -> int:
        return self.append([event], now_utc_ns=now_utc_ns)[0]

    @staticmethod
    def _size(c: Any) -> int:
        row = c.execute("SELECT MAX(seq) FROM audit_entries").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    @staticmethod
    def _node(c: Any, level: int, idx: int) -> bytes:
        if level == 0:
            row = c.execute("SELECT leaf FROM audit_entries WHERE seq = ?", (idx,)).fetchone()
        else:
            row = c.execute(
                "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, idx)
            ).fetchone()
        if row is None:
            raise Malformed(f"audit log: stored subtree ({level}, {idx}) is missing")
        return bytes(row[0])

    # --- reading --------------------------------------------------------------------------------

    def size(self) -> int:
        row = self.store.query("SELECT MAX(seq) FROM audit_entries")[0]
        return 0 if row[0] is None else int(row[0]) + 1

    def get_node(self, level: int, idx: int) -> bytes:
        if level == 0:
            rows = self.store.query("SELECT leaf FROM audit_entries WHERE seq = ?", (idx,))
        else:
            rows = self.store.query("SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, idx))
        if not rows:
            raise Malformed(f"audit log: stored subtree ({level}, {idx}) is missing")
        return bytes(rows[0][0])

    def root(self, size: int | None = None) -> bytes:
        size = self.size() if size is None else size
        return merkle.range_root(0, size, self.get_node) if size else merkle.EMPTY_ROOT

    def raw_entries(
        self, start: int = 0, end: int | None = None, *, leaves: bool = True
    ) -> Iterator[tuple[int, bytes, bytes | None]]:
        """(seq, canonical bytes, stored leaf hash or None) in order. ``leaves=False`` is the verifier's
        fast read: the stored hash only names an entry changed after the fact, and costs half the read."""
        sql = _WITH_LEAF if leaves else _WITHOUT_LEAF
        args: list[object] = [start]
        if end is not None:
            sql += " AND seq < ?"
            args.append(end)
        # sqlite3 gives INTEGER as int and BLOB as bytes already: no per-row conversion on this hot path.
        return self.store.iterate(sql + " ORDER BY seq", args, batch=16384)

    def entries(
        self, *, since_utc_ns: int | None = None, types: Sequence[str] = (), limit: int | None = None
    ) -> list[Entry]:
        out = []
        for _seq, raw, _leaf in self.raw_entries():
            entry = decode(raw)
            if since_utc_ns is not None and entry.utc_ns < since_utc_ns:
                continue
            if types and not any(entry.type == t or entry.type.startswith(t + ".") for t in types):
                continue
            out.append(entry)
        return out[-limit:] if limit else out

    def inclusion_proof(self, seq: int, size: int) -> list[bytes]:
        return merkle.inclusion_proof(seq, size, self.get_node)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return merkle.consistency_proof(old_size, new_size, self.get_node)

    # --- checkpoints ----------------------------------------------------------------------------

    def checkpoint(
        self, identity: DeviceIdentity, *, now_utc_ns: int, force: bool = False
    ) -> StoredCheckpoint:
        """Sign the current tree. Without ``force``, an unchanged tree reuses its latest checkpoint."""
        with self.store.transaction() as c:
            size = self._size(c)
            last = c.execute(
                "SELECT id, tree_size, utc_ns, note FROM audit_checkpoints ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if last is not None and int(last[1]) == size and not force:
                return StoredCheckpoint(int(last[0]), int(last[1]), int(last[2]), bytes(last[3]))
            frontier = merkle.Frontier.load(size, lambda level, idx: self._node(c, level, idx))
            origin = identity.public.log_origin
            note = checkpoint.sign(
                checkpoint.Checkpoint(origin, size, frontier.root()), origin, identity.private_key
            )
            cur = c.execute(
                "INSERT INTO audit_checkpoints (tree_size, utc_ns, note) VALUES (?, ?, ?)",
                (size, now_utc_ns, note),
            )
            assert cur.lastrowid is not None
            return StoredCheckpoint(cur.lastrowid, size, now_utc_ns, note)

    def add_cosignature(
        self, *, tree_size: int, note: str, line: str, witness: str, verified: bool, now_utc_ns: int
    ) -> None:
        """Keep the hub's cosignature of a checkpoint this box signed (the same one again is a no-op)."""
        with self.store.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO audit_cosignatures"
                " (tree_size, note, line, witness, verified, received_utc_ns) VALUES (?, ?, ?, ?, ?, ?)",
                (tree_size, note, line, witness, int(verified), now_utc_ns),
            )

    def cosignatures(self) -> list[Cosignature]:
        rows = self.store.query(
            "SELECT tree_size, note, line, witness, verified, received_utc_ns FROM audit_cosignatures"
            " ORDER BY tree_size, received_utc_ns"
        )
        return [Cosignature(int(r[0]), str(r[1]), str(r[2]), str(r[3]), bool(r[4]), int(r[5])) for r in rows]

    def checkpoints(self) -> list[StoredCheckpoint]:
        rows = self.store.query("SELECT id, tree_size, utc_ns, note FROM audit_checkpoints ORDER BY id")
        return [StoredCheckpoint(int(r[0]), int(r[1]), int(r[2]), bytes(r[3])) for r in rows]


@dataclass(frozen=True)
class Cosignature:
    tree_size: int
    note: str
    line: str
    witness: str
    verified: bool
    received_utc_ns: int


@dataclass(frozen=True)
class StoredCheckpoint:
    id: int
    tree_size: int
    utc_ns: int
    note: bytes


def verifier_key(public: PublicIdentity) -> str:
    """The C2SP verifier key an owner keeps off the box to check checkpoints (``edge identity`` shows it)."""
    return checkpoint.vkey(public.log_origin, public.public_key)
