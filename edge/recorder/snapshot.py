"""A camera's picture as JPEG: from the live GOP cache, or from a recorded segment when nothing is live.

Both functions decode video (PyAV) and encode a JPEG (OpenCV): blocking CPU work of some milliseconds to
some tens of milliseconds. Call them on a worker thread (``asyncio.to_thread``), never on the event loop.

Only one frame is decoded: the keyframe the GOP or the segment's last GOP starts with (and, if the decoder
cannot show that alone, the packets after it until a frame comes out).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import av
import av.error
import av.stream
import cv2
import numpy as np
from av.video.codeccontext import VideoCodecContext

from edge.errors import Malformed, NotFound
from edge.recorder.export import bounded_url
from edge.recorder.fanout import MediaPacket, StreamDescription

DEFAULT_QUALITY = 85
_PROBE_OPTIONS = {"probesize": "32", "analyzeduration": "0"}  # the moov describes the track; no probing


def jpeg_from_gop(
    description: StreamDescription, packets: Sequence[MediaPacket], *, quality: int = DEFAULT_QUALITY
) -> bytes:
    """JPEG of the first decodable frame of a cached GOP (``Fanout.latest_gop()``).

    Blocking: run it off the event loop. Raises :class:`NotFound` for an empty GOP (no picture yet) and
    :class:`Malformed` if the GOP does not start at a keyframe or does not decode.
    """
    video = [p for p in packets if p.kind == "video"]
    if not video:
        raise NotFound("no live picture yet: the camera has not sent a keyframe")
    if not video[0].keyframe:
        raise Malformed("the cached GOP does not start at a keyframe")
    template = description.video
    decoder = _decoder(template, template.codec_context.extradata)
    frame = _first_frame(decoder, (_to_av(p) for p in video), "the live GOP")
    return encode_jpeg(frame.to_ndarray(format="bgr24"), quality=quality)


def jpeg_from_segment(path: Path, *, limit_bytes: int | None, quality: int = DEFAULT_QUALITY) -> bytes:
    """JPEG of the last keyframe of a segment file, reading at most its first ``limit_bytes`` bytes (the
    indexed, durable length of a segment still being written; None reads the whole file).

    Blocking: run it off the event loop. Raises :class:`NotFound` if the file is missing or holds no video
    yet, :class:`Malformed` if it cannot be read or decoded.
    """
    if not path.is_file():
        raise NotFound(f"no segment file {path.name}")
    if limit_bytes is not None and limit_bytes <= 0:
        raise NotFound(f"segment {path.name} holds no durable bytes yet")
    url = bounded_url(path, limit_bytes) if limit_bytes is not None else f"file:{path.resolve()}"
    try:
        with av.open(url, "r", format="mp4", options=_PROBE_OPTIONS) as container:
            if not container.streams.video:
                raise Malformed(f"segment {path.name} has no video track")
            vin = container.streams.video[0]
            gop = _last_gop(container.demux(vin))
            if gop is None:
                raise NotFound(f"segment {path.name} holds no video keyframe yet")
            decoder = _decoder(vin, vin.codec_context.extradata)
            frame = _first_frame(decoder, gop, f"segment {path.name}")
    except av.error.FFmpegError as e:
        raise Malformed(f"cannot read segment {path.name}: {e.strerror or type(e).__name__}") from None
    return encode_jpeg(frame.to_ndarray(format="bgr24"), quality=quality)


def encode_jpeg(bgr: np.ndarray[Any, Any], *, quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode a BGR image as JPEG (OpenCV). ``quality`` is 1..100."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, not {quality}")
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise Malformed("OpenCV could not encode the frame as JPEG")
    return bytes(buf.tobytes())


def _decoder(template: av.stream.Stream, extradata: bytes | None) -> VideoCodecContext:
    """A fresh decoder for the template's codec (never the template's own context: it may be an encoder,
    as for the synthetic camera, or in use by the camera thread)."""
    name = template.codec_context.codec.canonical_name  # "h264" even when the template is libx264
    try:
        decoder = av.CodecContext.create(name, "r")
    except (av.error.FFmpegError, ValueError) as e:
        raise Malformed(f"no decoder for {name}: {e}") from None
    if not isinstance(decoder, VideoCodecContext):
        raise Malformed(f"{name} is not a video codec")
    if extradata:
        decoder.extradata = extradata
    decoder.thread_type = "SLICE"  # frame threads would hold the first frame back
    return decoder


def _to_av(p: MediaPacket) -> av.Packet[Any]:
    pkt = av.Packet(p.data)
    pkt.pts, pkt.dts, pkt.time_base = p.pts, p.dts, p.time_base
    pkt.is_keyframe = p.keyframe
    return pkt


def _last_gop(packets: Iterable[av.Packet[Any]]) -> list[av.Packet[Any]] | None:
    """The packets from the last keyframe on (demuxing only: nothing is decoded here)."""
    gop: list[av.Packet[Any]] | None = None
    for pkt in packets:
        if pkt.dts is None:
            continue
        if pkt.is_keyframe:
            gop = [pkt]
        elif gop is not None:
            gop.append(pkt)
    return gop


def _first_frame(decoder: VideoCodecContext, packets: Iterable[av.Packet[Any]], what: str) -> av.VideoFrame:
    try:
        for pkt in packets:
            for frame in decoder.decode(pkt):
                if isinstance(frame, av.VideoFrame):
                    return frame
        for frame in decoder.decode(None):
            if isinstance(frame, av.VideoFrame):
                return frame
    except av.error.FFmpegError as e:
        raise Malformed(f"{what} does not decode: {e.strerror or type(e).__name__}") from None
    raise Malformed(f"{what} does not decode to a picture")
