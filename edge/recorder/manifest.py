"""The export manifest: what a clip was cut from, as JSON, and the check of a clip against it.

A manifest sits next to its clip (``<clip>.manifest.json``) and records the requested range, the clip's
wall-time span, SHA-256 and size, each source segment with the SHA-256 of the bytes the export read, and
the gaps and overlaps inside the clip. This module holds the dataclasses, their JSON form (instants as
decimal nanosecond strings plus ISO-8601) and :func:`verify_manifest`; writing a clip is
:mod:`edge.recorder.export`'s job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.clock import NS_PER_S
from edge.errors import Malformed, NotFound

MANIFEST_FORMAT = "edge-export-manifest"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
HASH_CHUNK_BYTES = 4 << 20


# --- the manifest ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSegment:
    """One recording segment the clip was cut from: ``sha256`` covers its first ``bytes`` bytes."""

    path: str  # relative to the data directory
    start_utc_ns: int
    end_utc_ns: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Gap:
    """A wall-time interval: footage missing between two segments (or, in ``overlaps``, recorded twice)."""

    from_utc_ns: int
    to_utc_ns: int

    @property
    def duration_ns(self) -> int:
        return self.to_utc_ns - self.from_utc_ns


@dataclass(frozen=True)
class Manifest:
    format_version: int
    camera_id: int
    requested_from_utc_ns: int
    requested_to_utc_ns: int
    clip_start_utc_ns: int  # wall time of clip time 0 (the first keyframe)
    clip_end_utc_ns: int  # wall time just after the last video frame
    sources: tuple[SourceSegment, ...]
    gaps: tuple[Gap, ...]  # time jumps inside the clip
    overlaps: tuple[Gap, ...]  # wall clock stepped back: later footage placed after the earlier
    clip_file: str  # the clip's file name, next to the manifest
    clip_sha256: str
    clip_size: int
    created_utc_ns: int
    edge_version: str

    @property
    def duration_s(self) -> float:
        """Length of the clip's timeline (gaps included)."""
        return (self.clip_end_utc_ns - self.clip_start_utc_ns) / NS_PER_S

    def to_json(self) -> str:
        return json.dumps(self._to_obj(), indent=2) + "\n"

    def _to_obj(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": self.format_version,
            "edge_version": self.edge_version,
            "created": _instant(self.created_utc_ns),
            "camera_id": self.camera_id,
            "requested": {
                "from": _instant(self.requested_from_utc_ns),
                "to": _instant(self.requested_to_utc_ns),
            },
            "clip": {
                "file": self.clip_file,
                "start": _instant(self.clip_start_utc_ns),
                "end": _instant(self.clip_end_utc_ns),
                "sha256": self.clip_sha256,
                "bytes": self.clip_size,
            },
            "sources": [
                {
                    "path": s.path,
                    "start": _instant(s.start_utc_ns),
                    "end": _instant(s.end_utc_ns),
                    "bytes": s.bytes,
                    "sha256": s.sha256,
                }
                for s in self.sources
            ],
            "gaps": [_interval(g) for g in self.gaps],
            "overlaps": [_interval(g) for g in self.overlaps],
        }

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest; :class:`Malformed` names the first field that is wrong."""
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise Malformed(f"manifest is not JSON: {e}") from None
        r = _Fields(obj, "manifest")
        if r.text("format") != MANIFEST_FORMAT:
            raise Malformed(f"manifest: format is not {MANIFEST_FORMAT!r}")
        version = r.integer("version")
        if version != MANIFEST_VERSION:
            raise Malformed(
                f"manifest: version {version} is not supported (this edge reads {MANIFEST_VERSION})"
            )
        req, clip = r.child("requested"), r.child("clip")
        return cls(
            format_version=version,
            camera_id=r.integer("camera_id"),
            requested_from_utc_ns=req.instant("from"),
            requested_to_utc_ns=req.instant("to"),
            clip_start_utc_ns=clip.instant("start"),
            clip_end_utc_ns=clip.instant("end"),
            sources=tuple(
                SourceSegment(
                    s.text("path"), s.instant("start"), s.instant("end"), s.integer("bytes"), s.text("sha256")
                )
                for s in r.children("sources")
            ),
            gaps=tuple(Gap(g.instant("from"), g.instant("to")) for g in r.children("gaps")),
            overlaps=tuple(Gap(g.instant("from"), g.instant("to")) for g in r.children("overlaps")),
            clip_file=clip.text("file"),
            clip_sha256=clip.text("sha256"),
            clip_size=clip.integer("bytes"),
            created_utc_ns=r.instant("created"),
            edge_version=r.text("edge_version"),
        )


def iso_utc(utc_ns: int) -> str:
    """``2026-05-01T12:00:00.123456789Z``: ISO-8601, UTC, nanoseconds."""
    s, ns = divmod(utc_ns, NS_PER_S)
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def _instant(utc_ns: int) -> dict[str, str]:
    # Decimal string: UTC ns exceed the integers JSON readers keep exactly (2^53).
    return {"utc_ns": str(utc_ns), "iso": iso_utc(utc_ns)}


def _interval(g: Gap) -> dict[str, Any]:
    return {"from": _instant(g.from_utc_ns), "to": _instant(g.to_utc_ns), "duration_ns": str(g.duration_ns)}


class _Fields:
    """Typed access to one JSON object of the manifest; errors name the field path."""

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise Malformed(f"{where}: expected an object")
        self._obj: dict[str, object] = obj
        self._where = where

    def _get(self, key: str, kind: type) -> Any:
        value = self._obj.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise Malformed(f"{self._where}.{key}: expected {kind.__name__}")
        return value

    def text(self, key: str) -> str:
        return str(self._get(key, str))

    def integer(self, key: str) -> int:
        return int(self._get(key, int))

    def child(self, key: str) -> _Fields:
        return _Fields(self._get(key, dict), f"{self._where}.{key}")

    def children(self, key: str) -> list[_Fields]:
        return [_Fields(v, f"{self._where}.{key}[{i}]") for i, v in enumerate(self._get(key, list))]

    def instant(self, key: str) -> int:
        text = self.child(key).text("utc_ns")
        if not text.isascii() or not text.isdigit():
            raise Malformed(f"{self._where}.{key}.utc_ns: expected a decimal string")
        return int(text)


# --- files -------------------------------------------------------------------------------------------------


def manifest_path_for(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + MANIFEST_SUFFIX)


def sha256_file(path: Path, limit: int | None = None) -> tuple[str, int]:
    """(hex SHA-256, bytes hashed) of the file, or of its first ``limit`` bytes; large chunks."""
    sha = hashlib.sha256()
    buf = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buf)
    done = 0
    with path.open("rb", buffering=0) as f:
        while limit is None or done < limit:
            want = HASH_CHUNK_BYTES if limit is None else min(HASH_CHUNK_BYTES, limit - done)
            got = f.readinto(view[:want])
            if not got:
                break
            sha.update(view[:got])
            done += got
    return sha.hexdigest(), done


# --- verification ------------------------------------------------------------------------------------------


def verify_manifest(manifest_path: Path, data_dir: Path | None) -> list[str]:
    """Check a clip (next to its manifest) against the manifest and, given ``data_dir``, the source
    segments still in the ring buffer. Returns the problems found; empty means everything matched.

    Raises :class:`NotFound` if the manifest is missing and :class:`Malformed` if it cannot be parsed.
    Blocking (hashes files): call it off the event loop.
    """
    try:
        manifest = Manifest.from_json(manifest_path.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"no manifest at {manifest_path}") from None
    problems: list[str] = []
    clip = manifest_path.parent / manifest.clip_file
    if not clip.is_file():
        problems.append(f"clip {manifest.clip_file}: missing")
    else:
        digest, size = sha256_file(clip)
        if size != manifest.clip_size:
            problems.append(f"clip {manifest.clip_file}: {size} bytes, manifest says {manifest.clip_size}")
        if digest != manifest.clip_sha256:
            problems.append(f"clip {manifest.clip_file}: SHA-256 {digest} does not match the manifest")
    if data_dir is not None:
        for src in manifest.sources:
            problems.extend(_verify_source(data_dir, src))
    return problems


def _verify_source(data_dir: Path, src: SourceSegment) -> list[str]:
    path = data_dir / src.path
    if not path.is_file():
        return [f"source {src.path}: missing (deleted by retention?)"]
    digest, size = sha256_file(path, src.bytes)
    if size < src.bytes:
        return [f"source {src.path}: {size} bytes, manifest used {src.bytes}"]
    if digest != src.sha256:
        return [f"source {src.path}: SHA-256 of its first {src.bytes} bytes does not match the manifest"]
    return []
