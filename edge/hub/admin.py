"""The reference hub's admin API: a small JSON API on the Unix socket ``<hub data>/hub.sock`` (mode 0600), for
``edge hub request`` and local tools. Only the hub's own user can reach it; it never listens on the network.

* ``GET /v1/admin/devices`` → ``{"devices": [{"device_id", "box_version", "enrolled_utc_ns", "connected",
  "cameras"}]}`` (``cameras``: the box's latest registry, [] before it sent one);
* ``POST /v1/admin/request`` with ``{"device", "cameras", "mode", "from"?, "to"?, "max_dur", "case", "reason",
  "sub", "incident": {"lat", "lon", "kind"}, "ttl_s"?, "stop_after_s"?}`` → JSON lines, one per event:
  ``{"event": "decision", "decision": <the box's signed decision>, "session", "directory"}``, then per camera
  ``{"event": "first_fragment", "camera", "after_decision_ms"}`` and ``{"event": "end", "camera", "record":
  <end.json, with the saved video's path>}``. ``stop_after_s``: the hub closes each stream that long after its
  first fragment. An ``incident`` without ``lat``/``lon`` takes the first camera's position from the box's
  registry. Errors before the decision are ``{"error", "detail"}`` with 400 ``bad_request``,
  409 ``not_connected``, 502 ``disconnected``/``bad_decision``, 504 ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from edge import jws
from edge.errors import Error
from edge.hub.control import ControlError, ControlHub
from edge.hub.media import CameraStream, Expected, MediaHub
from edge.hub.requests import RequestError, RequestResult, make_request
from edge.hub.state import HubError, HubState
from edge.uplink import controlwire as wire

log = logging.getLogger(__name__)

SOCKET_FILE: Final = "hub.sock"
MAX_BODY_BYTES: Final = 16 * 1024
REQUIRED: Final = frozenset({"device", "cameras", "mode", "max_dur", "case", "reason", "sub", "incident"})
OPTIONAL: Final = frozenset({"from", "to", "ttl_s", "stop_after_s"})
CONTROL_STATUS: Final = {"not_connected": 409, "timeout": 504, "disconnected": 502, "bad_decision": 502}


class AdminError(Error):
    kind = "admin"


def make_admin_app(
    state: HubState, control: ControlHub, media: MediaHub, *, clock_s: Callable[[], float] = time.time
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)

    async def devices(_request: web.Request) -> web.Response:
        return web.json_response({"devices": await device_list(state, control)})

    async def request(request: web.Request) -> web.StreamResponse:
        try:
            body = parse_request_body(await request.read())
            stop_after_s = _stop_after(body.get("stop_after_s"))
            result = await request_from_body(state, control, media, body, clock_s=clock_s)
        except (RequestError, AdminError) as e:
            return _error(400, "bad_request", e.message)
        except ControlError as e:
            return _error(CONTROL_STATUS.get(e.kind, 502), e.kind, e.message)
        decided_ns = time.monotonic_ns()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        await events.put(
            {
                "event": "decision",
                "decision": result.decision,
                "session": result.session,
                "directory": str(result.directory),
            }
        )
        followers: list[asyncio.Task[None]] = []
        if result.expected is not None and result.accepted:  # a notice's share may come hours later
            streams = list(result.expected.streams.values())
            followers = [
                asyncio.create_task(_follow(media, s, events, decided_ns, stop_after_s)) for s in streams
            ]
        done = asyncio.create_task(_close_when_done(followers, events))
        try:
            while (event := await events.get()) is not None:
                await response.write(wire.encode(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            # The caller went away; the streams go on and are saved all the same.
            log.info("admin: the client of session %s went away", result.session)
        finally:
            done.cancel()
        return response

    async def rotate(request: web.Request) -> web.Response:
        """Rotate the signing keys (``{"add": n, "retire": [kid, …]}``) and push the new set to every
        connected box; the others get it when they next connect."""
        try:
            body = jws.json_object(await request.read(), "body")
            add, retire = body.get("add", 1), body.get("retire", [])
            if type(add) is not int or not 0 <= add <= 8:
                raise AdminError("add is 0..8 new keys")
            if not isinstance(retire, list) or not all(isinstance(k, str) for k in retire):
                raise AdminError("retire is a list of kids")
            await asyncio.to_thread(state.rotate_keys, add=add, retire=retire, now_utc_ns=time.time_ns())
        except (AdminError, jws.JWSError, HubError) as e:
            return _error(400, "bad_request", e.message)
        pushed = await control.push_keyset()
        claims = await asyncio.to_thread(state.keyset_claims)
        reply = {"version": claims["version"], "kids": sorted(state.current_kids()),
                 "fingerprint": state.keyset_fingerprint(), "pushed_to": pushed}  # fmt: skip
        return web.json_response(reply)

    app.router.add_post("/v1/admin/keys/rotate", rotate)
    app.router.add_get("/v1/admin/devices", devices)
    app.router.add_post("/v1/admin/request", request)
    return app


async def device_list(state: HubState, control: ControlHub) -> list[dict[str, Any]]:
    """Every enrolled device, connected or not, with its latest registry's cameras ([] before it sent one)."""
    connected = set(control.connected())
    rows = await asyncio.to_thread(state.devices)
    shared = {r.device_id: r.doc.get("cameras", []) for r in await asyncio.to_thread(state.registries)}
    return [
        {
            "device_id": d.device_id,
            "box_version": d.box_version,
            "enrolled_utc_ns": d.enrolled_utc_ns,
            "connected": d.device_id in connected,
            "cameras": shared.get(d.device_id, []),
        }
        for d in rows
    ]


