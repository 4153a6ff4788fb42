"""The box's open media sessions: start one stream per camera of an accepted request, keep the owner's word
while they run, log them.

* **Busy** — the gate marks a request's cameras busy on the database thread the moment it accepts
  (:meth:`Sessions.reserve`), so a second request a millisecond later is refused ``busy``; they are free again
  when the stream ends.
* **The owner's word** — while any stream runs, the owner's settings are read again every 0.25 s: the kill
  switch ends every stream (``killswitch``); a camera whose consent no longer admits the request (withdrawn,
  made private or registered, live turned off, the radius shrunk, the camera removed) ends its stream
  (``withdrawn``). The request is judged again by the same :func:`edge.consent.decide` as at the start, at
  the time it was accepted, so only the owner's changes count.
* **The record** — ``session.started`` and ``session.ended`` (reason, frames, bytes, duration) go into the
  audit log, and a checkpoint is signed (and sent to the hub to cosign) at both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import aiohttp

from edge import holds
from edge.audit import AuditLog, Event
from edge.clock import NS_PER_S, Clock
from edge.config import UplinkConfig
from edge.consent import Usage, decide
from edge.owner import killswitch_engaged
from edge.recorder.fanout import Fanout
from edge.store import Store
from edge.uplink import media
from edge.uplink.claims import AccessRequest
from edge.uplink.gate import policies
from edge.uplink.session import (
    LiveSource,
    MediaStream,
    PieceSource,
    RecordedSource,
    SessionError,
    StreamResult,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

WATCH_INTERVAL_S: Final = 0.25
SHARE_MAX_DUR_S: Final = 3600  # a shared clip is sent at the rate cap; an hour covers any sane range


class RunOnDb(Protocol):
    """Runs ``fn`` on the thread the store belongs to."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


@dataclasses.dataclass(frozen=True)
class Uplink:
    """Where streams go: the pinned hub and the TLS context with the box's client certificate."""

    hub_url: str
    ssl_context: ssl.SSLContext
    device_id: str


