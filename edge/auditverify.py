"""Checking the audit log offline: the box's own database, or an exported bundle without it.

Both recompute the Merkle tree from the entries' stored canonical bytes, check every checkpoint's signature
against the device key, compare each checkpoint's root with the recomputed root at its size, and — the part
that catches a rooted box rewriting its whole log and re-signing it — compare a *trusted* checkpoint kept off
the box. The first failure is reported naming the entry or checkpoint; nothing is trusted from the database
but the entries' bytes (stored leaf hashes only help name an entry changed after the fact).

The bundle format is documented in docs/audit.md; :func:`export_bundle` writes it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge import checkpoint, merkle
from edge.audit import AuditLog, StoredCheckpoint, embedded_seq, verifier_key
from edge.errors import Error
from edge.identity import PublicIdentity

BUNDLE_FORMAT = "edge-audit-bundle/1"
MAX_BUNDLE_MEMBER_BYTES = 1 << 31  # a zip bomb stops here, not in memory
MAX_BUNDLE_MEMBERS = 1 << 20


@dataclass
class Result:
    ok: bool
    entries: int = 0
    checkpoints: int = 0
    root: bytes = merkle.EMPTY_ROOT
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.ok:
            return f"FAIL: {self.problem}"
        return (
            f"OK: {self.entries} entries, {self.checkpoints} checkpoints,"
            f" root {base64.b64encode(self.root).decode()}"
        )


class _Fail(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


@dataclass
class _Target:
    label: str
    size: int
    root: bytes


def _check_notes(notes: Iterable[tuple[str, bytes, int | None]], public: PublicIdentity) -> list[_Target]:
    """Signature, key, origin and order of each checkpoint (label, note, size its row claims)."""
    targets: list[_Target] = []
    origin = public.log_origin
    for label, note, claimed in notes:
        try:
            cp = checkpoint.verify(note, name=origin, public_key=public.public_key, origin=origin)
        except checkpoint.CheckpointError as e:
            raise _Fail(f"{label}: {e.message}") from None
        if claimed is not None and claimed != cp.size:
            raise _Fail(f"{label}: its row says {claimed} entries but the signed note says {cp.size}")
        if targets and cp.size < targets[-1].size:
            raise _Fail(
                f"{label} covers {cp.size} entries, fewer than {targets[-1].label} before it"
                f" ({targets[-1].size}): the log was cut back and re-signed"
            )
        targets.append(_Target(label, cp.size, cp.root))
    return targets


def _trusted(path: Path | None, public: PublicIdentity) -> _Target | None:
    if path is None:
        return None
    try:
        note = path.read_bytes()
    except OSError as e:
        raise Error(f"cannot read {path}: {e.strerror}") from None
    origin = public.log_origin
    try:
        cp = checkpoint.verify(note, name=origin, public_key=public.public_key, origin=origin)
    except checkpoint.CheckpointError as e:
        raise _Fail(
            f"trusted checkpoint {path.name}: {e.message} — if it came from this box, the box's key or log"
            " has been replaced since"
        ) from None
    return _Target(f"trusted checkpoint {path.name}", cp.size, cp.root)


Rows = Iterable[tuple[int, bytes, bytes | None]]


def _check_entry(seq: int, raw: bytes, stored: bytes | None) -> None:
    said = embedded_seq(raw)
    if said != seq:
        raise _Fail(f"entry {seq}: it says it is entry {said} (moved or reordered)")
    if stored is not None and stored != merkle.leaf_hash(raw):
        raise _Fail(f"entry {seq}: its bytes have changed since it was appended")


def _replay(
    rows: Rows, frontier: merkle.Frontier, targets: list[_Target], reread: Callable[[int, int], Rows]
) -> merkle.Frontier:
    """Hash every entry into ``frontier`` and compare each target's root when the tree reaches its size.

    This is the verifier's hot path (a million entries within 3 s), so under a checkpoint each entry costs
    one hash and two comparisons; only when a root does not match are that checkpoint's entries read again
    (``reread(begin, end)``) to name the entry at fault. Entries past the last checkpoint, which no root
    covers, get the per-entry checks as they go.
    """
    if any(t.size == frontier.size for t in targets):
        root = frontier.root() if frontier.size else merkle.EMPTY_ROOT
        bad = next((t for t in targets if t.size == frontier.size and t.root != root), None)
        if bad is not None:
            raise _Fail(f"{bad.label} (size {bad.size}): not the root of the first {bad.size} entries")
    stops = sorted({t.size for t in targets if t.size > frontier.size})
    covered = stops[-1] if stops else frontier.size
    stops.append(-1)  # sentinel: never reached
    next_stop, stop_i = stops[0], 0
    last_good = expected = frontier.size
    pending: list[bytes] = []
    sha256 = hashlib.sha256
    for seq, raw, stored in rows:
        if seq != expected:
            if seq > expected:
                raise _Fail(f"entry {expected} is missing (the next one is entry {seq})")
            raise _Fail(f"entry {seq} appears twice or out of order")
        leaf = sha256(b"\x00" + raw).digest()
        if stored is not None and stored != leaf:
            raise _Fail(f"entry {seq}: its bytes have changed since it was appended")
        if seq >= covered:
            _check_entry(seq, raw, None)
        pending.append(leaf)
        expected += 1
        if expected == next_stop:
            frontier.extend(pending)
            pending.clear()
            root = frontier.root()
            for t in targets:
                if t.size == expected and t.root != root:
                    for s, r, st in reread(last_good, expected):
                        _check_entry(s, r, st)
                    raise _Fail(
                        f"{t.label} (size {t.size}): the entries do not hash to its root — an entry"
                        f" between {last_good} and {t.size - 1} was changed, removed or reordered"
                    )
            last_good = expected
            stop_i += 1
            next_stop = stops[stop_i]
        elif len(pending) >= 65536:
            frontier.extend(pending)
            pending.clear()
    frontier.extend(pending)
    for t in targets:
        if t.size > expected:
            raise _Fail(
                f"{t.label} covers {t.size} entries but the log has only {expected}:"
                " entries were removed from the end"
            )
    return frontier


def verify_log(log: AuditLog, public: PublicIdentity, *, trusted: Path | None = None) -> Result:
    try:
        stored = log.checkpoints()
        targets = _check_notes(((f"checkpoint {c.id}", c.note, c.tree_size) for c in stored), public)
        trusted_target = _trusted(trusted, public)
        if trusted_target is not None:
            targets = [*targets, trusted_target]
        covered = max((t.size for t in targets), default=0)
        rows = itertools.chain(log.raw_entries(0, covered, leaves=False), log.raw_entries(covered))
        frontier = _replay(rows, merkle.Frontier.empty(), targets, log.raw_entries)
    except _Fail as f:
        return Result(False, problem=f.problem)
    result = Result(True, entries=frontier.size, checkpoints=len(stored), root=frontier.root())
    covered = max((c.tree_size for c in stored), default=0)
    if covered < frontier.size:
        result.notes.append(f"{frontier.size - covered} newest entries are not yet under a checkpoint")
    return result


# --- bundles ------------------------------------------------------------------------------------

README = """\
edge audit bundle ({format})

