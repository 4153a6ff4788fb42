"""The box's one SQLite database: schema, migrations and the queries.

WAL mode so camera threads, the CLI and the daemon can read while one writes. Every thread opens its own
`Store` (sqlite3 connections must not be shared across threads). The schema version is `PRAGMA
user_version`; migrations run in order inside one transaction each and never edit an earlier step.

Durability: the recorder's index connection uses ``synchronous=NORMAL``: a power cut may roll back the
last index commits, but never makes a row point past data that is on disk, because the file is fsync'd
before its row commits and start-up recovery re-derives open segments from their files. Everything else
(cameras, and later the audit log and replay guards) uses ``synchronous=FULL``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from edge.errors import DiskFull, Malformed, NotFound, StorageError

DB_NAME = "edge.db"

SegmentState = Literal["open", "closed", "deleting"]
Consent = Literal["private", "registered", "integrated"]
CONSENT_LEVELS: tuple[Consent, ...] = ("private", "registered", "integrated")
MAX_CANDIDATES = 1024


@dataclass(frozen=True)
class Camera:
    id: int
    name: str
    url: str  # never carries credentials: those are in `username` / `password_blob`
    username: str | None
    password_blob: bytes | None
    max_age_s: int | None
    created_utc_ns: int
    removed_utc_ns: int | None
    # What the police programme may do with it (the uplink issue enforces it). New cameras are private.
    consent: Consent = "private"
    location: str | None = None  # free text for the owner ("back door, above the bins")
    lat: float | None = None
    lon: float | None = None
    maker: str | None = None  # from ONVIF GetDeviceInformation
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    onvif_url: str | None = None  # device service, when the camera was added through ONVIF
    sub_url: str | None = None  # the low-resolution stream, for live views on a phone
    snapshot_url: str | None = None
    # The owner's limits on police access to an integrated camera (edge/consent.py enforces them).
    radius_m: int = 300
    allow_live: bool = True
    max_session_s: int = 900
    max_lookback_s: int = 7 * 86400
    hourly_quota: int = 4

    @property
    def active(self) -> bool:
        return self.removed_utc_ns is None


# Fields `Store.update_camera` may change (id, url, credentials and times are fixed for a camera's life).
CAMERA_SETTABLE = frozenset(
    {
        "name",
        "consent",
        "location",
        "lat",
        "lon",
        "max_age_s",
        "maker",
        "model",
        "serial",
        "firmware",
        "sub_url",
        "radius_m",
        "allow_live",
        "max_session_s",
        "max_lookback_s",
        "hourly_quota",
    }
)


@dataclass(frozen=True)
class Candidate:
    """A camera seen on the LAN (WS-Discovery Hello/ProbeMatch or mDNS) that may not be added yet."""

    key: str  # WS-Discovery endpoint reference (urn:uuid:…) or "mdns:<instance>"
    source: Literal["ws-discovery", "mdns"]
    address: str
    device_url: str | None  # ONVIF device service
    stream_url: str | None  # mDNS-announced RTSP URL
    name: str | None
    hardware: str | None
    location: str | None
    first_seen_utc_ns: int
    last_seen_utc_ns: int
    gone_utc_ns: int | None  # WS-Discovery Bye


@dataclass(frozen=True)
class Segment:
    id: int
    camera_id: int
    start_utc_ns: int
    end_utc_ns: int
    media_duration_ns: int
    bytes: int
    path: str  # relative to the data directory
    codec: str
    audio_codec: str | None
    state: SegmentState


@dataclass(frozen=True)
class NewSegment:
    camera_id: int
    start_utc_ns: int
    end_utc_ns: int
    media_duration_ns: int
    bytes: int
    path: str
    codec: str
    audio_codec: str | None


def _m1_initial(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE cameras (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: recording paths use it
            name TEXT NOT NULL,
            url TEXT NOT NULL,
            username TEXT,
            password_blob BLOB,
            max_age_s INTEGER CHECK (max_age_s IS NULL OR max_age_s > 0),
            created_utc_ns INTEGER NOT NULL,
            removed_utc_ns INTEGER
        );
        CREATE TABLE segments (
            id INTEGER PRIMARY KEY,
            camera_id INTEGER NOT NULL REFERENCES cameras(id),
            start_utc_ns INTEGER NOT NULL,
            end_utc_ns INTEGER NOT NULL,
            media_duration_ns INTEGER NOT NULL CHECK (media_duration_ns >= 0),
            bytes INTEGER NOT NULL CHECK (bytes >= 0),
            path TEXT NOT NULL UNIQUE,
            codec TEXT NOT NULL,
            audio_codec TEXT,
            state TEXT NOT NULL CHECK (state IN ('open', 'closed', 'deleting')),
            CHECK (end_utc_ns >= start_utc_ns)
        );
        CREATE INDEX segments_by_camera ON segments(camera_id, start_utc_ns);
        CREATE INDEX segments_by_start ON segments(start_utc_ns);
        """
    )