async def request_from_body(
    state: HubState,
    control: ControlHub,
    media: MediaHub,
    body: dict[str, Any],
    *,
    clock_s: Callable[[], float] = time.time,
    on_expected: Callable[[Expected], None] | None = None,
) -> RequestResult:
    """Send the request a checked body (:func:`parse_request_body`) describes; an incident without
    ``lat``/``lon`` takes the first camera's position from the box's registry. Raises :class:`AdminError`,
    :class:`RequestError` or :class:`ControlError`."""
    if "lat" not in body["incident"] and "lon" not in body["incident"] and body["cameras"]:
        position = await asyncio.to_thread(_position, state, body["device"], body["cameras"][0])
        body = {**body, "incident": {**body["incident"], "lat": position[0], "lon": position[1]}}
    return await make_request(
        state, control, media,
        device_id=body["device"], cameras=body["cameras"], mode=body["mode"],
        from_s=body.get("from"), to_s=body.get("to"), max_dur=body["max_dur"], case=body["case"],
        reason=body["reason"], sub=body["sub"], incident=body["incident"],
        ttl_s=body.get("ttl_s", 120), clock_s=clock_s, on_expected=on_expected,
    )  # fmt: skip


async def _follow(
    media: MediaHub,
    stream: CameraStream,
    events: asyncio.Queue[dict[str, Any] | None],
    decided_ns: int,
    stop_after_s: float | None,
) -> None:
    first = await asyncio.shield(stream.first_fragment)
    if first is not None:
        after_ms = round((first - decided_ns) / 1e6, 1)
        await events.put({"event": "first_fragment", "camera": stream.camera, "after_decision_ms": after_ms})
        if stop_after_s is not None:
            try:
                await asyncio.wait_for(asyncio.shield(stream.ended), stop_after_s)
            except TimeoutError:
                await media.stop(stream.expected.session, stream.camera)
    record = await asyncio.shield(stream.ended)
    await events.put({"event": "end", "camera": stream.camera, "record": record.as_json()})


async def _close_when_done(
    followers: list[asyncio.Task[None]], events: asyncio.Queue[dict[str, Any] | None]
) -> None:
    try:
        await asyncio.gather(*followers)
    finally:
        for task in followers:
            task.cancel()
        events.put_nowait(None)


def parse_request_body(raw: bytes) -> dict[str, Any]:
    """The request body of ``POST /v1/admin/request``, every member checked; :class:`AdminError` otherwise."""
    try:
        body = jws.json_object(raw, "body")
    except jws.JWSError as e:
        raise AdminError(e.detail) from None
    missing, extra = REQUIRED - body.keys(), body.keys() - REQUIRED - OPTIONAL
    if missing or extra:
        raise AdminError(
            f"missing {', '.join(sorted(missing))}"
            if missing
            else f"unknown member {jws.show(sorted(extra)[0])}"
        )
    if not isinstance(body["device"], str) or not isinstance(body["cameras"], list):
        raise AdminError("device is a string and cameras a list")
    for name in ("mode", "case", "reason", "sub"):
        if not isinstance(body[name], str):
            raise AdminError(f"{name} is a string")
    for name in ("max_dur", "from", "to", "ttl_s"):
        if name in body and body[name] is not None and type(body[name]) is not int:
            raise AdminError(f"{name} is an integer")
    if not isinstance(body["incident"], dict):
        raise AdminError("incident is an object")
    return body


def _position(state: HubState, device_id: str, camera: object) -> tuple[float, float]:
    """Where ``camera`` is, from the box's latest registry."""
    stored = state.registry(device_id)
    for entry in stored.doc.get("cameras", []) if stored is not None else []:
        if isinstance(entry, dict) and entry.get("id") == camera:
            lat, lon = entry.get("lat"), entry.get("lon")
            if isinstance(lat, int | float) and isinstance(lon, int | float):
                return float(lat), float(lon)
    raise AdminError(
        f"the box's registry has no position for camera {camera}: give the incident's lat and lon"
    )


def _stop_after(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise AdminError("stop_after_s is a positive number")
    return float(value)


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


@dataclass
class AdminServer:
    runner: web.AppRunner
    path: Path

    async def close(self) -> None:
        await self.runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def start_admin(
    state: HubState, control: ControlHub, media: MediaHub, *, path: Path | None = None
) -> AdminServer:
    """Serve the admin API on ``path`` (default ``<hub data>/hub.sock``), mode 0600, until closed. A stale
    socket left by a crash is replaced; one a running hub answers on is an error."""
    path = path if path is not None else state.data_dir / SOCKET_FILE
    sock = await asyncio.to_thread(_bind, path)
    runner = web.AppRunner(make_admin_app(state, control, media), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return AdminServer(runner, path)


def _bind(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise AdminError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # left by a hub that did not stop cleanly
        else:
            raise AdminError(f"another hub is serving on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # At once: connecting needs write permission on the socket, which a usual umask (022) already
        # withholds from others, and the hub directory is 0700 when the hub made it.
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError as e:
        sock.close()
        raise AdminError(f"cannot listen on {path}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock
