"""The reference hub's end of the control channel: ``GET /v1/control`` (WebSocket), docs/protocol.md §4.2.

Only an enrolled box gets in: the TLS client certificate must be the one this hub's root issued to it at
enrollment (its CN is the device id), else 401 ``no_client_cert`` / 403 ``not_enrolled`` before the upgrade.
A certificate from another CA never gets that far: the TLS handshake fails. The box's ``hello`` must name the
same device (else close 1008). One connection per device: a newer one replaces the older (close 4001).

Hub code then asks through :class:`ControlHub`: :meth:`~ControlHub.ask_nonce`,
:meth:`~ControlHub.send_request` (the decision's signature is checked with the device key the box enrolled
with). Checkpoints a box sends are verified with its device key (origin ``edge.audit/<device id>``),
cosigned (C2SP tlog-cosignature, :mod:`edge.uplink.controlwire`) with the hub's witness key, stored, and the
cosignature line goes back. Consistency between a box's successive checkpoints is not checked yet. A box's
``registry`` is verified (:func:`edge.uplink.registry.verify`: its device key, its device id), kept if its
version is above the stored one, and acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import rfc8785
from aiohttp import WSMsgType, web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import checkpoint, jws
from edge.errors import Error
from edge.hub.peer import enrolled_device
from edge.hub.state import HubState, StaleRegistry
from edge.uplink import controlwire as wire
from edge.uplink import registry

log = logging.getLogger(__name__)

DECISION_MEMBERS: Final = frozenset(
    {"type", "jti", "decision", "code", "session", "time", "device_id", "sig"}
)


class ControlError(Error):
    """A control-channel call that failed: ``kind`` is ``not_connected``, ``timeout``, ``disconnected`` or
    ``bad_decision``."""

    kind = "control"


@dataclass
class _Device:
    device_id: str
    device_key: bytes
    ws: web.WebSocketResponse
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    nonces: deque[asyncio.Future[str]] = field(default_factory=deque)
    decisions: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)

    async def send(self, message: dict[str, Any] | str) -> None:
        async with self.lock:
            await self.ws.send_str(message if isinstance(message, str) else wire.encode(message))

    def fail_all(self, why: str) -> None:
        futures: list[asyncio.Future[Any]] = [*self.nonces, *self.decisions.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(ControlError(why, kind="disconnected"))
        self.nonces.clear()
        self.decisions.clear()


class ControlHub:
    """The registry of connected boxes and what hub code may ask them."""

    def __init__(
        self,
        state: HubState,
        *,
        heartbeat_s: float = wire.HEARTBEAT_S,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.state = state
        self.heartbeat_s = heartbeat_s
        self._clock_ns = clock_ns
        self._devices: dict[str, _Device] = {}
        self._changed = asyncio.Condition()
        self.connections = 0  # accepted connections since start, for status and tests
        self.ignored = 0

    # --- what hub code calls --------------------------------------------------------------------------------

    def connected(self) -> list[str]:
        return sorted(self._devices)

    async def wait_connected(self, device_id: str, *, timeout: float, after: int = 0) -> None:
        """Until ``device_id`` is connected and more than ``after`` connections were accepted in all."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: device_id in self._devices and self.connections > after),
                timeout,
            )

    async def ask_nonce(self, device_id: str, *, timeout: float = wire.REQUEST_TIMEOUT_S) -> str:
        dev = self._device(device_id)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        dev.nonces.append(fut)
        await dev.send({"type": "nonce_request"})
        nonce: str = await self._wait(fut, timeout, "a nonce")
        return nonce

    async def send_request(
        self, device_id: str, token: str, *, timeout: float = wire.REQUEST_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send a signed request; the box's decision, its signature checked with the enrolled device key."""
        dev = self._device(device_id)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        keys = _decision_keys(token)
        for k in keys:
            dev.decisions[k] = fut
        try:
            await dev.send({"type": "request", "token": token})
            decision: dict[str, Any] = await self._wait(fut, timeout, "a decision")
            return decision
        finally:
            for k in keys:
                dev.decisions.pop(k, None)

    async def push_keyset(self) -> list[str]:
        """Send the current key set to every connected box (after a rotation); the ones it went to."""
        token = await asyncio.to_thread(self.state.keyset)
        sent = []
        for dev in list(self._devices.values()):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await dev.send({"type": "keyset", "token": token})
                sent.append(dev.device_id)
        return sent

    async def send_raw(self, device_id: str, data: str | bytes) -> None:
        """Send any frame as is (for tests of the box's robustness)."""
        dev = self._device(device_id)
        async with dev.lock:
            if isinstance(data, bytes):
                await dev.ws.send_bytes(data)
            else:
                await dev.ws.send_str(data)

    async def close_all(self, code: int = wire.CLOSE_GOING_AWAY) -> None:
        for dev in list(self._devices.values()):
            with contextlib.suppress(Exception):
                await dev.ws.close(code=code, message=b"hub stopping")

    def _device(self, device_id: str) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            raise ControlError(f"device {device_id} is not connected", kind="not_connected")
        return dev

    @staticmethod
    async def _wait(fut: asyncio.Future[Any], timeout: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ControlError(f"no answer with {what} in {timeout:g} s", kind="timeout") from None

    # --- the endpoint --------------------------------------------------------------------------------------

    async def handler(self, request: web.Request) -> web.StreamResponse:
        device = await enrolled_device(request, self.state)
        if isinstance(device, web.Response):
            return device
        device_id = device.device_id
        ws = web.WebSocketResponse(max_msg_size=wire.TRANSPORT_MAX_BYTES, autoping=True)
        await ws.prepare(request)
        dev = _Device(device_id, device.device_key, ws)
        beat = asyncio.create_task(self._heartbeats(dev))
        try:
            await self._serve(dev)
        finally:
            beat.cancel()
            async with self._changed:
                if self._devices.get(device_id) is dev:
                    del self._devices[device_id]
                self._changed.notify_all()
            dev.fail_all(f"device {device_id} disconnected")
            if not ws.closed:
                await ws.close()
            log.info("control: %s disconnected (%s)", device_id, ws.close_code)
        return ws

    async def _serve(self, dev: _Device) -> None:
        hello = False
        while True:
            try:
                msg = await dev.ws.receive(timeout=self.heartbeat_s * wire.MISSED_HEARTBEATS)
            except TimeoutError:
                log.warning("control: %s missed %d heartbeats", dev.device_id, wire.MISSED_HEARTBEATS)
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type != WSMsgType.TEXT:
                self._ignore(dev, "a binary frame")
                continue
            try:
                message = wire.decode(msg.data, wire.BOX_TYPES)
                if not hello:
                    if message["type"] != "hello":
                        raise wire.WireError(f"{message['type']} before hello")
                    if wire.field(message, "device_id", str) != dev.device_id:
                        await dev.ws.close(code=wire.CLOSE_POLICY, message=b"hello names another device")
                        return
                    version = wire.field(message, "version", str, max_chars=64)
                    hello = True
                    await self._register(dev, version)
                    continue
                await self._handle(dev, message)
            except wire.WireError as e:
                self._ignore(dev, e.message)

    async def _register(self, dev: _Device, version: str) -> None:
        async with self._changed:
            old = self._devices.get(dev.device_id)
            self._devices[dev.device_id] = dev
            self.connections += 1
            self._changed.notify_all()
        if old is not None:
            await old.ws.close(code=wire.CLOSE_REPLACED, message=b"replaced by a newer connection")
        log.info("control: %s connected (box %s)", dev.device_id, version)
        # The current key set on every connection: a box that was away during a rotation catches up.
        await dev.send({"type": "keyset", "token": await asyncio.to_thread(self.state.keyset)})

    async def _handle(self, dev: _Device, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in {"heartbeat", "hello"}:
            return
        if kind == "nonce":
            nonce = wire.field(message, "nonce", str, max_chars=wire.MAX_NONCE_CHARS)
            while dev.nonces:
                fut = dev.nonces.popleft()
                if not fut.done():
                    fut.set_result(nonce)
                    return
            raise wire.WireError("a nonce nobody asked for")
        if kind == "decision":
            self._take_decision(dev, message)
            return
        if kind == "checkpoint":
            note = wire.field(message, "note", str, max_chars=wire.MAX_MESSAGE_BYTES)
            await dev.send(await self._cosign(dev, note))
            return
        if kind == "registry":
            await self._take_registry(dev, message)

    def _take_decision(self, dev: _Device, message: dict[str, Any]) -> None:
        jti = wire.field(message, "jti", str)
        fut = dev.decisions.get(jti)
        if fut is None or fut.done():
            raise wire.WireError("a decision for no pending request")
        try:
            check_decision(message, device_id=dev.device_id, device_key=dev.device_key)
        except ControlError as e:
            fut.set_exception(e)
            return
        fut.set_result(message)

    async def _cosign(self, dev: _Device, note: str) -> dict[str, Any]:
        origin = f"edge.audit/{dev.device_id}"
        raw = note.encode("utf-8")
        try:
            cp = checkpoint.verify(raw, name=origin, public_key=dev.device_key, origin=origin)
        except checkpoint.CheckpointError as e:
            log.warning("control: %s sent a bad checkpoint: %s", dev.device_id, e.message)
            return {"type": "error", "code": "bad_checkpoint", "detail": e.message[: wire.MAX_TEXT_CHARS]}
        text, _sigs = checkpoint.parse_note(raw)
        now_ns = self._clock_ns()
        key = await asyncio.to_thread(self.state.witness_key)
        line = wire.cosign(
            text, name=self.state.witness_name, key=key, timestamp=now_ns // 1_000_000_000
        ).line()
        await asyncio.to_thread(
            self.state.add_cosignature,
            dev.device_id,
            tree_size=cp.size,
            note=note,
            line=line,
            now_utc_ns=now_ns,
        )
        return {"type": "cosignature", "size": cp.size, "line": line}

    async def _take_registry(self, dev: _Device, message: dict[str, Any]) -> None:
        """Verify, keep if newer, acknowledge. A stale version (a replay) is not kept: an equal one is
        acknowledged (the box resends its latest on every connection), an older one is only logged."""
        try:
            doc = registry.verify(message, dev.device_key, dev.device_id)
        except registry.RegistryError as e:
            raise wire.WireError(f"registry: {e.message}") from None
        try:
            await asyncio.to_thread(
                self.state.store_registry,
                dev.device_id,
                version=doc.version,
                doc=doc.canonical,
                now_utc_ns=self._clock_ns(),
            )
        except StaleRegistry as e:
            if doc.version < e.stored:
                raise wire.WireError(f"registry version {doc.version} is older than {e.stored}") from None
            log.info("control: %s resent registry version %d", dev.device_id, doc.version)
        else:
            log.info(
                "control: %s registry version %d: cameras %s",
                dev.device_id,
                doc.version,
                [c.id for c in doc.cameras],
            )
        await dev.send({"type": "registry_ack", "version": doc.version})

    async def _heartbeats(self, dev: _Device) -> None:
        while not dev.ws.closed:
            await asyncio.sleep(self.heartbeat_s)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await dev.send({"type": "heartbeat"})

    def _ignore(self, dev: _Device, why: str) -> None:
        self.ignored += 1
        log.info("control: ignored from %s: %s", dev.device_id, why)


def check_decision(message: dict[str, Any], *, device_id: str, device_key: bytes) -> None:
    """A decision message exactly as §7 says, signed by ``device_key``; :class:`ControlError` otherwise."""
    if message.keys() != DECISION_MEMBERS or message.get("device_id") != device_id:
        raise ControlError("the decision message is not well formed", kind="bad_decision")
    sig = jws.b64url_decode(message["sig"]) if isinstance(message["sig"], str) else None
    body = {k: v for k, v in message.items() if k != "sig"}
    try:
        if sig is None:
            raise InvalidSignature
        Ed25519PublicKey.from_public_bytes(device_key).verify(sig, rfc8785.dumps(body))
    except (InvalidSignature, ValueError, rfc8785.CanonicalizationError):
        raise ControlError("the decision's signature does not verify", kind="bad_decision") from None


def _decision_keys(token: str) -> list[str]:
    """What the box's decision may name the request by: its jti, or (a token it could not verify) the
    base64url SHA-256 of the token's bytes (§7)."""
    keys = [
        base64.urlsafe_b64encode(hashlib.sha256(token.encode("utf-8", "replace")).digest())
        .rstrip(b"=")
        .decode()
    ]
    with contextlib.suppress(jws.JWSError, ValueError):
        jti = jws.parse(token, max_bytes=wire.MAX_MESSAGE_BYTES).payload.get("jti")
        if isinstance(jti, str):
            keys.append(jti)
    return keys