class Sessions:
    """Runs on the daemon's event loop; ``store`` lives on the thread behind ``db``."""

    def __init__(
        self,
        *,
        uplink: Uplink,
        store: Store,
        db: RunOnDb,
        data_dir: Path,
        clock: Clock,
        config: UplinkConfig,
        fanout: Callable[[int], Fanout | None],
        checkpoint: Callable[[], Awaitable[None]],
    ) -> None:
        self.uplink = uplink
        self._store = store
        self._db = db
        self._data_dir = data_dir
        self._clock = clock
        self._config = config
        self._fanout = fanout
        self._checkpoint = checkpoint
        self._audit = AuditLog(store)
        self._lock = threading.Lock()
        self._busy: frozenset[int] = frozenset()
        self._streams: dict[int, MediaStream] = {}
        self._holds: dict[int, int] = {}  # id(stream) -> the hold on what it sent
        self._starts: dict[int, asyncio.Future[None]] = {}  # id(stream) -> writing its start record
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self.results: deque[StreamResult] = deque(maxlen=64)  # the latest ended streams, newest last

    # --- the gate's side (database thread) ------------------------------------------------------------------

    def open_cameras(self) -> frozenset[int]:
        return self._busy

    def reserve(self, request: AccessRequest) -> None:
        with self._lock:
            self._busy = self._busy | frozenset(request.scope.cameras)

    def _release(self, camera_id: int) -> None:
        with self._lock:
            self._busy = self._busy - {camera_id}

    # --- the loop's side ------------------------------------------------------------------------------------

    def start(self, request: AccessRequest) -> None:
        """Start a stream per camera of an accepted (and reserved) request."""
        for camera_id in request.scope.cameras:
            self._spawn(self._run(request, camera_id))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10)
            )
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="session-watch")

    def start_share(self, request: AccessRequest, camera_id: int, from_utc_ns: int, to_utc_ns: int) -> str:
        """The owner answers a notice (a request refused ``not_integrated``) with a clip of ``camera_id``:
        sent like a recorded session, in mode ``share``, to the request's viewer key. The session handle."""
        with self._lock:
            if camera_id in self._busy:
                raise SessionError(f"camera {camera_id} is already sending", kind="busy")
            self._busy = self._busy | {camera_id}
        scope = dataclasses.replace(
            request.scope, cameras=(camera_id,), mode="recorded",
            from_s=from_utc_ns // NS_PER_S, to_s=-(-to_utc_ns // NS_PER_S),
        )  # fmt: skip
        shared = dataclasses.replace(request, scope=scope, max_dur=SHARE_MAX_DUR_S)
        self._spawn(self._run(shared, camera_id, mode="share"))
        return media.session_handle(request.jti)

    @property
    def streams(self) -> dict[int, MediaStream]:
        return dict(self._streams)

    async def close(self) -> None:
        """The box is stopping: end every stream (reason ``box_stopping``, final frame sent, logged)."""
        for s in self._streams.values():
            s.stop("box_stopping")
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._http is not None:
            await self._http.close()

    def _source(self, request: AccessRequest, camera_id: int) -> PieceSource:
        if request.scope.mode == "live":
            fanout = self._fanout(camera_id)
            if fanout is None:
                return _Unavailable()
            return LiveSource(fanout, self._clock, idle_s=self._config.camera_idle_s)
        assert request.scope.from_s is not None and request.scope.to_s is not None
        return RecordedSource(
            self._data_dir, camera_id=camera_id,
            from_utc_ns=request.scope.from_s * NS_PER_S, to_utc_ns=request.scope.to_s * NS_PER_S,
        )  # fmt: skip

    async def _run(self, request: AccessRequest, camera_id: int, *, mode: str | None = None) -> None:
        assert self._http is not None
        rate = None if request.scope.mode == "live" else self._config.recorded_rate_mbit * 1e6 / 8
        stream = MediaStream(
            request, camera_id, self._source(request, camera_id),
            hub_url=self.uplink.hub_url, ssl_context=self.uplink.ssl_context,
            device_id=self.uplink.device_id, session=self._http, rate_bytes_per_s=rate,
            on_started=self._started, mode=mode,
        )  # fmt: skip
        self._streams[camera_id] = stream
        try:
            result = await stream.run()
        finally:
            self._streams.pop(camera_id, None)
            self._release(camera_id)
        self.results.append(result)
        log.info(
            "session %s camera %d ended: %s (%d frames, %d bytes, %.1f s) %s",
            media.session_handle(request.jti), camera_id, result.reason, result.frames, result.bytes,
            result.duration_s, result.detail,
            extra={"event": "session.ended", "camera": camera_id},
        )  # fmt: skip
        details: dict[str, Any] = {
            "session": media.session_handle(request.jti),
            "reason": result.reason,
            "frames": result.frames,
            "bytes": result.bytes,
            "duration_ms": round(result.duration_s * 1000),
        }
        if result.detail:
            details["detail"] = result.detail[:200]
        event = Event("session.ended", "daemon", (camera_id,), request.jti, details)
        started = self._starts.pop(id(stream), None)
        if started is not None:
            await started  # its entry and hold come first
        hold_id = self._holds.pop(id(stream), None)

        def record(now: int) -> None:
            if hold_id is not None and request.scope.mode == "live":
                holds.extend(self._store, hold_id, now)
            self._audit.append([event], now_utc_ns=now)

        await self._record(record)

    def _started(self, stream: MediaStream, start_ms: int) -> None:
        request = stream.request
        details: dict[str, Any] = {
            "session": media.session_handle(request.jti),
            "mode": stream.mode,
            "start_ms": start_ms,
            "max_dur": request.max_dur,
        }
        if request.scope.mode == "recorded":
            details |= {"from": request.scope.from_s, "to": request.scope.to_s}
        log.info(
            "session %s camera %d started (%s)", details["session"], stream.camera_id, stream.mode,
            extra={"event": "session.started", "camera": stream.camera_id},
        )  # fmt: skip
        # What is sent is evidence: hold it from retention until the owner releases it. Live footage is held
        # from the first frame on; the hold grows to the session's end when it ends.
        if request.scope.mode == "recorded":
            assert request.scope.to_s is not None
            to_ns = request.scope.to_s * NS_PER_S
        else:
            to_ns = self._clock.now_utc_ns()
        hold_from = min(start_ms * 1_000_000, to_ns)
        reason: holds.Reason = "share" if stream.mode == "share" else "session"
        event = Event("session.started", "daemon", (stream.camera_id,), request.jti, details)
        store, camera_id = self._store, stream.camera_id

        def record(now: int) -> None:
            hold = holds.place(
                store, camera_id=camera_id, from_utc_ns=hold_from, to_utc_ns=to_ns, reason=reason,
                request=request.jti, actor="daemon", now_utc_ns=now,
            )  # fmt: skip
            self._holds[id(stream)] = hold.id
            self._audit.append([event], now_utc_ns=now)

        self._starts[id(stream)] = asyncio.ensure_future(self._record(record))

    async def _record(self, write: Callable[[int], None]) -> None:
        """Write a session's record on the database thread, then sign a checkpoint for the hub."""
        now = self._clock.now_utc_ns()
        try:
            await self._db(functools.partial(write, now))
            await self._checkpoint()
        except Exception as e:  # a failed checkpoint upload must not end a session or hide its entry
            log.warning("session record: %s", e, extra={"event": "session.record_failed"})

    async def _watch(self) -> None:
        while self._streams or self._tasks:
            await asyncio.sleep(WATCH_INTERVAL_S)
            streams = list(self._streams.values())
            if not streams:
                continue
            verdicts = await self._db(functools.partial(self._verdicts, streams))
            for stream, reason in zip(streams, verdicts, strict=True):
                if reason is not None:
                    stream.stop(reason)

    def _verdicts(self, streams: list[MediaStream]) -> list[str | None]:
        """On the database thread: the stop reason for each stream, or None to go on."""
        store = self._store
        if killswitch_engaged(store) is not None:
            return ["killswitch"] * len(streams)
        current = policies(store)
        out: list[str | None] = []
        for s in streams:
            if s.mode == "share":  # the owner's own act for a camera police may not open: kill switch only
                out.append(None)
                continue
            one = dataclasses.replace(s.request.scope, cameras=(s.camera_id,))
            again = decide(dataclasses.replace(s.request, scope=one), current, Usage(), s.request.iat)
            out.append(None if again.accepted else "withdrawn")
        return out


class _Unavailable:
    """A live request for a camera that is not recording right now."""

    async def open(self) -> int:
        raise SessionError("the camera is not recording", kind="camera_lost")

    async def next(self) -> bytes | None:
        return None

    def close(self) -> None:
        pass
