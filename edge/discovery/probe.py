"""Probe a candidate stream before it is offered to the owner: open it with PyAV, read what it carries
(codecs, picture size, frame rate), close it. Blocking; :func:`probe_streams` runs many at once in threads.

Why not :class:`edge.recorder.source.RtspSource`: a probe must report what a camera sends even when the
recorder would refuse it (MJPEG, audio-only); it must be quick (a small probe size and analyze duration,
where the recorder keeps libav's defaults); and it tells "connection refused" from "no route to host" by
errno, which the recorder's error translation folds into one kind. The credential handling is shared:
:func:`~edge.recorder.source.with_credentials` builds the only string that carries the password, and it
goes to libav alone. Results and errors carry the URL without credentials; every error text also passes
through :func:`~edge.redact.redact_text` with the password as a known secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import av
import av.container
import av.error

from edge.recorder.source import with_credentials
from edge.redact import redact_text, redact_url

# libav's stream analysis, kept short: discovery probes ~20 cameras in parallel inside a 3 s run. The
# SDP of an H.264/H.265 camera carries its parameter sets, so the picture size is known at once; 250 ms of
# packets is enough for the frame rate and for the audio codec. The probe size leaves room for one
# keyframe (a camera that sends its parameter sets in-band only needs one).
_OPTIONS = {
    "rtsp_transport": "tcp",
    "rtsp_flags": "prefer_tcp",
    "allowed_media_types": "video+audio",  # not ONVIF metadata tracks: fewer SETUPs, nothing to report
    "probesize": str(1 << 20),
    "analyzeduration": str(250_000),  # µs
}
_SCHEMES = ("rtsp", "rtsps")


@dataclass(frozen=True)
class ProbeResult:
    """What a stream carries. ``url`` has no credentials; ``error`` (when not ``ok``) says why in words and
    never holds a password. Codec names are libav's ("h264", "hevc", "aac", "pcm_mulaw", ...)."""

    url: str
    ok: bool
    error: str | None
    video_codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    audio_codec: str | None
    elapsed_s: float


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``rtsp://u:p@host/x`` -> (``rtsp://host/x``, "u", "p"), unquoted."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, sep, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user), unquote(password) if sep else None


def probe_stream(
    url: str, *, username: str | None = None, password: str | None = None, timeout_s: float = 5.0
) -> ProbeResult:
    """Open ``url``, read its stream parameters, close it; at most ``timeout_s`` (plus libav's teardown).

    Credentials may come as arguments or inside the URL; an argument that is given wins. Never raises for
    anything the URL, the stream or the network does: the result says what went wrong.
    """
    started = time.monotonic()
    try:
        safe_url, url_user, url_password = _split_credentials(url)
        scheme = urlsplit(safe_url).scheme.lower()
    except ValueError:  # e.g. an unclosed "[" of an IPv6 host
        safe_url, url_user, url_password, scheme = redact_url(url), None, None, None
    username = url_user if username is None else username
    password = url_password if password is None else password
    secrets = tuple(s for s in (password, url_password) if s)

    def failed(error: str) -> ProbeResult:
        return ProbeResult(
            url=safe_url,
            ok=False,
            error=redact_text(error, secrets),
            video_codec=None,
            width=None,
            height=None,
            fps=None,
            audio_codec=None,
            elapsed_s=time.monotonic() - started,
        )

    if scheme is None:
        return failed("not a valid URL")
    if scheme not in _SCHEMES:
        return failed(f"unsupported URL scheme {scheme!r} (use rtsp:// or rtsps://)")

    full = with_credentials(safe_url, username, password)
    options = dict(_OPTIONS, timeout=str(int(timeout_s * 1_000_000)))  # libav's socket timeout, µs
    try:
        container = av.open(full, options=options, timeout=(timeout_s, None))
    except (av.error.FFmpegError, OSError) as e:
        timed_out = time.monotonic() - started >= 0.9 * timeout_s
        return failed(_describe(e, timeout_s=timeout_s, timed_out=timed_out, had_credentials=bool(username)))
    finally:
        del full
    try:
        return _read_parameters(container, safe_url, started)
    finally:
        with contextlib.suppress(av.error.FFmpegError, OSError):
            container.close()  # tearing down a stream we are done with: nothing to report


def _read_parameters(container: av.container.InputContainer, url: str, started: float) -> ProbeResult:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    audio_codec = audio.codec_context.name if audio is not None else None
    if video is None:
        error = (
            "no video stream (audio only)" if audio is not None else "not a media stream (no audio or video)"
        )
        return ProbeResult(url, False, error, None, None, None, None, audio_codec, time.monotonic() - started)
    cc = video.codec_context
    rate = video.average_rate or video.guessed_rate
    return ProbeResult(
        url=url,
        ok=True,
        error=None,
        video_codec=cc.name,
        width=cc.width or None,  # 0: libav did not see a keyframe in time
        height=cc.height or None,
        fps=round(float(rate), 3) if rate else None,
        audio_codec=audio_codec,
        elapsed_s=time.monotonic() - started,
    )


def _describe(e: BaseException, *, timeout_s: float, timed_out: bool, had_credentials: bool) -> str:
    """A PyAV/OS error in words. libav reports an RTSP server that never answers as "invalid data" once the
    deadline interrupts it, so the caller says whether the whole timeout had elapsed."""
    code = e.errno if isinstance(e, OSError) else None
    if timed_out or isinstance(e, av.error.ExitError | TimeoutError) or code == errno.ETIMEDOUT:
        return f"timed out after {timeout_s:g} s"
    if isinstance(e, av.error.HTTPUnauthorizedError):
        return "authentication failed (401)" if had_credentials else "authentication required (401)"
    if isinstance(e, av.error.HTTPForbiddenError):
        return "access denied (403)"
    if isinstance(e, av.error.HTTPNotFoundError):
        return "no such stream (404)"
    if isinstance(e, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return "connection refused"
    if code == errno.EHOSTUNREACH:
        return "host unreachable"
    if code == errno.ENETUNREACH:
        return "network unreachable"
    if isinstance(e, av.error.InvalidDataError):
        return "not a media stream (the reply is not RTSP)"
    reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
    if isinstance(e, av.error.HTTPClientError | av.error.HTTPServerError):
        return f"the camera refused the request ({reason})"
    return f"cannot open the stream ({reason})"


async def probe_streams(
    items: Sequence[tuple[str, str | None, str | None]], *, timeout_s: float = 5.0, concurrency: int = 8
) -> list[ProbeResult]:
    """Probe ``(url, username, password)`` items, ``concurrency`` at a time on a pool of their own (the
    loop's default executor is shared and only ~CPU+4 threads wide). Results are in the order of ``items``.

    If cancelled, the probes already running finish in their threads (each within ``timeout_s``).
    """
    if not items:
        return []
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items))), thread_name_prefix="probe")
    try:
        futures = [
            loop.run_in_executor(
                pool, functools.partial(probe_stream, url, username=user, password=pw, timeout_s=timeout_s)
            )
            for url, user, pw in items
        ]
        return list(await asyncio.gather(*futures))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