def _m2_discovery(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        ALTER TABLE cameras ADD COLUMN consent TEXT NOT NULL DEFAULT 'private'
            CHECK (consent IN ('private', 'registered', 'integrated'));
        ALTER TABLE cameras ADD COLUMN location TEXT;
        ALTER TABLE cameras ADD COLUMN lat REAL CHECK (lat IS NULL OR lat BETWEEN -90 AND 90);
        ALTER TABLE cameras ADD COLUMN lon REAL CHECK (lon IS NULL OR lon BETWEEN -180 AND 180);
        ALTER TABLE cameras ADD COLUMN maker TEXT;
        ALTER TABLE cameras ADD COLUMN model TEXT;
        ALTER TABLE cameras ADD COLUMN serial TEXT;
        ALTER TABLE cameras ADD COLUMN firmware TEXT;
        ALTER TABLE cameras ADD COLUMN onvif_url TEXT;
        ALTER TABLE cameras ADD COLUMN sub_url TEXT;
        ALTER TABLE cameras ADD COLUMN snapshot_url TEXT;
        CREATE TABLE candidates (
            key TEXT PRIMARY KEY,
            source TEXT NOT NULL CHECK (source IN ('ws-discovery', 'mdns')),
            address TEXT NOT NULL,
            device_url TEXT,
            stream_url TEXT,
            name TEXT,
            hardware TEXT,
            location TEXT,
            first_seen_utc_ns INTEGER NOT NULL,
            last_seen_utc_ns INTEGER NOT NULL,
            gone_utc_ns INTEGER
        );
        """
    )


def _m3_audit(db: sqlite_utils.Database) -> None:
    """The audit log (edge/audit.py). Triggers make the three tables append-only through SQL; an attacker
    with root can still edit the file, which is what the Merkle tree and off-box checkpoints are for."""
    db.executescript(
        """
        CREATE TABLE audit_entries (
            seq INTEGER PRIMARY KEY CHECK (seq >= 0),
            entry BLOB NOT NULL,                            -- canonical JSON (RFC 8785): what is hashed
            leaf BLOB NOT NULL CHECK (length(leaf) = 32)    -- SHA-256(0x00 || entry), at append time
        );
        CREATE TABLE audit_nodes (                          -- perfect subtrees of level >= 1, for proofs
            level INTEGER NOT NULL CHECK (level >= 1),
            idx INTEGER NOT NULL CHECK (idx >= 0),
            hash BLOB NOT NULL CHECK (length(hash) = 32),
            PRIMARY KEY (level, idx)
        ) WITHOUT ROWID;
        CREATE TABLE audit_checkpoints (
            id INTEGER PRIMARY KEY,
            tree_size INTEGER NOT NULL CHECK (tree_size >= 0),
            utc_ns INTEGER NOT NULL,
            note BLOB NOT NULL                              -- the signed note, byte for byte
        );
        CREATE TRIGGER audit_entries_no_update BEFORE UPDATE ON audit_entries
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_entries_no_delete BEFORE DELETE ON audit_entries
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_nodes_no_update BEFORE UPDATE ON audit_nodes
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_nodes_no_delete BEFORE DELETE ON audit_nodes
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        """
    )


def _m4_requests(db: sqlite_utils.Database) -> None:
    """The owner's per-camera limits for police access, and the replay guards for access requests."""
    db.executescript(
        """
        ALTER TABLE cameras ADD COLUMN radius_m INTEGER NOT NULL DEFAULT 300
            CHECK (radius_m BETWEEN 10 AND 50000);
        ALTER TABLE cameras ADD COLUMN allow_live INTEGER NOT NULL DEFAULT 1 CHECK (allow_live IN (0, 1));
        ALTER TABLE cameras ADD COLUMN max_session_s INTEGER NOT NULL DEFAULT 900
            CHECK (max_session_s BETWEEN 1 AND 3600);
        ALTER TABLE cameras ADD COLUMN max_lookback_s INTEGER NOT NULL DEFAULT 604800
            CHECK (max_lookback_s BETWEEN 0 AND 7776000);
        ALTER TABLE cameras ADD COLUMN hourly_quota INTEGER NOT NULL DEFAULT 4
            CHECK (hourly_quota BETWEEN 0 AND 100);
        CREATE TABLE request_jtis (                 -- every jti ever accepted for checking: never twice
            jti TEXT PRIMARY KEY,
            iss TEXT NOT NULL,
            exp INTEGER NOT NULL,
            seen_utc_ns INTEGER NOT NULL
        );
        CREATE TABLE dev_nonces (                   -- challenges the box handed the hub; single use
            nonce TEXT PRIMARY KEY,
            issued_utc_ns INTEGER NOT NULL,
            used_utc_ns INTEGER
        );
        """
    )


def _m5_pairing(db: sqlite_utils.Database) -> None:
    """The pinned hub (edge/uplink/pairing.py): one row, written only after the owner confirmed it."""
    db.executescript(
        """
        CREATE TABLE pairing (
            id INTEGER PRIMARY KEY CHECK (id = 1),  -- a box is paired to one hub
            hub_id TEXT NOT NULL,
            agency TEXT NOT NULL,
            hub_url TEXT NOT NULL,
            root_pem TEXT NOT NULL,                 -- the only trust anchor for TLS with the hub
            client_cert_pem TEXT NOT NULL,          -- its key is tls-client.key in the data directory
            keyset_jws TEXT NOT NULL,               -- the newest key set, as received
            keyset_claims BLOB NOT NULL,            -- its claims, RFC 8785 JSON: what the fingerprint covers
            keyset_version INTEGER NOT NULL CHECK (keyset_version >= 1),
            revoked_kids TEXT NOT NULL,             -- JSON array: every kid a newer set left out
            terms_version TEXT NOT NULL,
            terms_text TEXT NOT NULL,
            terms_sha256 TEXT NOT NULL CHECK (length(terms_sha256) = 64),
            paired_utc_ns INTEGER NOT NULL
        );
        """
    )


# Append only. Each entry takes the schema from version i to i + 1.
def _m6_settings(db: sqlite_utils.Database) -> None:
    """Box-wide owner settings (contact, kill switch): a few named values, not worth a column each."""
    db.executescript("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);")


def _m7_holds(db: sqlite_utils.Database) -> None:
    """Legal holds (edge/holds.py): footage of a session or share that retention must keep until the owner
    releases it. Holds are few; the partial index serves retention's "is this segment held?" test."""
    db.executescript(
        """
        CREATE TABLE holds (
            id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: the audit log names holds by id
            camera_id INTEGER NOT NULL REFERENCES cameras(id),
            from_utc_ns INTEGER NOT NULL,
            to_utc_ns INTEGER NOT NULL,
            reason TEXT NOT NULL CHECK (reason IN ('session', 'share')),
            request TEXT NOT NULL,                  -- the access request's jti
            placed_by TEXT NOT NULL,
            placed_utc_ns INTEGER NOT NULL,
            released_by TEXT,
            released_utc_ns INTEGER,
            CHECK (to_utc_ns >= from_utc_ns),
            CHECK ((released_by IS NULL) = (released_utc_ns IS NULL))
        );
        CREATE INDEX holds_active ON holds(camera_id, from_utc_ns) WHERE released_utc_ns IS NULL;
        """
    )


def _m8_cosignatures(db: sqlite_utils.Database) -> None:
    """The hub's cosignatures of the box's checkpoints (C2SP tlog-cosignature lines), kept as received: the
    off-box witness of the log. Append-only, like the log itself."""
    db.executescript(
        """
        CREATE TABLE audit_cosignatures (
            tree_size INTEGER NOT NULL,
            note TEXT NOT NULL,          -- the box's signed checkpoint note, as sent
            line TEXT NOT NULL,          -- the hub's cosignature line
            witness TEXT NOT NULL,       -- the witness name
            verified INTEGER NOT NULL,   -- 1: checked against the pinned witness key; 0: no key pinned
            received_utc_ns INTEGER NOT NULL,
            PRIMARY KEY (tree_size, line)
        );
        CREATE TRIGGER audit_cosignatures_no_update BEFORE UPDATE ON audit_cosignatures
            BEGIN SELECT RAISE(ABORT, 'audit cosignatures are append-only'); END;
        CREATE TRIGGER audit_cosignatures_no_delete BEFORE DELETE ON audit_cosignatures
            BEGIN SELECT RAISE(ABORT, 'audit cosignatures are append-only'); END;
        """
    )


MIGRATIONS: Sequence[Callable[[sqlite_utils.Database], None]] = (
    _m1_initial,
    _m2_discovery,
    _m3_audit,
    _m4_requests,
    _m5_pairing,
    _m6_settings,
    _m7_holds,
    _m8_cosignatures,
)


class Store:
    """One connection. Not thread-safe: open one per thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, data_dir: Path, *, durable: bool = True) -> Store:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / DB_NAME
        try:
            conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as e:
            raise StorageError(f"cannot open database {path}: {e}") from None
        store = cls(conn, path)
        store._migrate()
        return store

    def close(self) -> None:
        self._conn.close()

    @property
    def schema_version(self) -> int:
        return int(self._row("PRAGMA user_version")[0])

    def _migrate(self) -> None:
        db = sqlite_utils.Database(self._conn)
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise StorageError(
                f"database {self.path} has schema version {version}, newer than this edge ({len(MIGRATIONS)})"
            )
        for i in range(version, len(MIGRATIONS)):
            with self.transaction():
                # Re-check inside the write lock: another process may have migrated meanwhile.
                if self.schema_version > i:
                    continue
                MIGRATIONS[i](db)
                self._conn.execute(f"PRAGMA user_version={i + 1}")

    def query(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        """A read for a module that keeps its own tables here (the audit log)."""
        return self._rows(sql, args)

    def iterate(self, sql: str, args: Sequence[object] = (), batch: int = 4096) -> Iterator[Any]:
        """Rows of a large read, a batch at a time (verifying a million audit entries)."""
        try:
            cur = self._conn.execute(sql, args)
            while rows := cur.fetchmany(batch):
                yield from rows
        except sqlite3.OperationalError as e:
            raise _storage_error(self.path, e) from None

    def _rows(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        """A read; like writes, a full disk or I/O error becomes a StorageError."""
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            raise _storage_error(self.path, e) from None

    def _row(self, sql: str, args: Sequence[object] = ()) -> Any:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; rolls back on any exception."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as e:  # disk full, I/O error, locked past the busy timeout
            raise _storage_error(self.path, e) from None

    # --- cameras -------------------------------------------------------------------------------

    def add_camera(
        self,
        *,
        name: str,
        url: str,
        username: str | None,
        password_blob: bytes | None,
        max_age_s: int | None,
        now_utc_ns: int,
        maker: str | None = None,
        model: str | None = None,
        serial: str | None = None,
        firmware: str | None = None,
        onvif_url: str | None = None,
        sub_url: str | None = None,
        snapshot_url: str | None = None,
    ) -> Camera:
        """A new camera is always private: sharing is the owner's later, explicit choice."""
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO cameras (name, url, username, password_blob, max_age_s, created_utc_ns,"
                " maker, model, serial, firmware, onvif_url, sub_url, snapshot_url)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name, url, username, password_blob, max_age_s, now_utc_ns,
                    maker, model, serial, firmware, onvif_url, sub_url, snapshot_url,
                ),
            )  # fmt: skip
            assert cur.lastrowid is not None
            camera_id = cur.lastrowid
        return self.camera(camera_id)

    def update_camera(self, camera_id: int, **fields: object) -> tuple[Camera, Camera]:
        """Change settable fields of an active camera; returns (before, after).

        Refuses a change that would leave an *integrated* camera without a position: police access is
        promised only for emergencies near the camera, which needs to know where it is.
        """
        bad = set(fields) - CAMERA_SETTABLE
        if bad:
            raise Malformed(f"cannot set {', '.join(sorted(bad))} on a camera")
        if "consent" in fields and fields["consent"] not in CONSENT_LEVELS:
            raise Malformed(f"consent must be one of {', '.join(CONSENT_LEVELS)}, not {fields['consent']!r}")
        with self.transaction() as c:
            before = self.camera(camera_id)
            if before.removed_utc_ns is not None:
                raise NotFound(f"no active camera with id {camera_id}")
            after = replace(before, **fields)  # type: ignore[arg-type]
            if (after.lat is None) != (after.lon is None):
                raise Malformed("give both --lat and --lon, or neither")
            if after.consent == "integrated" and after.lat is None:
                raise Malformed(
                    f"camera {camera_id} has no position: an integrated camera needs --lat/--lon, because"
                    " police access is limited to emergencies near it"
                )
            if fields:
                cols = sorted(fields)
                try:
                    c.execute(
                        f"UPDATE cameras SET {', '.join(f'{k} = ?' for k in cols)} WHERE id = ?",
                        [fields[k] for k in cols] + [camera_id],
                    )
                except sqlite3.IntegrityError as e:  # the CHECKs: lat/lon ranges, consent values
                    raise Malformed(f"camera {camera_id}: invalid value ({e})") from None
        return before, self.camera(camera_id)

    def camera(self, camera_id: int) -> Camera:
        row = self._row(f"SELECT {_CAMERA_COLS} FROM cameras WHERE id = ?", (camera_id,))
        if row is None:
            raise NotFound(f"no camera with id {camera_id}")
        return _camera(row)

    def cameras(self, *, include_removed: bool = False) -> list[Camera]:
        where = "" if include_removed else " WHERE removed_utc_ns IS NULL"
        rows = self._rows(f"SELECT {_CAMERA_COLS} FROM cameras{where} ORDER BY id")
        return [_camera(r) for r in rows]

    def remove_camera(self, camera_id: int, *, now_utc_ns: int) -> Camera:
        """Stops recording it; its footage stays until retention deletes it."""
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE cameras SET removed_utc_ns = ? WHERE id = ? AND removed_utc_ns IS NULL",
                (now_utc_ns, camera_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no active camera with id {camera_id}")
        return self.camera(camera_id)

    # --- segments ------------------------------------------------------------------------------

    def insert_segment(self, seg: NewSegment) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO segments (camera_id, start_utc_ns, end_utc_ns, media_duration_ns, bytes, path,"
                " codec, audio_codec, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open')",
                (
                    seg.camera_id,
                    seg.start_utc_ns,
                    seg.end_utc_ns,
                    seg.media_duration_ns,
                    seg.bytes,
                    seg.path,
                    seg.codec,
                    seg.audio_codec,
                ),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def update_segment(
        self,
        segment_id: int,
        *,
        end_utc_ns: int,
        media_duration_ns: int,
        bytes_: int,
        state: SegmentState | None = None,
    ) -> None:
        """Advance an open segment (or close it). Only open rows move: earlier rows are never rewritten."""
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE segments SET end_utc_ns = ?, media_duration_ns = ?, bytes = ?,"
                " state = COALESCE(?, state) WHERE id = ? AND state = 'open'",
                (end_utc_ns, media_duration_ns, bytes_, state, segment_id),
            )
            if cur.rowcount != 1:
                raise StorageError(f"segment {segment_id} is not open")

    def segment(self, segment_id: int) -> Segment:
        row = self._row(f"SELECT {_SEGMENT_COLS} FROM segments WHERE id = ?", (segment_id,))
        if row is None:
            raise NotFound(f"no segment with id {segment_id}")
        return Segment(*row)

    def segments(
        self,
        *,
        camera_id: int | None = None,
        from_utc_ns: int | None = None,
        to_utc_ns: int | None = None,
        states: Sequence[SegmentState] = ("open", "closed"),
    ) -> list[Segment]:
        """Segments overlapping [from, to], oldest first."""
        where = [f"state IN ({','.join('?' * len(states))})"]
        args: list[object] = list(states)
        if camera_id is not None:
            where.append("camera_id = ?")
            args.append(camera_id)
        if from_utc_ns is not None:
            where.append("end_utc_ns >= ?")
            args.append(from_utc_ns)
        if to_utc_ns is not None:
            where.append("start_utc_ns <= ?")
            args.append(to_utc_ns)
        sql = f"SELECT {_SEGMENT_COLS} FROM segments WHERE {' AND '.join(where)} ORDER BY start_utc_ns, id"
        return [Segment(*r) for r in self._rows(sql, args)]

    def oldest_unheld_segments(self, limit: int) -> list[Segment]:
        """Closed segments retention may delete, oldest first: none under an active legal hold."""
        rows = self._rows(
            f"SELECT {_SEGMENT_COLS} FROM segments WHERE state = 'closed' AND NOT {_HELD}"
            " ORDER BY start_utc_ns, id LIMIT ?",
            (limit,),
        )
        return [Segment(*r) for r in rows]

    def expired_unheld_segments(self, camera_id: int, before_utc_ns: int) -> list[Segment]:
        """Closed segments of a camera that ended before ``before_utc_ns`` and are not under a legal hold."""
        rows = self._rows(
            f"SELECT {_SEGMENT_COLS} FROM segments WHERE camera_id = ? AND state = 'closed'"
            f" AND end_utc_ns < ? AND NOT {_HELD} ORDER BY start_utc_ns",
            (camera_id, before_utc_ns),
        )
        return [Segment(*r) for r in rows]

    def held_segment_totals(self) -> tuple[int, int]:
        """(segments, bytes) under an active legal hold."""
        row = self._row(
            f"SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM segments WHERE state != 'deleting' AND {_HELD}"
        )
        return int(row[0]), int(row[1])

    def total_segment_bytes(self) -> int:
        return int(self._row("SELECT COALESCE(SUM(bytes), 0) FROM segments WHERE state != 'deleting'")[0])

    def mark_deleting(self, segment_id: int) -> bool:
        """Step 1 of a delete. False if the segment is not closed (open, or already being deleted) or is under
        a legal hold: tested in the same statement, so a hold placed after retention chose it still wins."""
        with self.transaction() as c:
            cur = c.execute(
                f"UPDATE segments SET state = 'deleting' WHERE id = ? AND state = 'closed' AND NOT {_HELD}",
                (segment_id,),
            )
            return cur.rowcount == 1

    def drop_segment(self, segment_id: int) -> None:
        """Last step of a delete, after the unlink is durable."""
        with self.transaction() as c:
            c.execute("DELETE FROM segments WHERE id = ? AND state = 'deleting'", (segment_id,))

    def camera_stats(self) -> dict[int, tuple[int, int, int | None, int | None]]:
        """camera id → (segments, bytes, oldest start, newest end), open and closed segments."""
        rows = self._rows(
            "SELECT camera_id, COUNT(*), COALESCE(SUM(bytes), 0), MIN(start_utc_ns), MAX(end_utc_ns)"
            " FROM segments WHERE state != 'deleting' GROUP BY camera_id"
        )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    # --- settings ------------------------------------------------------------------------------

    def setting(self, key: str) -> str | None:
        row = self._row("SELECT value FROM settings WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str | None) -> None:
        with self.transaction() as c:
            if value is None:
                c.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                c.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

    # --- candidates (cameras seen on the LAN) ----------------------------------------------------

    def saw_candidate(
        self,
        *,
        key: str,
        source: Literal["ws-discovery", "mdns"],
        address: str,
        now_utc_ns: int,
        device_url: str | None = None,
        stream_url: str | None = None,
        name: str | None = None,
        hardware: str | None = None,
        location: str | None = None,
    ) -> None:
        """Insert or refresh; a camera seen again after a Bye is back (gone cleared)."""
        with self.transaction() as c:
            c.execute(
                f"INSERT INTO candidates ({_CANDIDATE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"
                " ON CONFLICT(key) DO UPDATE SET address = excluded.address,"
                " device_url = COALESCE(excluded.device_url, device_url),"
                " stream_url = COALESCE(excluded.stream_url, stream_url),"
                " name = COALESCE(excluded.name, name), hardware = COALESCE(excluded.hardware, hardware),"
                " location = COALESCE(excluded.location, location),"
                " last_seen_utc_ns = excluded.last_seen_utc_ns, gone_utc_ns = NULL",
                (
                    key,
                    source,
                    address,
                    device_url,
                    stream_url,
                    name,
                    hardware,
                    location,
                    now_utc_ns,
                    now_utc_ns,
                ),
            )
            # Anyone on the LAN can announce "cameras": keep the most recently seen, not all of them.
            c.execute(
                "DELETE FROM candidates WHERE key NOT IN"
                " (SELECT key FROM candidates ORDER BY last_seen_utc_ns DESC LIMIT ?)",
                (MAX_CANDIDATES,),
            )

    def candidate_gone(self, key: str, *, now_utc_ns: int) -> bool:
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE candidates SET gone_utc_ns = ? WHERE key = ? AND gone_utc_ns IS NULL",
                (now_utc_ns, key),
            )
            return cur.rowcount > 0

    def candidates(self) -> list[Candidate]:
        rows = self._rows(f"SELECT {_CANDIDATE_COLS} FROM candidates ORDER BY last_seen_utc_ns DESC")
        return [Candidate(*r) for r in rows]


_CAMERA_COLS = (
    "id, name, url, username, password_blob, max_age_s, created_utc_ns, removed_utc_ns, consent, location,"
    " lat, lon, maker, model, serial, firmware, onvif_url, sub_url, snapshot_url, radius_m, allow_live,"
    " max_session_s, max_lookback_s, hourly_quota"
)


def _storage_error(path: Path, e: sqlite3.Error) -> StorageError:
    cls = (
        DiskFull
        if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)
        else StorageError
    )
    return cls(f"database {path.name}: {e}")


def _camera(row: Sequence[Any]) -> Camera:
    cam = Camera(*row)
    return replace(cam, allow_live=bool(cam.allow_live))  # SQLite has no booleans


_CANDIDATE_COLS = (
    "key, source, address, device_url, stream_url, name, hardware, location, first_seen_utc_ns,"
    " last_seen_utc_ns, gone_utc_ns"
)
_SEGMENT_COLS = (
    "id, camera_id, start_utc_ns, end_utc_ns, media_duration_ns, bytes, path, codec, audio_codec, state"
)
# A segment is held while an active hold on its camera overlaps it ([start, end] meets [from, to]). Written
# against the table name, so it fits any query on `segments`; `holds_active` makes it one index probe.
_HELD = (
    "EXISTS (SELECT 1 FROM holds WHERE holds.released_utc_ns IS NULL AND holds.camera_id = segments.camera_id"
    " AND holds.from_utc_ns <= segments.end_utc_ns AND holds.to_utc_ns >= segments.start_utc_ns)"
)
