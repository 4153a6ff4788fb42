"""Faststart: move a finished MP4's ``moov`` in front of its media data, in place, hashing as it goes.

libav's mp4 muxer writes ``ftyp`` … ``mdat`` ``moov``; players that stream want the index first. This
module rewrites the file to ``ftyp`` ``moov`` … ``mdat`` (what libav's ``+faststart`` does): it shifts every
chunk offset (``stco``/``co64``) in the ``moov`` by the ``moov``'s size, then moves the media up chunk by
chunk. Each final byte is hashed as it is written, on a worker thread, so the clip's SHA-256 costs no extra
pass over the file. Blocking: run it off the event loop.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from edge.errors import ExportError

CHUNK_BYTES = 4 << 20


class _OrderedSha256:
    """SHA-256 of chunks fed in order from one thread and hashed on another, so hashing overlaps I/O."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="export-hash")
        self._pending: deque[Future[None]] = deque()

    def update(self, data: bytes) -> None:
        self._pending.append(self._pool.submit(self._sha.update, data))
        while len(self._pending) > 4:  # bounded memory
            self._pending.popleft().result()

    def hexdigest(self) -> str:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown()
        return self._sha.hexdigest()


def faststart_and_hash(path: Path) -> tuple[str, int]:
    """Move the ``moov`` in front of the media data, in place (what libav's ``+faststart`` does), hashing
    the final bytes as they are written, so the clip's SHA-256 needs no extra pass over the file; fsync.

    Returns (hex SHA-256, size). Layout before: ``ftyp`` … ``mdat`` ``moov``; after: ``ftyp`` ``moov`` …
    ``mdat``.
    """
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    sha = _OrderedSha256()
    try:
        size = os.fstat(fd).st_size
        boxes = _top_level_boxes(fd, size)
        if [b[0] for b in boxes[:1]] != ["ftyp"] or boxes[-1][0] != "moov" or len(boxes) < 3:
            raise ExportError(f"unexpected box layout from the muxer: {[b[0] for b in boxes]}")
        head_end, (_, moov_at, moov_size) = boxes[0][2], boxes[-1]
        moov = bytearray(os.pread(fd, moov_size, moov_at))
        _shift_chunk_offsets(moov, moov_size, 16 if struct.unpack_from(">I", moov)[0] == 1 else 8)
        sha.update(os.pread(fd, head_end, 0))
        sha.update(bytes(moov))
        # Media [head_end, moov_at) moves up by moov_size; a chunk may be written only once the bytes it
        # lands on have been read, so reading stays moov_size ahead of writing.
        read_at, pending = head_end, deque[tuple[int, bytes]]()
        while read_at < min(head_end + moov_size, moov_at):
            read_at = _read_chunk(fd, read_at, moov_at, pending)
        _pwrite_all(fd, moov, head_end)
        while pending:
            src, data = pending.popleft()
            while read_at < moov_at and read_at < src + moov_size + len(data):
                read_at = _read_chunk(fd, read_at, moov_at, pending)
            _pwrite_all(fd, data, src + moov_size)
            sha.update(data)
        os.fsync(fd)
    finally:
        os.close(fd)
        digest = sha.hexdigest()
    return digest, size


def _read_chunk(fd: int, at: int, end: int, pending: deque[tuple[int, bytes]]) -> int:
    data = os.pread(fd, min(CHUNK_BYTES, end - at), at)
    if not data:
        raise ExportError("the clip file shrank while it was being finished")
    pending.append((at, data))
    return at + len(data)


def _pwrite_all(fd: int, data: bytes | bytearray, at: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def _top_level_boxes(fd: int, size: int) -> list[tuple[str, int, int]]:
    """(type, offset, size) of the file's top-level boxes."""
    boxes, pos = [], 0
    while pos < size:
        head = os.pread(fd, 16, pos)
        if len(head) < 8:
            raise ExportError(f"truncated box header at offset {pos} of the clip")
        box_size, kind = struct.unpack_from(">I4s", head)
        if box_size == 1:
            (box_size,) = struct.unpack_from(">Q", head, 8)
        elif box_size == 0:
            box_size = size - pos
        if box_size < 8 or pos + box_size > size:
            raise ExportError(f"bad box size {box_size} at offset {pos} of the clip")
        boxes.append((kind.decode("latin-1"), pos, box_size))
        pos += box_size
    return boxes


_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl"})


def _shift_chunk_offsets(moov: bytearray, delta: int, start: int = 8, end: int | None = None) -> None:
    """Add ``delta`` to every chunk offset (``stco``/``co64``) inside the ``moov`` box held in ``moov``."""
    pos, stop = start, len(moov) if end is None else end
    while pos + 8 <= stop:
        size, kind = struct.unpack_from(">I4s", moov, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", moov, pos + 8)
            header = 16
        if size < header or pos + size > stop:
            raise ExportError(f"bad {kind!r} box in the clip's moov")
        if kind in _CONTAINERS:
            _shift_chunk_offsets(moov, delta, pos + header, pos + size)
        elif kind in (b"stco", b"co64"):
            wide = kind == b"co64"
            (count,) = struct.unpack_from(">I", moov, pos + header + 4)
            fmt = f">{count}{'Q' if wide else 'I'}"
            at = pos + header + 8
            offsets = [o + delta for o in struct.unpack_from(fmt, moov, at)]
            if offsets and not wide and max(offsets) > 0xFFFF_FFFF:
                raise ExportError("clip too large for 32-bit chunk offsets")
            struct.pack_into(fmt, moov, at, *offsets)
        pos += size
