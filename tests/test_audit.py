"""The audit log against what an attacker with root on the box could do to the SQLite file, and the owner's
offline checks (`edge audit verify`, bundles, a trusted checkpoint kept off the box)."""

from __future__ import annotations

import base64
import json
import sqlite3
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import checkpoint, identity, merkle
from edge.audit import AuditLog, Event, decode, embedded_seq, encode
from edge.auditverify import verify_log
from edge.errors import Malformed
from edge.store import Store
from tests.harness import edge_cli, write_config

SYNTH = "synthetic:?w=320&h=240&fps=10&gop=1"


def _events(n: int, start: int = 0) -> list[Event]:
    return [
        Event(
            "request.received",
            "hub:test",
            cameras=(i % 3,),
            request=f"req-{start + i}",
            details={"n": start + i},
        )
        for i in range(n)
    ]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    store = Store.open(d)
    ident = identity.load_or_create(d)
    log = AuditLog(store)
    log.append(_events(10), now_utc_ns=1_000)
    log.checkpoint(ident, now_utc_ns=2_000)
    log.append(_events(7, 10), now_utc_ns=3_000)
    log.checkpoint(ident, now_utc_ns=4_000)
    log.log(
        Event("camera.added", "cli:root", cameras=(1,), details={"name": "Marker-ABCDEF"}), now_utc_ns=5_000
    )
    store.close()
    return d


def _verify(d: Path, trusted: Path | None = None) -> str:
    store = Store.open(d)
    try:
        return verify_log(AuditLog(store), identity.load_public(d), trusted=trusted).line()
    finally:
        store.close()


