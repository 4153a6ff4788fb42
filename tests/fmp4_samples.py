"""Shared by the fMP4 tests: crafted boxes for every flag, and real samples muxed the way the recorder does.

The real samples are muxed in the test session with PyAV, the way the recorder does it (a Python writer, the
mp4 muxer with ``empty_moov+default_base_moof`` and ``frag_duration``); the write sizes libav used are kept so
the tracker can be fed exactly what the recorder will see.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from hypothesis import HealthCheck, settings

from edge.recorder.fmp4 import BoxHeader, iter_boxes

OPTIONS = {"movflags": "empty_moov+default_base_moof", "frag_duration": "1000000"}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- crafted boxes -----------------------------------------------------------------------------------------


def u16(v: int) -> bytes:
    return struct.pack(">H", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def box(kind: str, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4s", 8 + len(payload), kind.encode("latin-1")) + payload


def full(kind: str, version: int, flags: int, *parts: bytes) -> bytes:
    return box(kind, u32(version << 24 | flags), *parts)


def trak(track_id: int, handler: str, timescale: int, entry: bytes, *, v1: bool = False) -> bytes:
    if v1:
        tkhd = full("tkhd", 1, 3, bytes(16), u32(track_id), bytes(80))
        mdhd = full("mdhd", 1, 0, bytes(16), u32(timescale), u64(0), bytes(4))
    else:
        tkhd = full("tkhd", 0, 3, bytes(8), u32(track_id), bytes(72))
        mdhd = full("mdhd", 0, 0, bytes(8), u32(timescale), u32(0), bytes(4))
    hdlr = full("hdlr", 0, 0, bytes(4), handler.encode(), bytes(12), b"x\x00")
    stsd = full("stsd", 0, 0, u32(1), entry)
    return box("trak", tkhd, box("mdia", mdhd, hdlr, box("minf", box("stbl", stsd))))


def visual(fourcc: str, width: int, height: int) -> bytes:
    return box(fourcc, bytes(6), u16(1), bytes(16), u16(width), u16(height), bytes(50))


def trex(track_id: int, duration: int = 0, size: int = 0, flags: int = 0) -> bytes:
    return full("trex", 0, 0, u32(track_id), u32(1), u32(duration), u32(size), u32(flags))


NON_SYNC = 0x0101_0000
SYNC = 0x0200_0000


def init_segment(*, trex_video: bytes | None = None, v1: bool = False) -> bytes:
    video = trak(1, "vide", 90000, visual("avc1", 1280, 720), v1=v1)
    audio = trak(2, "soun", 16000, box("mp4a", bytes(6), u16(1), bytes(20)))
    mvex = box("mvex", trex_video or trex(1, 3000, 0, NON_SYNC), trex(2, 1024, 0, SYNC))
    return box("ftyp", b"iso6", u32(0), b"iso6") + box(
        "moov", full("mvhd", 0, 0, bytes(96)), video, audio, mvex
    )


def tfhd(
    track_id: int,
    *,
    flags: int = 0x020000,
    base: int | None = None,
    duration: int | None = None,
    size: int | None = None,
    sample_flags: int | None = None,
) -> bytes:
    parts = [u32(track_id)]
    for bit, value, pack in (
        (0x1, base, u64),
        (0x8, duration, u32),
        (0x10, size, u32),
        (0x20, sample_flags, u32),
    ):
        if value is not None:
            flags |= bit
            parts.append(pack(value))
    return full("tfhd", 0, flags, *parts)


def trun(
    *,
    count: int | None = None,
    data_offset: int | None = None,
    first_flags: int | None = None,
    durations: list[int] | None = None,
    sizes: list[int] | None = None,
    flags: list[int] | None = None,
    cts: list[int] | None = None,
    extra_flags: int = 0,
) -> bytes:
    columns = [(0x100, durations), (0x200, sizes), (0x400, flags), (0x800, cts)]
    present = [(bit, c) for bit, c in columns if c is not None]
    n = count if count is not None else len(present[0][1]) if present else 0
    bits = extra_flags | sum(bit for bit, _ in present)
    head = [u32(n)]
    if data_offset is not None:
        bits |= 0x1
        head.append(struct.pack(">i", data_offset))
    if first_flags is not None:
        bits |= 0x4
        head.append(u32(first_flags))
    entries = b"".join(u32(c[i]) for i in range(len(present[0][1]) if present else 0) for _, c in present)
    return full("trun", 1 if cts else 0, bits, *head, entries)


def tfdt(t: int, version: int = 1) -> bytes:
    return full("tfdt", version, 0, u64(t) if version else u32(t))


def moof(sequence: int, *trafs: bytes) -> bytes:
    return box("moof", full("mfhd", 0, 0, u32(sequence)), *trafs)


def fragment(sequence: int, tracks: list[tuple[int, int, dict[str, object], bytes]]) -> bytes:
    """moof+mdat with moof-relative data offsets; each track is (track_id, tfdt, trun kwargs, payload)."""

    def build(first_offset: int) -> bytes:
        trafs, offset = [], first_offset
        for track_id, decode, kwargs, payload in tracks:
            trafs.append(box("traf", tfhd(track_id), tfdt(decode), trun(data_offset=offset, **kwargs)))  # type: ignore[arg-type]
            offset += len(payload)
        return moof(sequence, *trafs)

    size = len(build(0))
    return build(size + 8) + box("mdat", *(payload for *_, payload in tracks))


# --- real samples -------------------------------------------------------------------------------------------


class _Writer(io.RawIOBase):
    """What the recorder hands libav: a non-seekable writer. Keeps each write() as libav made it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(b))
        return len(b)


