"""Where packets come from: a camera over RTSP (PyAV, TCP) or the built-in synthetic camera.

Runs on the camera's own thread: every call here blocks. A source yields demuxed packets; it never decodes.

Credentials are kept apart from the URL and inserted only in the string handed to libav. Everything that
leaves this module (errors, logs, `repr`) uses the URL without credentials: PyAV's exceptions carry the
full URL in their message and `.filename`, so they are translated here and never chained.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import av
import av.container
import av.error
import av.stream

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

    @property
    def video(self) -> av.stream.Stream: ...
    @property
    def audio(self) -> av.stream.Stream | None: ...
    @property
    def info(self) -> StreamInfo: ...

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


def open_source(
    url: str,
    *,
    username: str | None,
    password: str | None,
    open_timeout_s: float,
    read_timeout_s: float,
    stop: threading.Event,
    on_warning: Warn | None = None,
) -> Source:
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
        # Loaded only for a synthetic camera: it brings OpenCV and NumPy (~27 MiB) into the process.
        from edge.recorder.synthetic import SyntheticSource, SyntheticSpec

        return SyntheticSource(SyntheticSpec.from_url(url), stop=stop)
    raise SourceError(
        f"unsupported camera URL scheme {scheme!r} (use rtsp:// or synthetic:)", kind="unsupported"
    )
