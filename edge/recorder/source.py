"""Where packets come from: a camera over RTSP (PyAV, TCP) or the built-in synthetic camera.

Runs on the camera's own thread: every call here blocks. A source yields demuxed packets; it never decodes.

Credentials are kept apart from the URL and inserted only in the string handed to libav. Everything that
leaves this module (errors, logs, `repr`) uses the URL without credentials: PyAV's exceptions carry the
full URL in their message and `.filename`, so they are translated here and never chained.
"""

from __future__ import annotations

import contextlib
import errno
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import av
import av.container
import av.error
import av.stream
import cv2
import numpy as np

from edge.errors import SourceError
from edge.redact import redact_text

# Audio codecs the MP4 muxer holds and browsers play. Anything else (G.711, G.726, ...) is dropped.
MP4_AUDIO_CODECS = frozenset({"aac", "opus", "mp3"})
VIDEO_CODECS = frozenset({"h264", "hevc"})


@dataclass(frozen=True)
class StreamInfo:
    video_codec: str
    width: int
    height: int
    fps: float | None
    audio_codec: str | None  # what the camera sends, recorded or not
    audio_recorded: bool


class Source(Protocol):
    """An opened camera. `video` (and `audio`, if recorded) are the templates for muxers."""

    video: av.stream.Stream
    audio: av.stream.Stream | None
    info: StreamInfo

    def packets(self) -> Iterator[av.Packet[Any]]:
        """Packets with a dts, video and (if recorded) audio, in arrival order. Ends on camera EOF."""
        ...

    def close(self) -> None: ...


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """The URL libav gets. Never log or return it anywhere else."""
    if not username:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = quote(username, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def _translate(
    e: BaseException, safe_url: str, secrets: tuple[str, ...], *, timed_out: bool = False
) -> SourceError:
    """PyAV/OS error -> SourceError with a kind and a message free of credentials.

    libav reports an RTSP server that never answers as "invalid data" once its interrupt callback fires,
    so the caller says whether the whole timeout had elapsed.
    """
    kind = "unreachable"
    if timed_out:
        return SourceError(f"{safe_url}: no answer within the timeout", kind="timeout")
    if isinstance(e, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
        kind = "auth_failed"
    elif isinstance(e, av.error.HTTPNotFoundError):
        kind = "not_found"
    elif isinstance(e, av.error.ExitError | TimeoutError):
        kind = "timeout"
    elif isinstance(e, av.error.InvalidDataError):
        kind = "bad_stream"
    elif isinstance(e, av.error.FFmpegError) and e.errno in (errno.ETIMEDOUT, errno.EAGAIN):
        kind = "timeout"
    elif isinstance(e, av.error.HTTPClientError):
        kind = "refused"
    reason = e.strerror if isinstance(e, av.error.FFmpegError) and e.strerror else type(e).__name__
    return SourceError(f"{safe_url}: {redact_text(str(reason), secrets)}", kind=kind)


class RtspSource:
    """RTSP over TCP via PyAV."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        on_warning: Warn | None = None,
    ) -> None:
        self.url = url  # without credentials
        self._secrets = tuple(s for s in (password,) if s)
        self._read_timeout_s = read_timeout_s
        full = with_credentials(url, username, password)
        options = {
            "rtsp_transport": "tcp",
            "rtsp_flags": "prefer_tcp",
            "allowed_media_types": "video+audio",
            # Reads are bounded by libav's own socket timeout (µs), in C. PyAV's read timeout would run a
            # Python interrupt callback, taking the GIL, many times per packet on every camera thread.
            "timeout": str(int(read_timeout_s * 1_000_000)),
        }
        started = time.monotonic()
        try:
            # PyAV's deadline only for the open (connect, DESCRIBE, SETUP, PLAY, probe) as a whole.
            self._container: av.container.InputContainer = av.open(
                full, options=options, timeout=(open_timeout_s, None)
            )
        except (av.error.FFmpegError, OSError) as e:
            timed_out = time.monotonic() - started >= 0.9 * open_timeout_s
            raise _translate(e, url, self._secrets, timed_out=timed_out) from None
        finally:
            del full
        try:
            self._pick_streams(on_warning)
        except BaseException:
            self._container.close()
            raise

    def _pick_streams(self, on_warning: Warn | None) -> None:
        videos = [s for s in self._container.streams.video if s.codec_context.name in VIDEO_CODECS]
        if not videos:
            found = ", ".join(s.codec_context.name for s in self._container.streams.video) or "none"
            raise SourceError(f"{self.url}: no H.264/H.265 video stream (found: {found})", kind="unsupported")
        self.video = videos[0]
        audio = self._container.streams.audio[0] if self._container.streams.audio else None
        audio_codec = audio.codec_context.name if audio is not None else None
        self.audio = audio if audio_codec in MP4_AUDIO_CODECS else None
        if audio is not None and self.audio is None and on_warning is not None:
            on_warning(
                "audio_dropped", f"audio codec {audio_codec} cannot be stored in MP4; recording video only"
            )
        cc = self.video.codec_context
        rate = self.video.average_rate or self.video.guessed_rate
        self.info = StreamInfo(
            video_codec=cc.name,
            width=cc.width,
            height=cc.height,
            fps=float(rate) if rate else None,
            audio_codec=audio_codec,
            audio_recorded=self.audio is not None,
        )

    def packets(self) -> Iterator[av.Packet[Any]]:
        wanted = [self.video] + ([self.audio] if self.audio is not None else [])
        last = time.monotonic()
        try:
            for pkt in self._container.demux(wanted):
                last = time.monotonic()
                if pkt.dts is None:  # demux's end-of-stream flush packets
                    continue
                yield pkt
        except (av.error.FFmpegError, OSError) as e:
            timed_out = time.monotonic() - last >= 0.9 * self._read_timeout_s
            raise _translate(e, self.url, self._secrets, timed_out=timed_out) from None

    def close(self) -> None:
        with contextlib.suppress(av.error.FFmpegError, OSError):
            self._container.close()  # closing a dead connection: nothing to save


class Warn(Protocol):
    def __call__(self, event: str, message: str) -> None: ...


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


def open_source(
    url: str,
    *,
    username: str | None,
    password: str | None,
    open_timeout_s: float,
    read_timeout_s: float,
    stop: threading.Event,
    on_warning: Warn | None = None,
) -> RtspSource | SyntheticSource:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("rtsp", "rtsps"):
        return RtspSource(
            url,
            username=username,
            password=password,
            open_timeout_s=open_timeout_s,
            read_timeout_s=read_timeout_s,
            on_warning=on_warning,
        )
    if scheme == "synthetic":
        return SyntheticSource(SyntheticSpec.from_url(url), stop=stop)
    raise SourceError(
        f"unsupported camera URL scheme {scheme!r} (use rtsp:// or synthetic:)", kind="unsupported"
    )
