"""The disk ring buffer: start-up recovery, retention (byte budget, max age) and the free-space guard.

Delete order (crash-safe): mark the row *deleting* → unlink → fsync the directory → drop the row. A crash
between any two steps is finished by `recover` at the next start.

Legal holds (edge/holds.py): a segment under an active hold is never deleted. Age limits skip it; the byte
budget and the free-space floor delete the oldest *unheld* segments instead; when only held footage is left
and the disk is still short, the evidence wins over new footage and a warning says so once.

Recovery: an *open* row (the process died while writing) is trimmed to its last complete fragment and
closed; a file newer than the index (created, but its row never committed) is adopted the same way; a file
that cannot be read is moved to ``quarantine/`` and logged — never deleted silently.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from edge.clock import NS_PER_S, Clock
from edge.errors import Malformed, NotFound, StorageError
from edge.fsutil import fsync_dir, makedirs_durable
from edge.recorder.fmp4stream import FileScan, scan_file
from edge.store import NewSegment, Segment, Store

log = logging.getLogger("edge.recorder.ringbuffer")

_SEGMENT_NAME = re.compile(r"^(\d{1,20})\.mp4$")


@dataclass
class RecoveryReport:
    trimmed: list[str] = field(default_factory=list)  # open rows closed at their last complete fragment
    adopted: list[str] = field(default_factory=list)  # files without a row, indexed
    quarantined: list[str] = field(default_factory=list)
    finished_deletes: int = 0
    lost_bytes: int = 0  # torn tails cut off


@dataclass(frozen=True)
class RetentionPolicy:
    budget_bytes: Callable[[], int]  # resolved lazily: a share of the partition can change with the disk
    min_free_bytes: int
    default_max_age_s: int | None = None
    ballast_bytes: int = 4 << 20


class RingBuffer:
    """Shared by the camera threads (disk-full callback) and the retention worker. Thread-safe."""

    def __init__(self, data_dir: Path, policy: RetentionPolicy, clock: Clock) -> None:
        self.data_dir = data_dir
        self.recordings = data_dir / "recordings"
        self.quarantine_dir = data_dir / "quarantine"
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self.deleted_segments = 0
        self.deleted_bytes = 0
        # Limits ("budget", "free space") that only held footage could satisfy, warned about until met again.
        self._held_full: set[str] = set()

    # --- recovery ------------------------------------------------------------------------------

    def recover(self, store: Store) -> RecoveryReport:
        """Run once at start, before any recorder. Makes the index and the files agree."""
        report = RecoveryReport()
        makedirs_durable(self.recordings)
        for seg in store.segments(states=("deleting",)):
            self._unlink(seg.path)
            store.drop_segment(seg.id)
            report.finished_deletes += 1
        for seg in store.segments(states=("open",)):
            self._recover_open(store, seg, report)
        self._adopt_orphans(store, report)
        self._ensure_ballast()
        for what, items in (("trimmed", report.trimmed), ("adopted", report.adopted)):
            for p in items:
                log.info("recovered segment %s (%s)", p, what, extra={"event": f"recovery.{what}"})
        return report

    def _recover_open(self, store: Store, seg: Segment, report: RecoveryReport) -> None:
        path = self.data_dir / seg.path
        if not path.exists():
            # Cannot happen through our write order; only if someone removed the file by hand.
            log.error("index row for missing file %s dropped", seg.path, extra={"event": "recovery.missing"})
            with store.transaction() as c:
                c.execute("DELETE FROM segments WHERE id = ?", (seg.id,))
            return
        scan = self._scan_or_quarantine(path, seg.camera_id, report)
        if scan is None:
            with store.transaction() as c:
                c.execute("DELETE FROM segments WHERE id = ?", (seg.id,))
            return
        report.lost_bytes += self._trim(path, scan)
        store.update_segment(
            seg.id,
            end_utc_ns=seg.start_utc_ns + scan.media_duration_ns,
            media_duration_ns=scan.media_duration_ns,
            bytes_=scan.durable_end,
            state="closed",
        )
        report.trimmed.append(seg.path)

    def _adopt_orphans(self, store: Store, report: RecoveryReport) -> None:
        """Files whose row never committed: only the newest files of a camera can be such."""
        if not self.recordings.exists():
            return
        known = {s.path for s in store.segments(states=("open", "closed", "deleting"))}
        newest_day: dict[int, str] = {}
        for s in store.segments():
            newest_day[s.camera_id] = max(newest_day.get(s.camera_id, ""), Path(s.path).parent.name)
        for cam_dir in sorted(p for p in self.recordings.iterdir() if p.is_dir() and p.name.isdigit()):
            camera_id = int(cam_dir.name)
            floor = newest_day.get(camera_id, "")
            for day_dir in sorted(d for d in cam_dir.iterdir() if d.is_dir() and d.name >= floor):
                for f in sorted(day_dir.iterdir()):
                    rel = f.relative_to(self.data_dir).as_posix()
                    if rel in known or not f.is_file():
                        continue
                    self._adopt(store, camera_id, f, rel, report)

    def _adopt(self, store: Store, camera_id: int, f: Path, rel: str, report: RecoveryReport) -> None:
        m = _SEGMENT_NAME.match(f.name)
        if m is None:
            self._quarantine(f, camera_id, report, "not a segment file name")
            return
        scan = self._scan_or_quarantine(f, camera_id, report)
        if scan is None:
            return
        if not scan.fragments:
            self._quarantine(f, camera_id, report, "no complete fragment")
            return
        report.lost_bytes += self._trim(f, scan)
        try:
            store.camera(camera_id)
        except NotFound:
            self._quarantine(f, camera_id, report, "camera not in the database")
            return
        start = int(m.group(1))
        init = scan.init
        vt = init.video_track if init is not None else None
        codec = {"avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc"}.get(
            vt.codec if vt else "", "unknown"
        )
        seg_id = store.insert_segment(
            NewSegment(
                camera_id=camera_id,
                start_utc_ns=start,
                end_utc_ns=start + scan.media_duration_ns,
                media_duration_ns=scan.media_duration_ns,
                bytes=scan.durable_end,
                path=rel,
                codec=codec,
                audio_codec="aac"
                if init is not None and any(t.handler == "soun" for t in init.tracks)
                else None,
            )
        )
        store.update_segment(
            seg_id,
            end_utc_ns=start + scan.media_duration_ns,
            media_duration_ns=scan.media_duration_ns,
            bytes_=scan.durable_end,
            state="closed",
        )
        report.adopted.append(rel)

    def _scan_or_quarantine(self, path: Path, camera_id: int, report: RecoveryReport) -> FileScan | None:
        try:
            with path.open("rb") as f:
                return scan_file(f)
        except Malformed as e:
            self._quarantine(path, camera_id, report, str(e))
            return None

    def _trim(self, path: Path, scan: FileScan) -> int:
        """Cut a torn tail after the last complete fragment; returns the bytes cut."""
        lost = scan.file_size - scan.durable_end
        if lost > 0:
            with path.open("r+b") as f:
                f.truncate(scan.durable_end)
                f.flush()
                os.fsync(f.fileno())
        return lost

    def _quarantine(self, path: Path, camera_id: int, report: RecoveryReport, reason: str) -> None:
        dest_dir = self.quarantine_dir / str(camera_id)
        makedirs_durable(dest_dir)
        dest = dest_dir / path.name
        n = 1
        while dest.exists():
            dest = dest_dir / f"{path.stem}.{n}{path.suffix}"
            n += 1
        os.rename(path, dest)
        fsync_dir(dest_dir)
        fsync_dir(path.parent)
        rel = dest.relative_to(self.data_dir).as_posix()
        report.quarantined.append(rel)
        log.warning(
            "unreadable recording moved to %s: %s",
            rel,
            reason,
            extra={"event": "recovery.quarantine", "camera": camera_id},
        )

    # --- retention -----------------------------------------------------------------------------

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.recordings).free

    def enforce(self, store: Store, max_age_s: dict[int, int | None] | None = None) -> int:
        """Apply max age, the byte budget and the free-space floor. Returns segments deleted."""
        with self._lock:
            deleted = self._expire(store, max_age_s or {})
            budget = self.policy.budget_bytes()
            total = store.total_segment_bytes()
            while total > budget:
                n = self._delete_oldest(store, total - budget)
                if n == 0:
                    self._warn_held_full(store, "budget", f"over the storage budget ({budget} bytes)")
                    break
                deleted += n
                total = store.total_segment_bytes()
            else:
                self._held_full.discard("budget")
            deleted += self._guard_free(store, 0)
            return deleted

    def guard(self, store: Store) -> int:
        """The free-space guard alone (one statvfs unless it must delete); also restores the ballast."""
        with self._lock:
            deleted = self._guard_free(store, 0)
            self._ensure_ballast()
            return deleted

    def make_room(self, store: Store, need_bytes: int) -> bool:
        """Called by a camera thread that hit ENOSPC (the guard could not keep up). True if space was freed.

        Freeing space needs database writes (the delete protocol), which a full disk refuses too: so the
        ballast goes first, then the oldest segments, until the ballast fits again.
        """
        with self._lock:
            dropped = self._drop_ballast()
            try:
                # Twice the ballast: room to put it back and still write for a while.
                freed = self._guard_free(store, need_bytes + 2 * self.policy.ballast_bytes)
            except StorageError as e:
                log.error("disk full and cannot delete: %s", e, extra={"event": "disk_full"})
                return dropped
            self._ensure_ballast()
        if freed:
            log.warning(
                "disk full: deleted %d oldest segments to keep recording", freed, extra={"event": "disk_full"}
            )
        # Another camera thread may have freed the space while this one waited for the lock: that is room too,
        # and answering "nothing freed" would turn its ENOSPC into a dropped connection.
        return dropped or freed > 0 or self.free_bytes() >= need_bytes

    # --- ballast: a reserve that lets the delete protocol run on a full disk -------------------

    @property
    def ballast_path(self) -> Path:
        return self.data_dir / "ballast"

    def _ensure_ballast(self) -> None:
        size = self.policy.ballast_bytes
        if size <= 0 or self.ballast_path.exists() or self.free_bytes() < size + self.policy.min_free_bytes:
            return
        tmp = self.ballast_path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)  # real blocks, not a sparse file
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.ballast_path)
        except OSError:
            tmp.unlink(missing_ok=True)  # no room yet: the guard tries again next tick

    def _drop_ballast(self) -> bool:
        try:
            self.ballast_path.unlink()
        except FileNotFoundError:
            return False
        log.warning("disk full: released the ballast reserve", extra={"event": "disk_full"})
        return True

    def _guard_free(self, store: Store, need_bytes: int) -> int:
        floor = self.policy.min_free_bytes + need_bytes
        free = self.free_bytes()
        if free >= floor:
            self._held_full.discard("free space")
            return 0
        # Free a little more than the floor so the guard does not fire on every check.
        target = floor + self.policy.min_free_bytes // 2
        deleted = 0
        while free < target:
            n = self._delete_oldest(store, target - free)
            if n == 0:
                if free < floor:
                    self._warn_held_full(
                        store, "free space", f"disk full ({free} bytes free, {floor} wanted)"
                    )
                break
            deleted += n
            free = self.free_bytes()
        return deleted

    def _delete_oldest(self, store: Store, want_bytes: int) -> int:
        freed, deleted = 0, 0
        for seg in store.oldest_unheld_segments(64):
            if self.delete_segment(store, seg):
                freed += seg.bytes
                deleted += 1
            if freed >= want_bytes:
                break
        return deleted

    def _expire(self, store: Store, max_age_s: dict[int, int | None]) -> int:
        now = self._clock.now_utc_ns()
        deleted = 0
        for camera_id, own_age in max_age_s.items():
            age = own_age if own_age is not None else self.policy.default_max_age_s
            if age is None:
                continue
            for seg in store.expired_unheld_segments(camera_id, now - age * NS_PER_S):
                deleted += int(self.delete_segment(store, seg))
        return deleted

    def _warn_held_full(self, store: Store, limit: str, what: str) -> None:
        """Nothing deletable is left for ``limit``: if held footage is what fills it, say so once (until the
        limit is met again). Open segments alone are the recorder's normal state, not worth a warning."""
        if limit in self._held_full:
            return
        count, held_bytes = store.held_segment_totals()
        if count == 0:
            return
        self._held_full.add(limit)
        log.warning(
            "%s and only footage under legal hold is left (%d segments, %d bytes): keeping it; new footage"
            " may not be recorded until the owner releases a hold (edge hold list, edge hold release)",
            what,
            count,
            held_bytes,
            extra={"event": "retention.held_full"},
        )

    def delete_segment(self, store: Store, seg: Segment) -> bool:
        """mark → unlink → fsync dir → drop row. The mark refuses a held segment (False, nothing touched)."""
        if not store.mark_deleting(seg.id):
            return False
        self._unlink(seg.path)
        store.drop_segment(seg.id)
        self.deleted_segments += 1
        self.deleted_bytes += seg.bytes
        log.debug("deleted %s", seg.path, extra={"event": "retention.delete", "camera": seg.camera_id})
        return True

    def _unlink(self, relpath: str) -> None:
        path = self.data_dir / relpath
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
        self._prune_day_dir(path.parent)

    def _prune_day_dir(self, day_dir: Path) -> None:
        today = datetime.fromtimestamp(self._clock.now_utc_ns() // NS_PER_S, UTC).strftime("%Y-%m-%d")
        if day_dir.name >= today:
            return  # a recorder may be about to create a file here
        try:
            day_dir.rmdir()
            fsync_dir(day_dir.parent)
        except OSError:
            pass  # not empty


class RetentionWorker:
    """Applies retention on its own thread: the free-space guard every `guard_interval_s`, budget and
    max age every `enforce_every` guard ticks, and at once when `poke()`d."""

    def __init__(
        self,
        ring: RingBuffer,
        max_ages: Callable[[Store], dict[int, int | None]],
        *,
        guard_interval_s: float = 1.0,
        enforce_every: int = 5,
    ) -> None:
        self._ring = ring
        self._max_ages = max_ages
        self._interval = guard_interval_s
        self._every = enforce_every
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        self._poke.set()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._poke.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        store = Store.open(self._ring.data_dir, durable=False)
        tick = 0
        try:
            while not self._stop.is_set():
                try:
                    if tick % self._every == 0 or self._poke.is_set():
                        self._poke.clear()
                        self._ring.enforce(store, self._max_ages(store))
                    else:
                        self._ring.guard(store)
                except OSError as e:
                    log.error("retention failed: %s", e, extra={"event": "retention.error"})
                tick += 1
                self._poke.wait(self._interval)
        finally:
            store.close()