The audit log of edge box {device_id}, entries {start} to {last} (of {size}), with every checkpoint the box
has signed. Verify it offline with `edge audit verify --bundle THIS.zip [--trusted-checkpoint NOTE]`, or with
your own tool from the format in edge's docs/audit.md:

  manifest.json      format, origin, device id, the entry range [start, end)
  device.pub         the box's Ed25519 public key (32 raw bytes); device.vkey: the same as a C2SP verifier key
  entries.jsonl      one entry per line: the exact canonical JSON (RFC 8785) bytes that were hashed
  frontier.json      the Merkle subtree hashes left of the first entry (empty when start = 0)
  checkpoints/*.txt  signed notes (C2SP tlog-checkpoint, signed-note), exactly as the box stored them
  proofs.json        RFC 9162 consistency proofs between size `end` and each checkpoint outside (start, end]

Keep a checkpoint somewhere the box cannot reach: it is what shows a rewritten log.
"""


def export_bundle(
    log: AuditLog,
    public: PublicIdentity,
    out: Path,
    *,
    start: int,
    end: int,
    created_utc_ns: int,
) -> int:
    """Write entries [start, end) with everything needed to verify them alone; returns the bundle size."""
    size = log.size()
    if not 0 <= start <= end <= size:
        raise Error(f"entry range {start}..{end} is outside the log (0..{size})")
    cps = log.checkpoints()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        manifest = {
            "format": BUNDLE_FORMAT,
            "origin": public.log_origin,
            "device_id": public.device_id,
            "start": start,
            "end": end,
            "log_size": size,
            "created": str(created_utc_ns),
        }
        z.writestr("manifest.json", json.dumps(manifest, indent=2) + "\n")
        z.writestr("device.pub", public.public_key)
        z.writestr("device.vkey", verifier_key(public) + "\n")
        z.writestr("entries.jsonl", b"".join(raw + b"\n" for _s, raw, _l in log.raw_entries(start, end)))
        frontier = [log.get_node(level, idx) for level, idx in merkle.subtrees(start)]
        z.writestr("frontier.json", json.dumps([base64.b64encode(h).decode() for h in frontier]) + "\n")
        proofs = []
        for c in cps:
            z.writestr(_cp_name(c), c.note)
            if start < c.tree_size <= end:
                continue  # recomputed from the entries themselves
            old, new = sorted((c.tree_size, end))
            proof = log.consistency_proof(old, new) if 0 < old < new else []
            proofs.append(
                {
                    "checkpoint": _cp_name(c),
                    "old_size": old,
                    "new_size": new,
                    "proof": [base64.b64encode(h).decode() for h in proof],
                }
            )
        z.writestr("proofs.json", json.dumps(proofs, indent=1) + "\n")
        z.writestr(
            "README.txt",
            README.format(
                format=BUNDLE_FORMAT, device_id=public.device_id, start=start, last=end - 1, size=size
            ),
        )
    data = buf.getvalue()
    try:
        with out.open("xb") as f:  # never overwrite
            f.write(data)
    except FileExistsError:
        raise Error(f"{out} exists; not overwriting it") from None
    except OSError as e:
        raise Error(f"cannot write {out}: {e.strerror}") from None
    return len(data)


def _cp_name(c: StoredCheckpoint) -> str:
    return f"checkpoints/{c.id:06d}-{c.tree_size}.txt"


def verify_bundle(path: Path, *, trusted: Path | None = None) -> Result:
    try:
        return _verify_bundle(path, trusted)
    except _Fail as f:
        return Result(False, problem=f.problem)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as e:
        return Result(False, problem=f"{path.name} is not a readable audit bundle: {e}")


def _verify_bundle(path: Path, trusted: Path | None) -> Result:
    try:
        z = zipfile.ZipFile(path)
    except OSError as e:
        raise Error(f"cannot read {path}: {e.strerror}") from None
    with z:
        infos = z.infolist()
        if len(infos) > MAX_BUNDLE_MEMBERS or any(i.file_size > MAX_BUNDLE_MEMBER_BYTES for i in infos):
            raise _Fail(f"{path.name}: too many or too large members")

        def read(name: str) -> bytes:
            return z.read(name)

        manifest = json.loads(read("manifest.json"))
        if manifest.get("format") != BUNDLE_FORMAT:
            raise _Fail(f"{path.name}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT}")
        public = PublicIdentity(read("device.pub"))
        if len(public.public_key) != 32 or manifest.get("origin") != public.log_origin:
            raise _Fail(
                f"{path.name}: the device key does not match the log's origin {manifest.get('origin')!r}"
            )
        start, end = int(manifest["start"]), int(manifest["end"])
        hashes = [base64.b64decode(h, validate=True) for h in json.loads(read("frontier.json"))]
        shape = merkle.subtrees(start)
        if len(hashes) != len(shape) or any(len(h) != merkle.HASH_SIZE for h in hashes):
            raise _Fail(f"frontier.json does not describe a tree of {start} entries")
        given = dict(zip(shape, hashes, strict=True))
        frontier = merkle.Frontier.load(start, lambda level, idx: given[(level, idx)])
        cp_names = sorted(n for n in z.namelist() if n.startswith("checkpoints/") and n.endswith(".txt"))
        targets = _check_notes(((n, read(n), None) for n in cp_names), public)
        by_name = dict(zip(cp_names, targets, strict=True))
        lines = read("entries.jsonl").split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()

        def rows(begin: int = start, end: int = start + len(lines)) -> Rows:
            return ((i, lines[i - start], None) for i in range(begin, end))

        inside = [t for t in targets if start < t.size <= end]
        trusted_target = _trusted(trusted, public)
        if trusted_target is not None and start < trusted_target.size <= end:
            inside.append(trusted_target)
        frontier = _replay(rows(), frontier, inside, rows)
        if frontier.size != end:
            raise _Fail(
                f"entries.jsonl holds entries {start}..{frontier.size - 1}, the manifest says ..{end - 1}"
            )
        end_root = frontier.root()
        tied = {(t.size, t.root) for t in inside}
        for p in json.loads(read("proofs.json")):
            t = by_name[p["checkpoint"]]
            old, new = int(p["old_size"]), int(p["new_size"])
            if sorted((t.size, end)) != [old, new]:
                raise _Fail(f"proofs.json: the proof for {t.label} is between the wrong sizes")
            proof = [base64.b64decode(h, validate=True) for h in p["proof"]]
            old_root, new_root = (t.root, end_root) if t.size <= end else (end_root, t.root)
            ok = (old == new and old_root == new_root) or (old == 0 and old_root == merkle.EMPTY_ROOT)
            if not ok and not merkle.verify_consistency(old, new, old_root, new_root, proof):
                raise _Fail(f"{t.label} (size {t.size}) is not consistent with entries {start}..{end - 1}")
            tied.add((t.size, t.root))
        untied = [t.label for t in targets if (t.size, t.root) not in tied]
        if untied:
            raise _Fail(f"no proof ties {untied[0]} to the entries")
        if trusted_target is not None and (trusted_target.size, trusted_target.root) not in tied:
            raise _Fail(
                f"{trusted_target.label} (size {trusted_target.size}) is not among this bundle's checkpoints:"
                " the box never issued it, or its log was rewritten"
            )
    return Result(True, entries=end - start, checkpoints=len(targets), root=end_root)
