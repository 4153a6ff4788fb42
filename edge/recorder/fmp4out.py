"""Packets in, fragmented MP4 pieces out, in memory: the init segment, then whole fragments.

What a media session sends (docs/protocol.md §8.1): each piece becomes one sealed frame. Stream copy only;
libav's mp4 muxer writes, :class:`~edge.recorder.fmp4stream.FragmentTracker` cuts its bytes at box
boundaries, and nothing touches the disk.

Timing: media time 0 is the first video packet (a keyframe; earlier packets are dropped). As in the
segmenter, one video packet is held back until the next one gives its duration (RTSP packets carry none, and
a fragment's last sample would otherwise last 0 ticks). With ``every_frame`` each video frame is its own
fragment (live: the viewer gets a frame as soon as the muxer has it); otherwise fragments start at keyframes
and last about ``fragment_ms`` (recorded: fewer, larger frames).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Final

import av
import av.container
import av.error
import av.stream

from edge.errors import Malformed, SourceError
from edge.recorder.fanout import MediaPacket
from edge.recorder.fmp4stream import FragmentComplete, FragmentTracker, InitComplete

DEFAULT_FRAGMENT_MS: Final = 1000


def muxer_options(*, every_frame: bool, fragment_ms: int = DEFAULT_FRAGMENT_MS) -> dict[str, str]:
    """libav mp4 options for a fragmented stream: an empty moov (the init segment), then fragments at every
    frame or at keyframes every ``fragment_ms``."""
    flags = "empty_moov+default_base_moof+" + ("frag_every_frame" if every_frame else "frag_keyframe")
    options = {"movflags": flags}
    if not every_frame:
        options["frag_duration"] = str(fragment_ms * 1000)
    return options


class PieceSink:
    """libav's output (a file-like object): cuts the bytes into pieces as the tracker sees each box
    complete, and hands each piece to ``on_piece`` (or keeps them in :attr:`pieces`). Not seekable, so libav
    flushes after every packet. An exception from ``on_piece`` comes out of the mux call that wrote it."""

    def __init__(self, on_piece: Callable[[bytes], None] | None = None) -> None:
        self.tracker = FragmentTracker()
        self.buffer = bytearray()
        self.base = 0  # stream offset of buffer[0]
        self.pieces: list[bytes] = []
        self._on_piece = on_piece if on_piece is not None else self.pieces.append

    def write(self, data: bytes) -> int:
        self.buffer += data
        for ev in self.tracker.feed(bytes(data)):
            if isinstance(ev, InitComplete):
                self._cut(ev.end_offset)
            elif isinstance(ev, FragmentComplete):
                self._cut(ev.end_offset, start=ev.start_offset)
        return len(data)

    def _cut(self, end: int, *, start: int | None = None) -> None:
        if start is not None and start > self.base:  # skipped boxes (free, sidx …) before the fragment
            del self.buffer[: start - self.base]
            self.base = start
        n = end - self.base
        self._on_piece(bytes(self.buffer[:n]))
        del self.buffer[:n]
        self.base = end


def _ticks(ns_or_ticks: int, src: Fraction, dst: Fraction) -> int:
    return ns_or_ticks * src.numerator * dst.denominator // (src.denominator * dst.numerator)


class Fmp4Writer:
    """One stream: feed packets with :meth:`push`, collect pieces from :meth:`take`, end with :meth:`close`.

    Not thread-safe. Raises :class:`SourceError` if libav refuses a packet or the streams.
    """

    def __init__(
        self,
        video: av.stream.Stream,
        audio: av.stream.Stream | None = None,
        *,
        every_frame: bool = False,
        fragment_ms: int = DEFAULT_FRAGMENT_MS,
    ) -> None:
        self._sink = PieceSink()
        options = muxer_options(every_frame=every_frame, fragment_ms=fragment_ms)
        try:
            self._out = av.open(self._sink, "w", format="mp4", options=options)
            self._video = self._out.add_stream_from_template(video)
            if video.codec_context.name == "hevc":
                self._video.codec_tag = "hvc1"  # what browsers require for H.265 in MP4
            self._audio = self._out.add_stream_from_template(audio) if audio is not None else None
        except (av.error.FFmpegError, ValueError) as e:
            raise SourceError(f"cannot mux this stream as MP4: {e}") from None
        self._held: MediaPacket | None = None
        self._origin: MediaPacket | None = None  # the first video keyframe: media time 0
        self._last_audio_dts: int | None = None
        self._closed = False
        self.packets = 0

    @property
    def started(self) -> bool:
        """True once a keyframe began the stream."""
        return self._origin is not None

    def push(self, pkt: MediaPacket) -> None:
        if self._closed:
            raise SourceError("the writer is closed")
        if pkt.kind == "video":
            self._push_video(pkt)
        elif self._origin is not None and self._audio is not None:
            self._push_audio(pkt)

    def push_all(self, packets: Iterable[MediaPacket]) -> None:
        for pkt in packets:
            self.push(pkt)

    def _push_video(self, pkt: MediaPacket) -> None:
        if self._origin is None:
            if not pkt.keyframe:
                return  # nothing decodable before the first keyframe
            self._origin = pkt
        held = self._held
        if held is not None:
            step = pkt.dts - held.dts
            if step <= 0:
                raise Malformed(f"video timestamps went backwards ({held.dts} then {pkt.dts})")
            self._mux(held, duration=step)
        self._held = pkt

    def _push_audio(self, pkt: MediaPacket) -> None:
        assert self._origin is not None
        origin = _ticks(self._origin.dts, self._origin.time_base, pkt.time_base)
        if pkt.dts < origin or (self._last_audio_dts is not None and pkt.dts <= self._last_audio_dts):
            return  # before the first frame, or out of order: the muxer would refuse it
        self._last_audio_dts = pkt.dts
        self._mux(pkt, duration=pkt.duration, origin=origin)

    def _mux(self, p: MediaPacket, *, duration: int, origin: int | None = None) -> None:
        assert self._origin is not None
        video = p.kind == "video"
        if origin is None:
            origin = self._origin.dts
        out = av.Packet(p.data)
        out.dts = p.dts - origin
        out.pts = (p.pts - origin) if p.pts is not None else out.dts
        out.duration = duration
        out.time_base = p.time_base
        out.is_keyframe = p.keyframe
        stream = self._video if video else self._audio
        assert stream is not None
        out.stream = stream
        try:
            self._out.mux_one(out)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise SourceError(f"the muxer refused a {p.kind} packet: {e}") from None
        self.packets += 1

    def take(self) -> list[bytes]:
        """The pieces completed since the last call: the init segment first, then whole fragments."""
        pieces = list(self._sink.pieces)
        self._sink.pieces.clear()
        return pieces

    def close(self) -> list[bytes]:
        """Mux the held packet, flush the last fragment; the remaining pieces (the trailer's mfra is not a
        piece and is dropped)."""
        if not self._closed:
            self._closed = True
            held, self._held = self._held, None
            try:
                if held is not None:
                    self._mux(held, duration=_last_duration(held))
                self._out.close()
            except (av.error.FFmpegError, OSError) as e:
                raise SourceError(f"the muxer failed to finish: {e}") from None
        return self.take()


def _last_duration(p: MediaPacket) -> int:
    """The last frame has no successor: its own duration if it has one, else one 25 fps frame."""
    if p.duration > 0:
        return p.duration
    return max(1, _ticks(1, Fraction(1, 25), p.time_base))
