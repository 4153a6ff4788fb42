"""One camera's recording loop, on its own named thread.

connect → record (segmenter + fan-out) → on any camera error, close the segment cleanly and retry with
jittered exponential backoff. Every state change is reported through `on_status` (called on this
thread; the daemon hands it to the event loop). Stops on `stop()` within one packet or one read timeout.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from edge.clock import Clock
from edge.errors import SourceError, StorageError
from edge.logsetup import bind
from edge.recorder.fanout import Fanout, MediaPacket, StreamDescription
from edge.recorder.ringbuffer import RingBuffer
from edge.recorder.segmenter import Segmenter, SegmentPolicy
from edge.recorder.source import StreamInfo, open_source
from edge.store import Store

log = logging.getLogger("edge.recorder")


@dataclass(frozen=True)
class CameraSpec:
    """What a recorder needs; the password is already decrypted and never printed."""

    id: int
    name: str
    url: str
    username: str | None
    password: str | None

    def __repr__(self) -> str:
        return f"CameraSpec(id={self.id}, name={self.name!r}, url={self.url!r})"


@dataclass(frozen=True)
class Backoff:
    min_s: float = 1.0
    max_s: float = 30.0

    def delay_s(self, failures: int, rng: random.Random) -> float:
        """Exponential with "equal jitter": half fixed, half random, capped."""
        ceiling = min(self.max_s, self.min_s * (2 ** max(0, failures - 1)))
        return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


@dataclass(frozen=True)
class CameraStatus:
    camera_id: int
    state: str  # starting | connecting | recording | retrying | stopped
    detail: str = ""  # error kind and message (credential-free) while retrying
    error_kind: str | None = None
    info: StreamInfo | None = None
    retry_in_s: float | None = None
    since_utc_ns: int = 0


class CameraRecorder:
    def __init__(
        self,
        spec: CameraSpec,
        *,
        data_dir: Path,
        policy: SegmentPolicy,
        backoff: Backoff,
        open_timeout_s: float,
        read_timeout_s: float,
        clock: Clock,
        ring: RingBuffer,
        fanout: Fanout,
        on_status: Callable[[CameraStatus], None],
        on_segment_closed: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self._data_dir = data_dir
        self._policy = policy
        self._backoff = backoff
        self._open_timeout_s = open_timeout_s
        self._read_timeout_s = read_timeout_s
        self._clock = clock
        self._ring = ring
        self.fanout = fanout
        self._on_status = on_status
        self._on_segment_closed = on_segment_closed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{spec.id}", daemon=True)
        self._log = bind(log, camera=spec.id)
        self._warned: set[str] = set()
        self._status = CameraStatus(spec.id, "starting", since_utc_ns=clock.now_utc_ns())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish; it closes its open segment cleanly."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def status(self) -> CameraStatus:
        return self._status

    def _set(self, state: str, **kw: object) -> None:
        self._status = replace(
            self._status,
            state=state,
            since_utc_ns=self._clock.now_utc_ns(),
            **kw,  # type: ignore[arg-type]
        )
        self._on_status(self._status)

    def _warn_once(self, event: str, message: str) -> None:
        if event not in self._warned:
            self._warned.add(event)
            self._log.warning(message, extra={"event": event})

    def _run(self) -> None:
        store = Store.open(self._data_dir, durable=False)
        rng = random.Random()
        failures = 0
        try:
            while not self._stop.is_set():
                error: SourceError | StorageError
                self._set("connecting", detail="", error_kind=None, retry_in_s=None)
                try:
                    recorded = self._record_once(store)
                    failures = 0 if recorded else failures + 1
                    if self._stop.is_set():
                        break
                    error = SourceError("camera ended the stream", kind="ended")
                except (SourceError, StorageError) as e:
                    failures += 1
                    error = e
                except Exception:
                    # Supervisor boundary: a bug must not end this camera's recording for good.
                    self._log.exception("recorder failed unexpectedly", extra={"event": "camera.crash"})
                    failures += 1
                    error = SourceError("internal error (see log)", kind="internal")
                delay = self._backoff.delay_s(max(1, failures), rng)
                self._log.warning(
                    "%s (%s); retrying in %.1f s",
                    error.message,
                    error.kind,
                    delay,
                    extra={"event": "camera.retry"},
                )
                self._set("retrying", detail=error.message, error_kind=error.kind, retry_in_s=round(delay, 1))
                self._stop.wait(delay)
        finally:
            store.close()
            self._set("stopped", retry_in_s=None)

    def _record_once(self, store: Store) -> bool:
        """Returns True if the connection delivered footage (resets the backoff)."""
        spec = self.spec
        source = open_source(
            spec.url,
            username=spec.username,
            password=spec.password,
            open_timeout_s=self._open_timeout_s,
            read_timeout_s=self._read_timeout_s,
            stop=self._stop,
            on_warning=self._warn_once,
        )
        segmenter: Segmenter | None = None
        recorded = False
        try:
            segmenter = Segmenter(
                camera_id=spec.id,
                data_dir=self._data_dir,
                video=source.video,
                audio=source.audio,
                policy=self._policy,
                clock=self._clock,
                store=store,
                on_disk_full=lambda need: self._ring.make_room(store, need),
                log=self._log,
                on_segment_closed=self._on_segment_closed,
            )
            self.fanout.reset(StreamDescription(source.video, source.audio))
            self._set("recording", info=source.info, detail="", error_kind=None)
            self._log.info(
                "recording %s %dx%d%s",
                source.info.video_codec,
                source.info.width,
                source.info.height,
                f" + {source.info.audio_codec}" if source.info.audio_recorded else "",
                extra={"event": "camera.recording"},
            )
            video_index = source.video.index
            time_bases: dict[int, Fraction] = {}
            for pkt in source.packets():
                if self._stop.is_set():
                    break
                index = pkt.stream_index
                is_video = index == video_index
                tb = time_bases.get(index) or time_bases.setdefault(index, pkt.time_base)
                self.fanout.publish(
                    MediaPacket.from_av(pkt, "video" if is_video else "audio", tb, self._clock.monotonic_ns())
                )
                segmenter.push(pkt, is_video=is_video)
                recorded = recorded or segmenter.open_segment_path is not None
        finally:
            self.fanout.reset(None)
            try:
                if segmenter is not None:
                    segmenter.close()
            finally:
                source.close()
        return recorded
