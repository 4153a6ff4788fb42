"""The built-in synthetic camera: a moving pattern with a burnt-in UTC clock, x264-encoded live.

Used by `edge demo` and tests. Its own module so that only a box with a synthetic camera loads OpenCV.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import parse_qs, urlsplit

import av
import av.error
import cv2
import numpy as np

from edge.errors import SourceError
from edge.recorder.source import StreamInfo


@dataclass(frozen=True)
class SyntheticSpec:
    width: int = 640
    height: int = 360
    fps: int = 15
    gop_s: float = 2.0
    bgr: tuple[int, int, int] = (90, 60, 30)

    @classmethod
    def from_url(cls, url: str) -> SyntheticSpec:
        """``synthetic:?w=1280&h=720&fps=15&gop=2&color=203040`` (colour as hex RGB)."""
        parts = urlsplit(url)
        if parts.scheme != "synthetic":
            raise SourceError(f"{url}: not a synthetic camera URL", kind="unsupported")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            spec = cls(
                width=int(q.get("w", cls.width)),
                height=int(q.get("h", cls.height)),
                fps=int(q.get("fps", cls.fps)),
                gop_s=float(q.get("gop", cls.gop_s)),
                bgr=_hex_to_bgr(q["color"]) if "color" in q else cls.bgr,
            )
        except (ValueError, KeyError) as e:
            raise SourceError(f"{url}: bad synthetic camera parameter ({e})", kind="unsupported") from None
        if not (
            16 <= spec.width <= 3840 and 16 <= spec.height <= 2160 and 1 <= spec.fps <= 60 and spec.gop_s > 0
        ):
            raise SourceError(f"{url}: synthetic camera parameters out of range", kind="unsupported")
        return spec


def _hex_to_bgr(h: str) -> tuple[int, int, int]:
    v = int(h, 16)
    return (v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF)


class _NullSink:
    """The encoder's stream needs a container; its bytes are not wanted."""

    def write(self, data: bytes) -> int:
        return len(data)


class SyntheticSource:
    """A camera inside the box: a moving pattern with a burnt-in UTC clock, encoded live with x264.

    Paced in real time, so recording it behaves like recording a camera. Used by `edge demo`.
    """

    def __init__(self, spec: SyntheticSpec, *, stop: threading.Event | None = None) -> None:
        self.spec = spec
        self._stop = stop or threading.Event()
        # mp4 makes x264 emit global headers (extradata for avcC); fragmented because the sink cannot seek.
        self._sink = av.open(_NullSink(), "w", format="mp4", options={"movflags": "empty_moov+frag_keyframe"})
        gop = max(1, round(spec.fps * spec.gop_s))
        stream = self._sink.add_stream(
            "libx264",
            rate=spec.fps,
            options={
                "preset": "ultrafast",
                "tune": "zerolatency",
                "g": str(gop),
                "keyint_min": str(gop),
                "sc_threshold": "0",
                "bf": "0",
            },
        )
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        # Opens the encoder and copies its parameters (SPS/PPS extradata) into the stream, which is the
        # template the segmenter's muxers copy.
        self._sink.start_encoding()
        self.video = stream
        self.audio = None
        self.info = StreamInfo("h264", spec.width, spec.height, float(spec.fps), None, False)
        self._background = np.zeros((spec.height, spec.width, 3), np.uint8)
        self._background[:] = spec.bgr
        # Diagonal stripes so motion is visible at any size.
        yy, xx = np.mgrid[0 : spec.height, 0 : spec.width]
        self._background[((xx + yy) // max(8, spec.width // 40)) % 2 == 0] //= 2

    def _frame(self, index: int) -> av.VideoFrame:
        s = self.spec
        img = self._background.copy()
        t = index / s.fps
        r = max(6, min(s.width, s.height) // 10)
        cx = int((s.width - 2 * r) * (0.5 + 0.5 * math.sin(t * 0.9))) + r
        cy = int((s.height - 2 * r) * (0.5 + 0.5 * math.sin(t * 1.3))) + r
        cv2.circle(img, (cx, cy), r, (255, 255, 255), -1)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + f".{int((time.time() % 1) * 10)}Z"
        scale = max(0.35, s.width / 1400)
        cv2.putText(
            img,
            stamp,
            (8, int(30 * scale) + 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            max(1, int(scale * 2)),
            cv2.LINE_AA,
        )
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts = index
        frame.time_base = Fraction(1, s.fps)
        return frame

    def packets(self) -> Iterator[av.Packet[Any]]:
        period_ns = 1_000_000_000 // self.spec.fps
        t0 = time.monotonic_ns()
        index = 0
        while not self._stop.is_set():
            due = t0 + index * period_ns
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0 and self._stop.wait(delay):
                return
            for pkt in self.video.encode(self._frame(index)):
                pkt.duration = 1
                yield pkt
            index += 1

    def close(self) -> None:
        with contextlib.suppress(av.error.FFmpegError, OSError):
            self._sink.close()
