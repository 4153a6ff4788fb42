"""Live packets for whoever watches: a GOP cache and bounded subscriber queues.

The camera thread publishes; subscribers consume on the event loop. The producer never waits: each
subscriber has a small queue, a full queue drops that subscriber (counted, with a reason), never the
recorder. A new subscriber first gets the cached packets since the last keyframe, so its first frame
decodes at once whatever the GOP length.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av

DEFAULT_QUEUE_PACKETS = 256


@dataclass(frozen=True)
class MediaPacket:
    """A packet detached from PyAV: safe to hand across threads and keep."""

    kind: str  # "video" | "audio"
    data: bytes
    pts: int | None
    dts: int
    duration: int
    time_base: Fraction
    keyframe: bool
    received_mono_ns: int

    @classmethod
    def from_av(
        cls, pkt: av.Packet[Any], kind: str, time_base: Fraction, received_mono_ns: int
    ) -> MediaPacket:
        """`time_base` is the stream's, passed in because PyAV builds a new Fraction on every access."""
        assert pkt.dts is not None
        return cls(
            kind=kind,
            data=bytes(pkt),
            pts=pkt.pts,
            dts=pkt.dts,
            duration=pkt.duration or 0,
            time_base=time_base,
            keyframe=bool(pkt.is_keyframe),
            received_mono_ns=received_mono_ns,
        )


@dataclass(frozen=True)
class StreamDescription:
    """What a subscriber needs to mux or decode the packets: the stream templates of the source."""

    video: av.stream.Stream
    audio: av.stream.Stream | None


class _Closed:
    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(eq=False)
class Subscription:
    """Consumed on the loop it was created on (`async for pkt in sub`)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[MediaPacket | _Closed]
    description: StreamDescription | None
    closed_reason: str | None = None
    dropped: bool = False
    _fanout: Fanout | None = field(default=None, repr=False)

    def _offer(self, item: MediaPacket | _Closed) -> None:
        """Runs on the loop."""
        if self.closed_reason is not None:
            return
        if isinstance(item, _Closed):
            self.closed_reason = item.reason
            self._force(item)
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped = True
            self.closed_reason = "slow subscriber: queue full"
            if self._fanout is not None:
                self._fanout._drop(self)
            self._force(_Closed(self.closed_reason))

    def _force(self, item: _Closed) -> None:
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    def close(self) -> None:
        if self._fanout is not None:
            self._fanout.unsubscribe(self)

    async def next(self, timeout: float | None = None) -> MediaPacket | None:
        """The next packet, or None once the subscription is closed (``closed_reason`` says why);
        TimeoutError if none comes within ``timeout`` seconds."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the item instead of raising when the
        # caller is cancelled just as the item arrives, so a cancelled consumer would go on consuming.
        async with asyncio.timeout(timeout):
            item = await self.queue.get()
        if isinstance(item, _Closed):
            self._force(item)  # stays closed for later calls
            return None
        return item

    def __aiter__(self) -> AsyncIterator[MediaPacket]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[MediaPacket]:
        while True:
            item = await self.queue.get()
            if isinstance(item, _Closed):
                return
            yield item


class Fanout:
    """One per camera. `publish` and `reset` run on the camera thread; `subscribe` on any loop."""

    def __init__(self, camera_id: int, *, gop_cache_max_bytes: int = 16 << 20) -> None:
        self.camera_id = camera_id
        self._max_bytes = gop_cache_max_bytes
        self._lock = threading.Lock()
        self._gop: list[MediaPacket] = []
        self._gop_bytes = 0
        self._gop_valid = False  # False until a keyframe is cached (or after an over-long GOP)
        self._subs: list[Subscription] = []
        self._description: StreamDescription | None = None
        self.dropped_subscribers = 0

    # --- camera thread -------------------------------------------------------------------------

    def reset(self, description: StreamDescription | None) -> None:
        """A new source connection (or none): the cache no longer applies; subscribers are told."""
        with self._lock:
            self._description = description
            self._gop.clear()
            self._gop_bytes = 0
            self._gop_valid = False
            subs = list(self._subs) if description is None else []
            if description is None:
                self._subs.clear()
        for s in subs:
            s.loop.call_soon_threadsafe(s._offer, _Closed("camera disconnected"))

    def publish(self, pkt: MediaPacket) -> None:
        with self._lock:
            if pkt.kind == "video" and pkt.keyframe:
                self._gop.clear()
                self._gop_bytes = 0
                self._gop_valid = True
            if self._gop_valid:
                self._gop.append(pkt)
                self._gop_bytes += len(pkt.data)
                if self._gop_bytes > self._max_bytes:
                    # A GOP too long to hold: a late joiner would wait for the next keyframe.
                    self._gop.clear()
                    self._gop_bytes = 0
                    self._gop_valid = False
            subs = tuple(self._subs)
        for s in subs:
            s.loop.call_soon_threadsafe(s._offer, pkt)

    # --- any thread ----------------------------------------------------------------------------

    def latest_gop(self) -> tuple[StreamDescription | None, list[MediaPacket]]:
        with self._lock:
            return self._description, list(self._gop) if self._gop_valid else []

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subs)

    def subscribe(self, *, queue_packets: int = DEFAULT_QUEUE_PACKETS) -> Subscription:
        """Must run on the subscriber's event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            backlog = self._gop if self._gop_valid else []
            # Room for the whole cached GOP plus the usual headroom: joining never overflows.
            sub = Subscription(
                loop, asyncio.Queue(queue_packets + len(backlog)), self._description, _fanout=self
            )
            for pkt in backlog:
                sub.queue.put_nowait(pkt)
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
        sub.loop.call_soon_threadsafe(sub._offer, _Closed("unsubscribed"))

    def _drop(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
                self.dropped_subscribers += 1