def _sql(d: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """What root can do: drop the triggers and write whatever it likes."""
    conn = sqlite3.connect(d / "edge.db", isolation_level=None)
    for trig in ("audit_entries_no_update", "audit_entries_no_delete", "audit_nodes_no_delete",
                 "audit_checkpoints_no_update", "audit_checkpoints_no_delete"):  # fmt: skip
        conn.execute(f"DROP TRIGGER IF EXISTS {trig}")
    for sql, args in statements:
        conn.execute(sql, args)
    conn.close()


def _entry(d: Path, seq: int) -> bytes:
    conn = sqlite3.connect(d / "edge.db")
    raw = bytes(conn.execute("SELECT entry FROM audit_entries WHERE seq = ?", (seq,)).fetchone()[0])
    conn.close()
    return raw


# --- entries ------------------------------------------------------------------------------------


def test_entries_are_canonical_json_with_time_as_text() -> None:
    raw = encode(
        7, 1_795_250_000_123_456_789, Event("camera.added", "cli:root", (3,), None, {"b": 1, "a": "é"})
    )
    assert (
        raw
        == (
            '{"actor":"cli:root","cameras":[3],"details":{"a":"é","b":1},"request":null,"seq":7,'
            '"time":"1795250000123456789","type":"camera.added","v":1}'
        ).encode()
    )
    assert embedded_seq(raw) == 7 and decode(raw).utc_ns == 1_795_250_000_123_456_789


def test_unknown_event_types_and_huge_numbers_are_refused() -> None:
    with pytest.raises(Malformed, match="unknown audit event type"):
        encode(0, 1, Event("camera.hacked", "x"))
    with pytest.raises(Malformed, match="canonicalised"):
        encode(0, 1, Event("camera.added", "x", details={"n": 2**60}))


def test_embedded_seq_is_the_top_level_one_whatever_the_details_hold() -> None:
    raw = encode(5, 1, Event("camera.added", "x", request='x,"seq":9,', details={"seq": 8, "z": {"seq": 7}}))
    assert embedded_seq(raw) == 5


def test_triggers_refuse_update_and_delete(data: Path) -> None:
    conn = sqlite3.connect(data / "edge.db")
    for sql in (
        "UPDATE audit_entries SET entry = x'00' WHERE seq = 1",
        "DELETE FROM audit_entries WHERE seq = 1",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_nodes SET hash = zeroblob(32)",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
    conn.close()


# --- verify -------------------------------------------------------------------------------------


def test_appends_across_restarts_verify(data: Path) -> None:
    assert _verify(data).startswith("OK: 18 entries, 2 checkpoints, root ")
    store = Store.open(data)
    log = AuditLog(store)
    log.append(_events(5, 100), now_utc_ns=9_000)
    cp = log.checkpoint(identity.load_or_create(data), now_utc_ns=9_001)
    assert cp.tree_size == 23
    # The root the log reports is the reference root of its leaves, and the checkpoint signs it.
    leaves = [merkle.leaf_hash(raw) for _s, raw, _l in log.raw_entries()]
    assert log.root() == merkle.root_from(leaves)
    store.close()
    assert _verify(data).startswith(
        "OK: 23 entries, 3 checkpoints, root " + base64.b64encode(merkle.root_from(leaves)).decode()
    )


def test_a_changed_byte_in_the_file_is_caught_and_named(data: Path) -> None:
    db = data / "edge.db"
    for wal in data.glob("edge.db-*"):
        wal.unlink()  # closed cleanly: everything is in the main file
    blob = db.read_bytes()
    assert blob.count(b"Marker-ABCDEF") == 1
    db.write_bytes(blob.replace(b"Marker-ABCDEF", b"Marker-ABCDEG"))  # a raw edit, no SQL, no triggers
    assert _verify(data) == "FAIL: entry 17: its bytes have changed since it was appended"


def test_a_changed_entry_with_a_matching_stored_hash_is_caught_by_the_checkpoint(data: Path) -> None:
    raw = _entry(data, 4).replace(b'"n":4', b'"n":5')
    _sql(data, ("UPDATE audit_entries SET entry = ?, leaf = ? WHERE seq = 4", (raw, merkle.leaf_hash(raw))))
    assert _verify(data) == (
        "FAIL: checkpoint 1 (size 10): the entries do not hash to its root — an entry between 0 and 9 was"
        " changed, removed or reordered"
    )


def test_a_deleted_entry_is_named(data: Path) -> None:
    _sql(data, ("DELETE FROM audit_entries WHERE seq = 12", ()))
    assert _verify(data) == "FAIL: entry 12 is missing (the next one is entry 13)"


def test_two_reordered_entries_are_named(data: Path) -> None:
    a, b = _entry(data, 3), _entry(data, 4)
    _sql(
        data,
        ("UPDATE audit_entries SET entry = ?, leaf = ? WHERE seq = 3", (b, merkle.leaf_hash(b))),
        ("UPDATE audit_entries SET entry = ?, leaf = ? WHERE seq = 4", (a, merkle.leaf_hash(a))),
    )
    assert _verify(data) == "FAIL: entry 3: it says it is entry 4 (moved or reordered)"


def test_a_truncated_tail_is_caught(data: Path) -> None:
    _sql(data, ("DELETE FROM audit_entries WHERE seq >= 15", ()))
    assert _verify(data) == (
        "FAIL: checkpoint 2 covers 17 entries but the log has only 15: entries were removed from the end"
    )


def test_a_truncated_tail_with_its_checkpoints_replaced_is_caught_by_the_trusted_checkpoint(
    data: Path, tmp_path: Path
) -> None:
    kept = tmp_path / "kept-off-box.txt"
    kept.write_text(edge_cli(write_config(tmp_path / "e.toml", data), "audit", "checkpoint").stdout)
    # Root: cut the log back to 12 entries and sign a fresh checkpoint with the box's own key.
    _sql(data, ("DELETE FROM audit_entries WHERE seq >= 12", ()), ("DELETE FROM audit_checkpoints", ()),
         ("DELETE FROM audit_nodes", ()))  # fmt: skip
    store = Store.open(data)
    log = AuditLog(store)
    frontier = merkle.Frontier.empty()
    nodes = [n for _s, raw, _l in log.raw_entries() for n in frontier.append(merkle.leaf_hash(raw))]
    conn = sqlite3.connect(data / "edge.db", isolation_level=None)
    conn.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
    conn.close()
    log.checkpoint(identity.load_or_create(data), now_utc_ns=10_000)
    store.close()
    assert _verify(data).startswith("OK: 12 entries")  # consistent on its own…
    assert _verify(data, trusted=kept) == (  # …but not with what the owner kept
        "FAIL: trusted checkpoint kept-off-box.txt covers 18 entries but the log has only 12:"
        " entries were removed from the end"
    )


def test_a_whole_log_replaced_and_re_signed_is_caught_by_the_trusted_checkpoint(
    data: Path, tmp_path: Path
) -> None:
    """Root rewrites every entry and every checkpoint, consistently, with the box's key: only a checkpoint
    kept off the box shows it."""
    cfg = write_config(tmp_path / "e.toml", data)
    kept = tmp_path / "kept.txt"
    kept.write_text(edge_cli(cfg, "audit", "checkpoint").stdout)
    _sql(
        data,
        ("DELETE FROM audit_entries", ()),
        ("DELETE FROM audit_checkpoints", ()),
        ("DELETE FROM audit_nodes", ()),
    )
    store = Store.open(data)
    log = AuditLog(store)
    ident = identity.load_or_create(data)
    log.append(_events(25, 500), now_utc_ns=1_000)  # a different history, longer than the real one
    log.checkpoint(ident, now_utc_ns=2_000)
    store.close()
    assert _verify(data).startswith("OK: 25 entries, 1 checkpoints")
    assert _verify(data, trusted=kept) == (
        "FAIL: trusted checkpoint kept.txt (size 18): the entries do not hash to its root — an entry"
        " between 0 and 17 was changed, removed or reordered"
    )
    out = edge_cli(cfg, "audit", "verify", "--trusted-checkpoint", str(kept), check=False)
    assert out.returncode == 1 and out.stdout.startswith("FAIL: trusted checkpoint kept.txt")


def test_a_new_device_key_does_not_sign_for_the_old_one(data: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "e.toml", data)
    kept = tmp_path / "kept.txt"
    kept.write_text(edge_cli(cfg, "audit", "checkpoint").stdout)
    (data / "device.key").unlink()
    (data / "device.pub").unlink()
    identity.load_or_create(data)  # root makes a new key to re-sign a rewritten log
    line = _verify(data, trusted=kept)
    assert line.startswith("FAIL: ")
    assert "unknown key" in line or "checkpoint 1" in line


def _resigned(d: Path, cp_id: int, mutate: object) -> None:
    conn = sqlite3.connect(d / "edge.db")
    note = bytes(conn.execute("SELECT note FROM audit_checkpoints WHERE id = ?", (cp_id,)).fetchone()[0])
    conn.close()
    _sql(d, ("UPDATE audit_checkpoints SET note = ? WHERE id = ?", (mutate(note), cp_id)))  # type: ignore[operator]


def test_a_checkpoint_with_a_bad_signature(data: Path) -> None:
    def flip(note: bytes) -> bytes:
        head, sig = note.rsplit(b" ", 1)
        raw = bytearray(base64.b64decode(sig))
        raw[-1] ^= 1
        return head + b" " + base64.b64encode(bytes(raw)) + b"\n"

    _resigned(data, 2, flip)
    line = _verify(data)
    assert line.startswith("FAIL: checkpoint 2: ") and "signature" in line


def test_a_checkpoint_signed_by_an_unknown_key(data: Path) -> None:
    public = identity.load_public(data)
    other = Ed25519PrivateKey.generate()
    cp = checkpoint.Checkpoint(public.log_origin, 10, merkle.EMPTY_ROOT)
    _resigned(data, 1, lambda _n: checkpoint.sign(cp, public.log_origin, other))
    line = _verify(data)
    assert line.startswith("FAIL: checkpoint 1: ") and "unknown key" in line


def test_a_checkpoint_for_the_wrong_origin(data: Path) -> None:
    ident = identity.load_or_create(data)
    cp = checkpoint.Checkpoint("edge.audit/someone-else", 10, merkle.EMPTY_ROOT)
    _resigned(data, 1, lambda _n: checkpoint.sign(cp, ident.public.log_origin, ident.private_key))
    line = _verify(data)
    assert line.startswith("FAIL: checkpoint 1: ") and "origin" in line


def test_a_checkpoint_with_data_after_the_signatures(data: Path) -> None:
    _resigned(data, 1, lambda n: n + b"trailing\n")
    line = _verify(data)
    assert line.startswith("FAIL: checkpoint 1: ") and "after the signatures" in line


# --- CLI, bundles, wiring -----------------------------------------------------------------------


def test_identity_and_cli_verify(data: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "e.toml", data)
    info = json.loads(edge_cli(cfg, "identity", "--json").stdout)
    public = identity.load_public(data)
    assert info["device_id"] == public.device_id and info["verifier_key"].startswith(public.log_origin + "+")
    assert (data / "device.key").stat().st_mode & 0o777 == 0o600
    key = (data / "device.key").read_bytes()
    out = edge_cli(cfg, "identity").stdout
    assert base64.b64encode(key).decode() not in out and key.hex() not in out
    proc = edge_cli(cfg, "audit", "verify")
    assert proc.stdout.strip().splitlines()[-1].startswith("OK: 18 entries, 2 checkpoints, root ")


def test_bundles_verify_alone_whole_and_ranged(data: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "e.toml", data)
    kept = tmp_path / "kept.txt"
    kept.write_text(edge_cli(cfg, "audit", "checkpoint").stdout)
    store = Store.open(data)
    AuditLog(store).append(_events(40, 1000), now_utc_ns=50_000)
    store.close()
    whole = tmp_path / "whole.zip"
    edge_cli(cfg, "audit", "export", "-o", str(whole))
    out = edge_cli(cfg, "audit", "verify", "--bundle", str(whole), "--trusted-checkpoint", str(kept)).stdout
    assert out.startswith("OK: 58 entries")
    # A range in the middle (entries timed 3_000..5_000): its own frontier and proofs make it verifiable.
    ranged = tmp_path / "ranged.zip"
    edge_cli(cfg, "audit", "export", "-o", str(ranged), "--from", "3000", "--to", "5000")
    with zipfile.ZipFile(ranged) as z:
        manifest = json.loads(z.read("manifest.json"))
        assert (manifest["start"], manifest["end"]) == (10, 18)
        assert len(json.loads(z.read("frontier.json"))) == 2  # entries 0..9 = a subtree of 8 and one of 2
    out = edge_cli(cfg, "audit", "verify", "--bundle", str(ranged), "--trusted-checkpoint", str(kept)).stdout
    assert out.startswith("OK: 8 entries")
    # Tamper with one entry inside the ranged bundle.
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(ranged) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            body = src.read(item)
            if item.filename == "entries.jsonl":
                body = body.replace(b'"n":12', b'"n":13')
            dst.writestr(item, body)
    proc = edge_cli(cfg, "audit", "verify", "--bundle", str(bad), check=False)
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL: ")
    assert "between 10 and" in proc.stdout or "not consistent" in proc.stdout


def test_camera_and_export_events_are_logged_where_they_happen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = write_config(tmp_path / "e.toml", data)
    edge_cli(cfg, "cameras", "add", SYNTH, "--name", "till")
    edge_cli(cfg, "cameras", "set", "1", "--name", "Till", "--lat", "51.5", "--lon", "-0.1")
    edge_cli(cfg, "consent", "set", "1", "--level", "integrated")
    edge_cli(cfg, "cameras", "remove", "1")
    rows = [json.loads(line) for line in edge_cli(cfg, "audit", "show", "--json").stdout.splitlines()]
    assert [r["type"] for r in rows] == [
        "camera.added",
        "camera.changed",
        "consent.changed",
        "camera.removed",
    ]
    assert rows[2]["details"] == {"from": "private", "to": "integrated"} and rows[2]["cameras"] == [1]
    assert rows[1]["details"] == {"lat": "51.5", "lon": "-0.1", "name": "Till"}
    assert all(r["actor"].startswith("cli:") for r in rows)
    table = edge_cli(cfg, "audit", "show", "--type", "consent").stdout
    assert "consent.changed" in table and "camera.added" not in table
    assert edge_cli(cfg, "audit", "verify").stdout.strip().splitlines()[-1].startswith("OK: 4 entries")


def test_daemon_makes_the_identity_and_checkpoints_at_start_on_request_and_at_stop(tmp_path: Path) -> None:
    from tests.harness import Daemon

    data = tmp_path / "data"
    cfg = write_config(tmp_path / "e.toml", data)
    edge_cli(cfg, "cameras", "add", SYNTH, "--name", "till")  # one entry before the daemon ever ran
    with Daemon(cfg, data, tmp_path / "daemon.log") as daemon:
        daemon.start()
        assert (data / "device.key").stat().st_mode & 0o777 == 0o600
        assert (data / "device.pub").stat().st_mode & 0o777 == 0o644
        note = edge_cli(cfg, "audit", "checkpoint").stdout  # answered by the daemon over its socket
        public = identity.load_public(data)
        cp = checkpoint.verify(note.encode(), name=public.log_origin, public_key=public.public_key,
                               origin=public.log_origin)  # fmt: skip
        assert cp.size == 1
        edge_cli(cfg, "cameras", "set", "1", "--name", "Till")
        daemon.stop()
        log_text = daemon.log_text()
    store = Store.open(data)
    sizes = [c.tree_size for c in AuditLog(store).checkpoints()]
    store.close()
    assert sizes == [1, 2]  # at start (reused on request: nothing new), then at stop after the change
    assert "event=audit.checkpoint" in log_text
    assert (data / "device.key").read_bytes().hex() not in log_text
    assert (
        edge_cli(cfg, "audit", "verify")
        .stdout.strip()
        .splitlines()[-1]
        .startswith("OK: 2 entries, 2 checkpoints")
    )


def test_every_inclusion_proof_from_the_stored_tree_verifies_and_a_flipped_bit_fails(tmp_path: Path) -> None:
    """For random logs kept in SQLite: the proofs the box serves (from its stored subtrees) verify against
    the root it signs, and any single flipped bit in an entry or a proof hash does not."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    counter = iter(range(10**6))

    @settings(max_examples=25, deadline=None)
    @given(
        sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6),
        pick=st.integers(0, 10**6),
        bit=st.integers(0, 10**6),
    )
    def check(sizes: list[int], pick: int, bit: int) -> None:
        d = tmp_path / f"h{next(counter)}"
        store = Store.open(d, durable=False)
        try:
            log = AuditLog(store)
            for i, n in enumerate(sizes):  # several batches, as the daemon appends
                log.append(_events(n, 100 * i), now_utc_ns=1 + i)
            size = log.size()
            root = log.root()
            rows = list(log.raw_entries())
            assert root == merkle.root_from([merkle.leaf_hash(r) for _s, r, _l in rows])
            for seq, raw, _l in rows:
                proof = log.inclusion_proof(seq, size)
                assert merkle.verify_inclusion(merkle.leaf_hash(raw), seq, size, proof, root)
            seq = pick % size
            raw = rows[seq][1]
            proof = log.inclusion_proof(seq, size)
            flipped = bytearray(raw)
            flipped[bit % len(raw)] ^= 1 << (bit % 8)
            assert not merkle.verify_inclusion(merkle.leaf_hash(bytes(flipped)), seq, size, proof, root)
            if proof:
                j = bit % len(proof)
                bad = bytearray(proof[j])
                bad[bit % 32] ^= 1 << (bit % 8)
                tampered = [*proof[:j], bytes(bad), *proof[j + 1 :]]
                assert not merkle.verify_inclusion(merkle.leaf_hash(raw), seq, size, tampered, root)
            for old in range(1, size):
                assert merkle.verify_consistency(
                    old, size, log.root(old), root, log.consistency_proof(old, size)
                )
        finally:
            store.close()

    check()
