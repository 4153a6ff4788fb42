"""The box's end of the control channel (docs/protocol.md §4.2): one outbound WebSocket to the paired hub,
kept open for the box's life.

``wss://<hub>/v1/control`` over TLS 1.3, trusting only the pinned root and presenting the client certificate
(:func:`edge.uplink.pairing.client_ssl_context`). On connect the box says ``hello``; both ends send a
``heartbeat`` every 20 s and drop the connection after 3 silent intervals; the box then reconnects after a
jittered exponential backoff (1 s doubling to 60 s, each delay drawn from [½, 1] of its step, reset once
the hub has said anything on a connection). The hub asks for ``dev_nonce`` challenges and sends requests;
every request goes through the :class:`~edge.uplink.gate.Gate` on the caller's database thread (SQLite must
not block the event loop, and a :class:`~edge.store.Store` belongs to one thread) and is answered with the
signed decision. Checkpoints go up when the caller sends them; the hub's co-signatures come back to a
callback, each checked first against the witness key pinned at pairing (a bad one is logged and dropped;
with no pinned key, from a hub that sent none, they pass flagged unverified). The latest registry document
(:mod:`edge.uplink.registry`) goes up when the caller gives it and again on every connection; the hub
acknowledges its version. Hostile or broken messages are logged and ignored; they never end the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import aiohttp
import yarl

from edge import __version__, checkpoint
from edge.errors import Error
from edge.uplink import controlwire as wire
from edge.uplink.gate import Gate, Outcome

log = logging.getLogger(__name__)

T = TypeVar("T")
CONNECT_TIMEOUT_S: Final = 10.0
MAX_PENDING_CHECKPOINTS: Final = 16


class ControlError(Error):
    kind = "control"


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff: attempt n waits uniform(0.5, 1) * min(max_s, initial_s * 2**n)."""

    initial_s: float = wire.BACKOFF_INITIAL_S
    max_s: float = wire.BACKOFF_MAX_S

    def delay(self, attempt: int, rng: random.Random) -> float:
        step = min(self.max_s, self.initial_s * 2.0 ** min(attempt, 32))
        return float(step * rng.uniform(0.5, 1.0))


@dataclass(frozen=True)
class HubCosignature:
    """The hub's cosignature of a checkpoint the box sent: ``note`` is the box's signed note as sent,
    ``line`` the hub's signature line (append it, plus a newline, to the note to get the cosigned note).
    ``verified``: checked against the pinned witness key (False only when the pairing has none), then
    ``timestamp`` is the cosignature's time (Unix seconds)."""

    size: int
    note: str
    line: str
    verified: bool = False
    timestamp: int | None = None


def control_url(hub_url: str) -> str:
    """``https://host:port`` (the pinned hub URL) → ``wss://host:port/v1/control``."""
    url = yarl.URL(hub_url)
    if url.scheme != "https" or not url.host:
        raise ControlError(f"the hub URL must be https://, not {hub_url!r}")
    return str(url.with_scheme("wss").with_path(wire.PATH).with_query(None).with_fragment(None))


Callback = Callable[[T], Awaitable[None] | None]


