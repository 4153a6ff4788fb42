"""Snapshots from a running recorder's GOP cache and from its segment files, judged by OpenCV."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import Malformed, NotFound
from edge.recorder.fanout import MediaPacket, StreamDescription
from edge.recorder.fmp4stream import scan_file
from edge.recorder.snapshot import jpeg_from_gop, jpeg_from_segment
from edge.store import Segment
from tests.recordings import SYNTHETIC_RED, recording, segments, wait_for

WIDTH, HEIGHT = 320, 240


@dataclass(frozen=True)
class Captured:
    description: StreamDescription
    gop: list[MediaPacket]
    live_jpeg: bytes
    open_segment: Segment  # as indexed while it was being written
    open_segment_jpeg: bytes
    data_dir: Path
    camera_id: int


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    """A red synthetic camera recorded for a few seconds; snapshots taken while it runs."""
    data_dir = tmp_path_factory.mktemp("snapshot-data")
    with recording(data_dir, SYNTHETIC_RED, segment_s=4) as cam:
        wait_for(lambda: len(cam.fanout.latest_gop()[1]) >= 3, 10, "a cached GOP of 3 frames")
        description, gop = cam.fanout.latest_gop()
        assert description is not None
        live = jpeg_from_gop(description, gop)

        def open_row() -> Segment | None:
            rows = cam.indexed()
            return rows[-1] if rows and rows[-1].state == "open" else None

        wait_for(lambda: open_row() is not None, 10, "an open segment")
        row = open_row()
        assert row is not None
        from_open = jpeg_from_segment(data_dir / row.path, limit_bytes=row.bytes)
    return Captured(description, gop, live, row, from_open, data_dir, cam.camera_id)


def _decode(jpeg: bytes) -> np.ndarray:
    assert jpeg[:2] == b"\xff\xd8"  # a JPEG SOI marker
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "OpenCV cannot decode the JPEG"
    return img


def _assert_red(img: np.ndarray) -> None:
    """The synthetic camera draws its colour, halved on stripes, under a white circle and clock."""
    assert img.shape == (HEIGHT, WIDTH, 3)
    b, g, r = (float(v) for v in np.median(img.reshape(-1, 3), axis=0))
    assert r >= 100 and b <= 40 and g <= 40, f"median BGR {(b, g, r)} is not red"
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).reshape(-1, 3)
    saturated = hsv[hsv[:, 1] > 128]
    assert len(saturated) > 0.5 * len(hsv)
    hue = np.median(np.minimum(saturated[:, 0], 180 - saturated[:, 0]))  # red sits at both ends
    assert hue <= 10


def test_live_gop_gives_the_camera_picture(captured: Captured) -> None:
    assert captured.gop[0].keyframe
    _assert_red(_decode(captured.live_jpeg))


def test_open_segment_read_only_to_its_indexed_bytes(captured: Captured) -> None:
    _assert_red(_decode(captured.open_segment_jpeg))
    # The file has grown past what was indexed when the snapshot was taken.
    assert (captured.data_dir / captured.open_segment.path).stat().st_size > captured.open_segment.bytes


def test_closed_segment_gives_its_last_keyframe(captured: Captured) -> None:
    closed = [s for s in segments(captured.data_dir, captured.camera_id) if s.state == "closed"]
    assert closed
    for seg in closed:
        _assert_red(_decode(jpeg_from_segment(captured.data_dir / seg.path, limit_bytes=seg.bytes)))
    last = closed[-1]
    _assert_red(_decode(jpeg_from_segment(captured.data_dir / last.path, limit_bytes=None)))


def test_quality_changes_the_size(captured: Captured) -> None:
    low = jpeg_from_gop(captured.description, captured.gop, quality=10)
    high = jpeg_from_gop(captured.description, captured.gop, quality=95)
    assert len(low) < len(high)
    _assert_red(_decode(low))
    with pytest.raises(ValueError, match="quality"):
        jpeg_from_gop(captured.description, captured.gop, quality=0)


def test_gop_errors(captured: Captured) -> None:
    with pytest.raises(NotFound, match="no live picture"):
        jpeg_from_gop(captured.description, [])
    audio_only = [replace(p, kind="audio") for p in captured.gop]
    with pytest.raises(NotFound):
        jpeg_from_gop(captured.description, audio_only)
    assert len(captured.gop) > 1
    with pytest.raises(Malformed, match="keyframe"):
        jpeg_from_gop(captured.description, captured.gop[1:])
    garbage = [replace(captured.gop[0], data=b"\x00\x00\x00\x01" + bytes(range(256)) * 4)]
    with pytest.raises(Malformed, match="does not decode"):
        jpeg_from_gop(captured.description, garbage)


def test_segment_errors(captured: Captured, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no segment file"):
        jpeg_from_segment(tmp_path / "missing.mp4", limit_bytes=None)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not an mp4 file" * 100)
    with pytest.raises(Malformed, match=r"junk\.mp4"):
        jpeg_from_segment(junk, limit_bytes=None)
    # Only the init segment is durable yet: nothing to show.
    seg = segments(captured.data_dir, captured.camera_id)[0]
    path = captured.data_dir / seg.path
    with path.open("rb") as f:
        init_end = scan_file(f).init_end
    with pytest.raises(NotFound, match="no video keyframe yet"):
        jpeg_from_segment(path, limit_bytes=init_end)
    with pytest.raises(NotFound, match="no durable bytes"):
        jpeg_from_segment(path, limit_bytes=0)


def test_snapshot_is_quick(captured: Captured) -> None:
    start = time.perf_counter()
    jpeg_from_gop(captured.description, captured.gop)
    assert time.perf_counter() - start < 0.5