@dataclass(frozen=True)
class Muxed:
    data: bytes
    writes: tuple[bytes, ...]
    path: Path


def _mux(
    path: Path,
    *,
    codec: str,
    seconds: int,
    gop: int,
    audio: bool = False,
    fps: int = 25,
    options: dict[str, str] = OPTIONS,
) -> Muxed:
    writer = _Writer()
    out = av.open(writer, "w", format="mp4", options=options)
    video = out.add_stream(codec, rate=fps)
    assert isinstance(video, av.VideoStream)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    if codec == "libx264":
        video.codec_context.options = {"g": str(gop), "sc_threshold": "0"}
    else:
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"
        video.codec_context.options = {"x265-params": params}
        video.codec_tag = "hvc1"
    sound: av.AudioStream | None = None
    if audio:
        stream = out.add_stream("aac", rate=48000, layout="mono")
        assert isinstance(stream, av.AudioStream)
        sound = stream
    rng = np.random.default_rng(7)
    audio_frames = 0
    for i in range(fps * seconds):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        for packet in video.encode(frame):
            out.mux(packet)
        while sound is not None and audio_frames * 1024 < (i + 1) * 48000 // fps:
            tone = np.sin(np.arange(1024, dtype=np.float32) / 9 + audio_frames)[None, :] * 0.3
            chunk = av.AudioFrame.from_ndarray(tone.astype(np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = 48000, audio_frames * 1024, Fraction(1, 48000)
            for packet in sound.encode(chunk):
                out.mux(packet)
            audio_frames += 1
    for packet in video.encode():
        out.mux(packet)
    if sound is not None:
        for packet in sound.encode():
            out.mux(packet)
    out.close()
    data = b"".join(writer.writes)
    path.write_bytes(data)
    return Muxed(data, tuple(writer.writes), path)


def mux_samples(root: Path) -> dict[str, Muxed]:
    """The real samples, muxed into ``root``."""
    return {
        # a 4 s GOP cut into 1 s fragments: fragments 2-4 and 6 start on a non-sync sample
        "h264": _mux(root / "h264.mp4", codec="libx264", seconds=6, gop=100),
        "hevc": _mux(root / "hevc.mp4", codec="libx265", seconds=3, gop=50),
        "h264_aac": _mux(root / "h264_aac.mp4", codec="libx264", seconds=3, gop=50, audio=True),
        # without default_base_moof libav writes tfhd base-data-offset: the moof's absolute file offset
        "absolute": _mux(
            root / "absolute.mp4",
            codec="libx264",
            seconds=2,
            gop=25,
            options={"movflags": "empty_moov", "frag_duration": "1000000"},
        ),
    }


def top_level(data: bytes) -> list[BoxHeader]:
    return list(iter_boxes(data))
