"""Legal holds: retention keeps held footage (age, budget, free space), releases free it, everything is
audit-logged, and the owner's CLI lists and releases holds.

Real SQLite files and real segment files: the footage is made by the real segmenter (tests/recordings.py's
``record_file``) with wall times an hour in the past, so every segment is old enough to expire.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge import holds
from edge.audit import AuditLog
from edge.clock import NS_PER_S
from edge.errors import Malformed, NotFound
from edge.recorder.ringbuffer import RetentionPolicy, RingBuffer
from edge.store import Segment, Store
from tests.harness import edge_cli, index_problems, write_config
from tests.peers.media import make_media
from tests.recordings import add_camera, record_file

SEGMENT_S = 5
HOUR_NS = 3600 * NS_PER_S


class FixedClock:
    def __init__(self, now_utc_ns: int) -> None:
        self.now = now_utc_ns

    def now_utc_ns(self) -> int:
        return self.now

    def monotonic_ns(self) -> int:
        return 0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x360 H.264 + AAC clip (~0.5 Mbit/s): six 5 s segments are about 1.9 MB."""
    return make_media(tmp_path_factory.mktemp("hold-media"), ["h264_aac"])["h264_aac"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


def _footage(data: Path, clip: Path, seconds: int = 30, *, camera_id: int | None = None) -> list[Segment]:
    """``seconds`` of footage that started an hour ago, in 5 s segments, oldest first."""
    start = _now() - HOUR_NS
    cam = record_file(data, clip, seconds, camera_id=camera_id, start_utc_ns=start, segment_s=SEGMENT_S)
    st = Store.open(data)
    try:
        segs = st.segments(camera_id=cam)
    finally:
        st.close()
    assert len(segs) == seconds // SEGMENT_S and all(s.state == "closed" for s in segs), segs
    return segs


def _now() -> int:
    return time.time_ns()


def _ring(data: Path, *, budget: int = 1 << 40, min_free: int = 0) -> RingBuffer:
    policy = RetentionPolicy(budget_bytes=lambda: budget, min_free_bytes=min_free, ballast_bytes=0)
    return RingBuffer(data, policy, FixedClock(_now()))


def _place(store: Store, camera_id: int, from_ns: int, to_ns: int, reason: holds.Reason = "session") -> int:
    return holds.place(
        store,
        camera_id=camera_id,
        from_utc_ns=from_ns,
        to_utc_ns=to_ns,
        reason=reason,
        request=f"jti-{from_ns}",
        actor="daemon",
        now_utc_ns=_now(),
    ).id


def _kept(data: Path, segs: list[Segment]) -> list[int]:
    """Indexes into ``segs`` of the segments whose row and file are both still there."""
    st = Store.open(data)
    try:
        rows = {s.id for s in st.segments()}
    finally:
        st.close()
    out = []
    for i, s in enumerate(segs):
        on_disk = (data / s.path).exists()
        assert on_disk == (s.id in rows), f"row and file disagree for {s.path}"
        if on_disk:
            out.append(i)
    return out


# --- retention -----------------------------------------------------------------------------------------


def test_age_expiry_skips_held_segments_and_partial_overlap_holds(tmp_path: Path, clip: Path) -> None:
    data = tmp_path / "data"
    segs = _footage(data, clip)
    cam = segs[0].camera_id
    other = add_camera(data, name="another camera")
    store = Store.open(data)
    try:
        # One nanosecond inside segment 1 holds all of it (and nothing of its neighbours).
        mid1 = segs[1].start_utc_ns + 2 * NS_PER_S
        _place(store, cam, mid1, mid1)
        # A range from inside segment 3 to inside segment 4 holds both.
        _place(store, cam, segs[3].end_utc_ns - NS_PER_S, segs[4].start_utc_ns + NS_PER_S, "share")
        # Another camera's hold over segment 5's time does not hold this camera's footage.
        _place(store, other, segs[5].start_utc_ns, segs[5].end_utc_ns)
        ring = _ring(data)
        deleted = ring.enforce(store, {cam: 60})  # everything is an hour old
        assert deleted == 3
        assert _kept(data, segs) == [1, 3, 4]

        # Released: the next pass deletes what the hold kept; the other hold stays in force.
        released = holds.release(store, [1, 2], actor="cli:test", now_utc_ns=_now())
        assert [h.id for h in released] == [1, 2] and not any(h.active for h in released)
        assert [h.id for h in holds.active(store)] == [3]
        assert ring.enforce(store, {cam: 60}) == 3
        assert _kept(data, segs) == []
    finally:
        store.close()
    assert index_problems(data) == []


def test_budget_pressure_deletes_the_oldest_unheld_segments_instead(tmp_path: Path, clip: Path) -> None:
    data = tmp_path / "data"
    segs = _footage(data, clip)
    cam = segs[0].camera_id
    store = Store.open(data)
    try:
        # The two oldest segments are evidence; the camera is then removed (its footage stays).
        _place(store, cam, segs[0].start_utc_ns, segs[1].end_utc_ns - 1)
        store.remove_camera(cam, now_utc_ns=_now())
        budget = sum(s.bytes for s in segs[:4])  # room for the two held and two more
        ring = _ring(data, budget=budget)
        ring.enforce(store)
        # Held 0 and 1 stay; the oldest unheld (2, 3) went first, the newest two remain.
        assert _kept(data, segs) == [0, 1, 4, 5]
        assert store.total_segment_bytes() <= budget

        # A budget smaller than the held footage: every unheld segment goes, no held one does.
        ring = _ring(data, budget=segs[0].bytes)
        ring.enforce(store)
        assert _kept(data, segs) == [0, 1]
    finally:
        store.close()
    assert index_problems(data) == []


def test_a_hold_placed_after_retention_chose_a_segment_still_wins(tmp_path: Path, clip: Path) -> None:
    data = tmp_path / "data"
    segs = _footage(data, clip, 10)
    store = Store.open(data)
    try:
        chosen = store.oldest_unheld_segments(64)
        assert [s.id for s in chosen] == [s.id for s in segs]
        _place(store, segs[0].camera_id, segs[0].start_utc_ns, segs[0].start_utc_ns)
        ring = _ring(data)
        assert ring.delete_segment(store, chosen[0]) is False  # the mark re-checks the hold
        assert ring.delete_segment(store, chosen[1]) is True
        assert _kept(data, segs) == [0]
        assert store.held_segment_totals() == (1, segs[0].bytes)
    finally:
        store.close()


def test_retention_finds_held_segments_through_the_index(store: Store) -> None:
    from edge.store import _HELD

    plan = " ".join(
        str(r[3])
        for r in store.query(
            f"EXPLAIN QUERY PLAN SELECT id FROM segments WHERE state = 'closed' AND NOT {_HELD}"
        )
    )
    assert "holds_active" in plan, plan


# --- a disk full of held footage -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    assert os.geteuid() == 0, "mounting a tmpfs needs root (make test runs as root in CI)"
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, name: str) -> None:
    """Fill the disk but for a little room for the database's own writes (the delete protocol needs them)."""
    st = os.statvfs(disk)
    with (disk / name).open("wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - (256 << 10)))


def test_a_disk_full_of_held_footage_warns_once_and_loses_nothing_held(
    small_disk: Path, clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = small_disk / "edge"
    segs = _footage(data, clip)
    cam = segs[0].camera_id
    store = Store.open(data)
    try:
        _place(store, cam, segs[3].start_utc_ns + 1, segs[5].end_utc_ns)  # the newest three
        _fill(small_disk, "filler")
        ring = _ring(data, min_free=4 << 20)  # more than deleting every unheld segment can free
        caplog.set_level(logging.DEBUG, logger="edge.recorder.ringbuffer")

        assert ring.guard(store) == 3  # the unheld ones go first …
        assert _kept(data, segs) == [3, 4, 5]
        assert ring.guard(store) == 0  # … then nothing more, however often it runs
        ring.enforce(store)
        _fill(small_disk, "more filler")  # the recorder's write then fails with ENOSPC and asks for room:
        assert ring.make_room(store, 1 << 20) is False  # none to be had, and no crash
        assert _kept(data, segs) == [3, 4, 5]
        warnings = [r for r in caplog.records if getattr(r, "event", None) == "retention.held_full"]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert warnings[0].levelno == logging.WARNING
        assert "legal hold" in warnings[0].getMessage() and "edge hold release" in warnings[0].getMessage()

        # The owner releases the hold: the next pass deletes that footage too.
        holds.release(store, "all", actor="cli:test", now_utc_ns=_now())
        assert ring.guard(store) == 3
        assert _kept(data, segs) == []
        assert len([r for r in caplog.records if getattr(r, "event", None) == "retention.held_full"]) == 1
    finally:
        store.close()


# --- the library -----------------------------------------------------------------------------------------


def test_extend_grows_an_active_hold_only(tmp_path: Path, clip: Path) -> None:
    data = tmp_path / "data"
    segs = _footage(data, clip, 15)
    cam = segs[0].camera_id
    store = Store.open(data)
    try:
        # A live session: placed at its start, extended as footage is sent.
        h = holds.place(
            store, camera_id=cam, from_utc_ns=segs[0].start_utc_ns, to_utc_ns=segs[0].start_utc_ns,
            reason="session", request="live-jti", actor="daemon", now_utc_ns=_now(),
        )  # fmt: skip
        assert store.held_segment_totals()[0] == 1
        assert (
            holds.extend(store, h.id, segs[1].start_utc_ns + NS_PER_S).to_utc_ns
            == segs[1].start_utc_ns + NS_PER_S
        )
        assert holds.extend(store, h.id, segs[0].start_utc_ns).to_utc_ns == segs[1].start_utc_ns + NS_PER_S
        assert store.held_segment_totals()[0] == 2
        assert _ring(data).enforce(store, {cam: 60}) == 1
        assert _kept(data, segs) == [0, 1]

        holds.release(store, [h.id], actor="cli:test", now_utc_ns=_now())
        after = holds.extend(store, h.id, segs[2].end_utc_ns)  # a session still sending cannot revive it
        assert not after.active and after.to_utc_ns == segs[1].start_utc_ns + NS_PER_S
        with pytest.raises(NotFound, match="no hold with id 99"):
            holds.extend(store, 99, segs[2].end_utc_ns)
    finally:
        store.close()


def test_bad_holds_are_refused_and_nothing_is_stored(store: Store) -> None:
    cam = store.add_camera(
        name="c", url="rtsp://127.0.0.1/x", username=None, password_blob=None, max_age_s=None, now_utc_ns=1
    ).id
    ok: dict[str, Any] = {
        "camera_id": cam,
        "from_utc_ns": 10,
        "to_utc_ns": 20,
        "reason": "share",
        "request": "j",
    }
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"reason": "because"}, Malformed, "reason"),
        ({"from_utc_ns": 21}, Malformed, "forwards"),
        ({"from_utc_ns": -1}, Malformed, "forwards"),
        ({"to_utc_ns": 1 << 63}, Malformed, "forwards"),
        ({"request": ""}, Malformed, "jti"),
        ({"request": "x" * 257}, Malformed, "jti"),
        ({"request": "a\nb"}, Malformed, "jti"),
        ({"camera_id": 42}, NotFound, "no camera with id 42"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            holds.place(store, **(ok | bad), actor="daemon", now_utc_ns=1)
    assert holds.every(store) == [] and AuditLog(store).size() == 0
    h = holds.place(store, **ok, actor="daemon", now_utc_ns=5)
    with pytest.raises(NotFound, match="no hold with id 7, 8"):
        holds.release(store, [h.id, 7, 8], actor="cli:test", now_utc_ns=6)
    assert holds.get(store, h.id).active, "an unknown id in the list releases nothing"
    assert holds.release(store, [h.id, h.id], actor="cli:test", now_utc_ns=6)[0].released_by == "cli:test"
    assert holds.release(store, [h.id], actor="cli:test", now_utc_ns=7) == []  # already released: no-op
    assert holds.release(store, "all", actor="cli:test", now_utc_ns=7) == []
    assert [e.type for e in AuditLog(store).entries()] == ["hold.placed", "hold.released"]


def test_placing_and_releasing_are_audit_logged(store: Store) -> None:
    cam = store.add_camera(
        name="c", url="rtsp://127.0.0.1/x", username=None, password_blob=None, max_age_s=None, now_utc_ns=1
    ).id
    t = 1_795_250_000_000_000_000  # beyond 2^53: times are strings in the details
    h = holds.place(
        store, camera_id=cam, from_utc_ns=t, to_utc_ns=t + 5, reason="session", request="jti-1",
        actor="hub:h1", now_utc_ns=t + 1,
    )  # fmt: skip
    holds.extend(store, h.id, t + 900)  # not logged on its own
    holds.release(store, "all", actor="cli:root", now_utc_ns=t + 1000)
    placed, released = AuditLog(store).entries()
    assert (placed.type, placed.actor, placed.cameras, placed.request, placed.utc_ns) == (
        "hold.placed", "hub:h1", (cam,), "jti-1", t + 1,
    )  # fmt: skip
    assert placed.details == {"hold": h.id, "reason": "session", "from": str(t), "to": str(t + 5)}
    assert (released.type, released.actor, released.cameras, released.request, released.utc_ns) == (
        "hold.released", "cli:root", (cam,), "jti-1", t + 1000,
    )  # fmt: skip
    assert released.details == {
        "hold": h.id, "reason": "session", "from": str(t), "to": str(t + 900), "placed": str(t + 1),
        "placed_by": "hub:h1",
    }  # fmt: skip


# --- the CLI ---------------------------------------------------------------------------------------------


def test_cli_list_and_release(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = write_config(tmp_path / "edge.toml", data)
    cam = add_camera(data)
    t = 1_795_250_000_123_000_000  # 2026-11-21T08:33:20.123Z
    store = Store.open(data)
    try:
        h1 = _place(store, cam, t, t + 60 * NS_PER_S)
        h2 = _place(store, cam, t + HOUR_NS, t + HOUR_NS, "share")
    finally:
        store.close()

    out = edge_cli(cfg, "hold", "list").stdout
    assert "2026-11-21T08:33:20.123Z  2026-11-21T08:34:20.123Z  session" in out, out
    assert (
        f"jti-{t}" in out and "session" in out and "share" in out and "placed " in out and "by daemon" in out
    )
    rows = json.loads(edge_cli(cfg, "hold", "list", "--json").stdout)
    assert [(r["id"], r["camera"], r["reason"], r["active"]) for r in rows] == [
        (h1, cam, "session", True), (h2, cam, "share", True),
    ]  # fmt: skip
    assert rows[0]["from_utc_ns"] == t and rows[0]["from"] == "2026-11-21T08:33:20.123Z"

    # Unknown ids: a clear error, exit 1, and nothing released (not even the known id beside it).
    bad = edge_cli(cfg, "hold", "release", str(h1), "99", check=False)
    assert (bad.returncode, bad.stderr) == (1, "edge: no hold with id 99\n")
    none = edge_cli(cfg, "hold", "release", check=False)
    assert none.returncode == 1 and "--all" in none.stderr
    assert len(json.loads(edge_cli(cfg, "hold", "list", "--json").stdout)) == 2

    out = edge_cli(cfg, "hold", "release", str(h1)).stdout
    assert f"released hold {h1}: camera {cam}, 2026-11-21T08:33:20.123Z to 2026-11-21T08:34:20.123Z" in out
    again = edge_cli(cfg, "hold", "release", str(h1))
    assert again.returncode == 0 and f"hold {h1} was already released" in again.stdout
    assert [r["id"] for r in json.loads(edge_cli(cfg, "hold", "list", "--json").stdout)] == [h2]
    assert f"released hold {h2}" in edge_cli(cfg, "hold", "release", "--all").stdout
    assert edge_cli(cfg, "hold", "list").stdout == "no holds in force\n"
    everything = edge_cli(cfg, "hold", "list", "--all").stdout
    assert everything.count("released 20") == 2 and "by cli:" in everything

    types = [
        json.loads(line)["type"] for line in edge_cli(cfg, "audit", "show", "--json").stdout.splitlines()
    ]
    assert types.count("hold.placed") == 2 and types.count("hold.released") == 2
    verify = edge_cli(cfg, "audit", "verify")
    assert verify.stdout.splitlines()[-1].startswith("OK: "), verify.stdout
