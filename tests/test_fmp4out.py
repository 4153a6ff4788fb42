"""Fmp4Writer: packets from a real x264 encoder (durations stripped, as RTSP gives them) → init + fragments
in memory, whose concatenation PyAV decodes with the right frames, colours and timing."""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from edge.errors import Malformed
from edge.recorder.fanout import MediaPacket
from edge.recorder.fmp4out import Fmp4Writer

FPS = 25
TB = Fraction(1, 90000)  # RTSP's video clock


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def encode(
    colours: list[tuple[int, int, int]], *, gop: int = 10, start_ticks: int = 123456
) -> tuple[Any, list[MediaPacket]]:
    """Solid-colour frames from x264; packets as the recorder publishes them (90 kHz, no durations)."""
    sink = av.open(_Null(), "w", format="mp4", options={"movflags": "empty_moov+frag_keyframe"})
    options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop), "keyint_min": str(gop),
               "sc_threshold": "0", "bf": "0"}  # fmt: skip
    stream = sink.add_stream("libx264", rate=FPS, options=options)
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    sink.start_encoding()
    packets: list[MediaPacket] = []
    step = 90000 // FPS
    for i, rgb in enumerate(colours):
        img = np.zeros((240, 320, 3), np.uint8)
        img[:] = rgb
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, FPS)
        for pkt in stream.encode(frame):
            packets.append(_media(pkt, start_ticks + int(pkt.dts or 0) * step))
    for pkt in stream.encode(None):
        packets.append(_media(pkt, start_ticks + int(pkt.dts or 0) * step))
    return stream, packets


def _media(pkt: Any, dts: int) -> MediaPacket:
    return MediaPacket("video", bytes(pkt), dts, dts, 0, TB, bool(pkt.is_keyframe), 0)


def boxes(piece: bytes) -> list[str]:
    out, at = [], 0
    while at < len(piece):
        size, kind = struct.unpack(">I4s", piece[at : at + 8])
        out.append(kind.decode())
        at += size
    assert at == len(piece), "a piece is whole boxes"
    return out


def decode(data: bytes) -> list[tuple[float, tuple[int, int, int]]]:
    with av.open(io.BytesIO(data)) as c:
        return [
            (float(f.time), tuple(int(v) for v in f.to_ndarray(format="rgb24")[120, 160]))
            for f in c.decode(video=0)
        ]


def close_to(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(abs(x - y) <= 12 for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("every_frame", [True, False])
def test_pieces_are_init_then_fragments_and_decode_exactly(every_frame: bool) -> None:
    colours = [(220, 30, 30)] * 10 + [(30, 200, 40)] * 10 + [(40, 60, 230)] * 10
    stream, packets = encode(colours)
    w = Fmp4Writer(stream, every_frame=every_frame, fragment_ms=400)
    pieces: list[bytes] = []
    for p in packets:
        w.push(p)
        pieces += w.take()
    pieces += w.close()
    assert boxes(pieces[0]) == ["ftyp", "moov"]
    assert all(boxes(p)[:1] == ["moof"] and boxes(p)[-1] == "mdat" for p in pieces[1:])
    frames = decode(b"".join(pieces))
    assert len(frames) == 30
    assert [t for t, _ in frames] == pytest.approx(
        [i / FPS for i in range(30)], abs=1e-3
    )  # time 0 = first key
    for (_, got), want in zip(frames, colours, strict=True):
        assert close_to(got, want), (got, want)
    if every_frame:
        assert len(pieces) == 1 + 30  # one frame per fragment: a viewer gets each as soon as it exists
    else:
        assert 1 + 3 <= len(pieces) <= 1 + 9


def test_first_fragment_is_out_as_soon_as_the_next_frame_is_in() -> None:
    """Live latency: after keyframe k and frames k+1, k+2 the fragment holding k is complete."""
    stream, packets = encode([(200, 200, 200)] * 5)
    w = Fmp4Writer(stream, every_frame=True)
    w.push(packets[0])
    w.push(packets[1])
    got = w.take()
    w.push(packets[2])
    got += w.take()
    assert len(got) == 2 and boxes(got[0]) == ["ftyp", "moov"] and boxes(got[1])[0] == "moof"
    assert len(decode(b"".join(got))) == 1


def test_joins_at_the_first_keyframe_and_drops_what_came_before() -> None:
    colours = [(250, 0, 0)] * 10 + [(0, 0, 250)] * 10
    stream, packets = encode(colours)
    w = Fmp4Writer(stream, every_frame=True)
    w.push_all(packets[3:])  # a GOP already running: nothing before the next keyframe is decodable
    frames = decode(b"".join(w.close()))
    assert len(frames) == 10 and frames[0][0] == 0.0
    assert close_to(frames[0][1], (0, 0, 250))


def test_timestamps_going_backwards_are_refused() -> None:
    stream, packets = encode([(1, 2, 3)] * 4)
    w = Fmp4Writer(stream)
    w.push(packets[0])
    w.push(packets[1])
    with pytest.raises(Malformed, match="backwards"):
        w.push(packets[0])
