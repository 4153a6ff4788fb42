"""Pre-encoded test clips for the RTSP peer (runs in the venv; needs Debian's ffmpeg).

Every clip is encoded once with ``/usr/bin/ffmpeg`` (constant frame rate, no B-frames, a fixed GOP) into
Matroska, which GStreamer demuxes without fuss. The RTSP peer (``rtsp_server.py``) loads the access units and
loops them forever with continuous timestamps, so the clips must be whole GOPs long and, when they carry
audio, a whole number of audio frames long too (AAC at 16 kHz has 64 ms frames, video at 25 fps 40 ms ones:
both divide 320 ms, hence the 8 s and 3.2 s clips below).

Each clip has its own flat background colour (``COLOURS``, BGR) under a small moving ``testsrc`` box (which
draws its own frame counter, no fonts needed; light temporal noise on it gives camera-like bit rates,
~1.5 Mbit/s at 720p). The box travels along the vertical middle of the picture, so
the top and bottom quarters are always pure background: ``dominant_colour`` / ``nearest_clip`` tell cameras
apart from one decoded frame.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

FFMPEG = "/usr/bin/ffmpeg"
SUFFIX = ".mkv"


@dataclass(frozen=True)
class Clip:
    name: str
    width: int
    height: int
    fps: int
    gop: int  # frames between keyframes
    seconds: float  # whole GOPs (and whole audio frames when there is audio)
    video: Literal["h264", "h265"]
    audio: Literal["aac", "pcmu"] | None
    rgb: int  # background colour, 0xRRGGBB

    @property
    def bgr(self) -> tuple[int, int, int]:
        return (self.rgb & 0xFF, (self.rgb >> 8) & 0xFF, self.rgb >> 16)

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)


CLIPS: dict[str, Clip] = {
    c.name: c
    for c in (
        Clip("h264_720p", 1280, 720, 30, 30, 10, "h264", None, 0xFF0000),  # red
        Clip("h264_gop4", 1280, 720, 30, 120, 12, "h264", None, 0x00FF00),  # green
        Clip("h265", 1280, 720, 30, 30, 10, "h265", None, 0x0000FF),  # blue
        Clip("h264_aac", 640, 360, 25, 25, 8, "h264", "aac", 0xFFFF00),  # yellow
        Clip("h264_pcmu", 640, 360, 25, 25, 10, "h264", "pcmu", 0xFF00FF),  # magenta
        Clip("h264_1080p", 1920, 1080, 30, 30, 10, "h264", None, 0x00FFFF),  # cyan
        # A short loop (two 1.6 s GOPs, with AAC) so tests cross the loop point within a few seconds.
        Clip("short_loop", 640, 360, 25, 40, 3.2, "h264", "aac", 0xFF8000),  # orange
    )
}

# Background colour of each clip, BGR as OpenCV/PyAV's "bgr24" give it.
COLOURS: dict[str, tuple[int, int, int]] = {name: clip.bgr for name, clip in CLIPS.items()}


def _ffmpeg_args(clip: Clip, out: Path) -> list[str]:
    w, h, r, d = clip.width, clip.height, clip.fps, clip.seconds
    bw, bh = w // 4, h // 4
    graph = (
        f"color=c=0x{clip.rgb:06X}:s={w}x{h}:r={r}:d={d}[bg];"
        f"testsrc=s={bw}x{bh}:r={r}:d={d},noise=alls=3:allf=t[fg];"
        f"[bg][fg]overlay=x='mod(t*{w // 4}\\,W-w)':y=(H-h)/2:shortest=1,format=yuv420p"
    )
    args = [FFMPEG, "-nostdin", "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", graph]
    if clip.audio is not None:
        rate = 16000 if clip.audio == "aac" else 8000
        # Longer than the video (the output runs until both end): the peer trims audio to the loop period.
        args += ["-f", "lavfi", "-i", f"sine=f=440:r={rate}:d={d + 0.5}"]
        args += ["-map", "0:v", "-map", "1:a"]
    if clip.video == "h264":
        args += [
            "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "baseline",
            "-g", str(clip.gop), "-keyint_min", str(clip.gop), "-sc_threshold", "0", "-bf", "0",
        ]  # fmt: skip
    else:
        args += [
            "-c:v", "libx265", "-preset", "ultrafast", "-tag:v", "hvc1",
            "-x265-params",
            f"bframes=0:keyint={clip.gop}:min-keyint={clip.gop}:scenecut=0:log-level=error",
        ]  # fmt: skip
    args += ["-r", str(r), "-fps_mode", "cfr"]  # the lavfi sources end after exactly `frames` frames
    if clip.audio == "aac":
        args += ["-c:a", "aac", "-profile:a", "aac_low", "-ar", "16000", "-ac", "1", "-b:a", "32k"]
    elif clip.audio == "pcmu":
        args += ["-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"]
    args += ["-f", "matroska", str(out)]
    return args


def _encode(clip: Clip, out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        subprocess.run(_ffmpeg_args(clip, tmp), check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed for clip {clip.name}: {e.stderr.strip()}") from e
    tmp.replace(out)
    return out


def make_media(out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Encode the clips (all, or ``names``) into ``out_dir`` unless already there; return name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = [CLIPS[n] for n in (names if names is not None else list(CLIPS))]
    paths = {c.name: out_dir / f"{c.name}{SUFFIX}" for c in wanted}
    todo = [c for c in wanted if not paths[c.name].exists()]
    # Biggest first so the two cores stay busy until the end.
    todo.sort(key=lambda c: c.width * c.height * c.frames * (3 if c.video == "h265" else 1), reverse=True)
    with ThreadPoolExecutor(max_workers=max(1, min(3, os.cpu_count() or 1))) as pool:
        for fut in [pool.submit(_encode, c, paths[c.name]) for c in todo]:
            fut.result()
    return paths


def dominant_colour(frame_bgr: npt.NDArray[np.uint8]) -> tuple[int, int, int]:
    """Median colour of the top and bottom quarters of a decoded BGR frame (the part the box never covers)."""
    import numpy as np  # only here: the rest of the module needs no numpy

    h = frame_bgr.shape[0]
    band = np.concatenate([frame_bgr[: h // 4], frame_bgr[h - h // 4 :]]).reshape(-1, 3)
    b, g, r = (int(v) for v in np.median(band, axis=0))
    return (b, g, r)


def nearest_clip(bgr: tuple[int, int, int], max_distance: float = 40.0) -> str | None:
    """Name of the clip whose background is closest to ``bgr``, or None if none is within ``max_distance``."""
    best, dist = None, max_distance
    for name, ref in COLOURS.items():
        d = sum((a - b) ** 2 for a, b in zip(bgr, ref, strict=True)) ** 0.5
        if d <= dist:
            best, dist = name, d
    return best