class ControlClient:
    """Run with :meth:`start` (or ``await run()``), stop with :meth:`close`."""

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext,
        *,
        device_id: str,
        gate: Gate,
        executor: Executor,
        on_accepted: Callback[Outcome] | None = None,
        on_cosignature: Callback[HubCosignature] | None = None,
        on_keyset: Callback[str] | None = None,
        witness_name: str | None = None,
        witness_key: bytes | None = None,
        version: str = __version__,
        heartbeat_s: float = wire.HEARTBEAT_S,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """``executor`` runs every gate call: it must be the thread the gate's store was opened on.
        ``witness_name``/``witness_key``: the pairing's (:class:`edge.uplink.pairing.Pairing`)."""
        self.url = url
        self._ssl = ssl_context
        self.device_id = device_id
        self.gate = gate
        self._executor = executor
        self._on_accepted = on_accepted
        self._on_cosignature = on_cosignature
        self._on_keyset = on_keyset
        self._witness = (witness_name, witness_key) if witness_name and witness_key else None
        self.version = version
        self.heartbeat_s = heartbeat_s
        self.backoff = backoff or Backoff()
        self._rng = rng or random.SystemRandom()
        self._clock_ns = clock_ns
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: dict[int, str] = {}  # checkpoint size → note sent, awaiting its cosignature
        self._registry: str | None = None  # the latest registry document, encoded: resent on every connection
        self._registry_version: int | None = None
        self.registry_acked: int | None = None  # the version the hub last acknowledged
        # Observable for status pages and tests.
        self.connections = 0
        self.delays: deque[float] = deque(maxlen=64)
        self.ignored = 0

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="control-channel")
        return self._task

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def close(self) -> None:
        """Close the channel (code 1000) and stop reconnecting."""
        self._closing.set()
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=wire.CLOSE_NORMAL, message=b"box closing")
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run(self) -> None:
        attempt = 0
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._closing.is_set():
                heard = False
                try:
                    heard = await self._connection(session)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("control channel to %s: %s", self.url, _describe(e))
                finally:
                    self._ws = None
                    self._connected.clear()
                if self._closing.is_set():
                    break
                attempt = 0 if heard else attempt + 1
                delay = self.backoff.delay(attempt, self._rng)
                self.delays.append(delay)
                log.info("control channel: reconnecting in %.1f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)

    # --- sending ------------------------------------------------------------------------------------------

    async def send_checkpoint(self, note: bytes | str) -> None:
        """Send a signed checkpoint note for the hub to cosign; :class:`ControlError` if not connected."""
        text = note.decode("utf-8") if isinstance(note, bytes) else note
        size = _tree_size(text)
        self._pending[size] = text
        while len(self._pending) > MAX_PENDING_CHECKPOINTS:
            del self._pending[next(iter(self._pending))]
        await self._send({"type": "checkpoint", "note": text})

    async def send_registry(self, doc: dict[str, Any]) -> bool:
        """Send a registry document (:func:`edge.uplink.registry.build`) now if connected, and again on every
        connection until a newer one replaces it; True if it went now. :class:`ControlError` if the
        document is not a registry or is over the hub's message limit (then the previous one stays)."""
        version = doc.get("version")
        if doc.get("type") != "registry" or type(version) is not int:
            raise ControlError("not a registry document")
        if self._registry_version is not None and version <= self._registry_version:
            raise ControlError(f"registry version {version} is not above {self._registry_version}")
        text = wire.encode(doc)
        size = len(text.encode("utf-8"))
        if size > wire.MAX_MESSAGE_BYTES:
            raise ControlError(f"the registry is {size} bytes, over the hub's limit {wire.MAX_MESSAGE_BYTES}")
        self._registry, self._registry_version = text, version
        if not self.connected:
            return False  # it goes right after the next hello
        try:
            await self._send_text(text)
        except (ControlError, ConnectionError, aiohttp.ClientError):
            return False  # it goes on the next connection
        return True

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_text(wire.encode(message))

    async def _send_text(self, text: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ControlError("the control channel is not connected")
        async with self._send_lock:
            await ws.send_str(text)

    # --- one connection -----------------------------------------------------------------------------------

    async def _connection(self, session: aiohttp.ClientSession) -> bool:
        """Connect, say hello, serve until the connection ends; True if the hub said anything."""
        async with session.ws_connect(
            self.url,
            ssl=self._ssl,
            max_msg_size=wire.TRANSPORT_MAX_BYTES,
            autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        ) as ws:
            self._ws = ws
            self.connections += 1
            await self._send({"type": "hello", "device_id": self.device_id, "version": self.version})
            self._connected.set()
            # After connected is set: a document given from here on is sent by send_registry itself, one
            # given before is the latest here. Either way the hub ends with the newest.
            if self._registry is not None:
                await self._send_text(self._registry)
            log.info("control channel connected to %s", self.url)
            beat = asyncio.create_task(self._heartbeats(ws))
            heard = False
            try:
                while True:
                    try:
                        msg = await ws.receive(timeout=self.heartbeat_s * wire.MISSED_HEARTBEATS)
                    except TimeoutError:
                        log.warning("control channel: %d heartbeats missed", wire.MISSED_HEARTBEATS)
                        return heard
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        heard |= self._dispatch(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        self._ignore("a binary frame")
                    elif msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                        continue
                    else:  # CLOSE, CLOSING, CLOSED, ERROR
                        if msg.type == aiohttp.WSMsgType.ERROR:
                            log.warning("control channel: %s", _describe(ws.exception()))
                        else:
                            log.info("control channel closed by the hub (%s)", ws.close_code)
                        return heard
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat

    async def _heartbeats(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(self.heartbeat_s)
            with contextlib.suppress(ControlError, ConnectionError, aiohttp.ClientError):
                await self._send({"type": "heartbeat"})

    def _dispatch(self, text: str) -> bool:
        """Handle one text frame; True if it was a message we accept."""
        try:
            message = wire.decode(text, wire.HUB_TYPES)
            kind = message["type"]
            if kind == "heartbeat":
                pass
            elif kind == "nonce_request":
                self._spawn(self._answer_nonce())
            elif kind == "request":
                token = wire.field(message, "token", str, max_chars=wire.MAX_MESSAGE_BYTES)
                self._spawn(self._answer_request(token))
            elif kind == "keyset":
                # The hub's signing key set (docs/protocol.md §3), sent on every connection and after a
                # rotation; the callback checks it against the pinned set and pins it if it is newer.
                keyset = wire.field(message, "token", str, max_chars=wire.MAX_MESSAGE_BYTES)
                if self._on_keyset is not None:
                    self._spawn(_call(self._on_keyset, keyset))
            elif kind == "cosignature":
                size = wire.field(message, "size", int)
                line = wire.field(message, "line", str, max_chars=1024)
                self._spawn(self._take_cosignature(size, line))
            elif kind == "registry_ack":
                acked = wire.field(message, "version", int)
                if self._registry_version is None or acked > self._registry_version:
                    raise wire.WireError(f"an ack for registry version {acked}, which was not sent")
                # An ack for an older version may cross a newer document on the wire: keep the highest.
                self.registry_acked = max(acked, self.registry_acked or 0)
                log.info("control channel: the hub has registry version %d", acked)
            elif kind == "error":
                log.warning(
                    "the hub reports %s: %s",
                    str(message.get("code"))[:40],
                    str(message.get("detail"))[: wire.MAX_TEXT_CHARS],
                )
        except wire.WireError as e:
            self._ignore(e.message)
            return False
        return True

    def _ignore(self, why: str) -> None:
        self.ignored += 1
        log.info("control channel: ignored %s", why)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("control channel task failed: %s", _describe(task.exception()))

    async def _db(self, fn: Callable[..., T], **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, **kw))

    async def _answer_nonce(self) -> None:
        nonce = await self._db(self.gate.issue_nonce, now_utc_ns=self._clock_ns())
        await self._send({"type": "nonce", "nonce": nonce})

    async def _answer_request(self, token: str) -> None:
        outcome = await self._db(self.gate.handle, token=token, now_utc_ns=self._clock_ns())
        log.info("request %s: %s %s", outcome.jti[:24], outcome.message["decision"], outcome.code or "")
        try:
            await self._send(outcome.message)
        finally:
            # Accepted is accepted (it is logged): the session is the caller's, whether or not the hub heard.
            if outcome.accepted and self._on_accepted is not None:
                await _call(self._on_accepted, outcome)

    async def _take_cosignature(self, size: int, line: str) -> None:
        note = self._pending.get(size)
        if note is None:
            self._ignore(f"a cosignature for size {size}, which was not sent")
            return
        cosignature = HubCosignature(size, note, line)
        if self._witness is not None:
            name, key = self._witness
            try:
                text, _sigs = checkpoint.parse_note(note.encode("utf-8"))
                ts = wire.verify_cosignature(text, line, name=name, public_key=key).timestamp
            except (wire.WireError, checkpoint.CheckpointError) as e:
                # Kept pending: the right cosignature may still come.
                log.warning("control channel: dropped a cosignature for size %d: %s", size, e.message)
                self.ignored += 1
                return
            cosignature = HubCosignature(size, note, line, verified=True, timestamp=ts)
        del self._pending[size]
        if self._on_cosignature is not None:
            await _call(self._on_cosignature, cosignature)


async def _call(fn: Callable[[T], Awaitable[None] | None], arg: T) -> None:
    try:
        result = fn(arg)
        if inspect.isawaitable(result):
            await result
    except Exception as e:
        log.error("control channel callback failed: %s", _describe(e))


def _tree_size(note: str) -> int:
    lines = note.split("\n", 2)
    if len(lines) < 3 or not lines[1].isdigit():
        raise ControlError("not a checkpoint note (no tree size on its second line)")
    return int(lines[1])


def _describe(e: BaseException | None) -> str:
    if e is None:
        return "unknown error"
    if isinstance(e, Error):
        return e.message
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"
