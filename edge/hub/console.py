"""The reference hub's console: a small web page on loopback that lists the enrolled devices and their
registry, sends requests, and plays a live session in the browser (MSE with fMP4).

Plain HTTP, loopback only (:func:`check_loopback`), and every API call carries the console's random token
(``X-Console-Token``; the live WebSocket, which cannot set headers, takes ``?token=``), so neither another
local user nor a web page the officer happens to have open (CSRF, DNS rebinding) can send a request:

* ``GET /`` the page (and ``/console.js``, ``/console.css``): strict CSP, no inline script;
* ``GET /api/devices`` → ``{"devices": [...as the admin API...], "reasons": [...]}``;
* ``POST /api/request`` with the admin API's request body (``stop_after_s`` excepted: the page has a stop
  button) → ``{"accepted", "code", "decision", "session", "cameras": [{"camera", "live", "from_start"}]}``, or
  ``{"error", "detail"}`` as the admin API;
* ``GET /api/live/{session}/{camera}``: a WebSocket that sends one text message ``{"codecs", "mime",
  "from_start"}`` (the MSE type, from the init segment), the init segment and then each fragment as binary
  messages, and a last text message ``{"end": <reason>}`` or ``{"error": <kind>, "detail"}`` before it closes;
* ``POST /api/stop/{session}/{camera}`` → ``{"stopped": bool}`` (:meth:`MediaHub.stop`).

The video is decrypted by this process, which holds the viewer key (WebCrypto has no ChaCha20-Poly1305); a
real console would keep the key on the officer's device (docs/protocol.md §9).

Late joiners: a live stream's first fragment starts at a keyframe, later ones mostly do not. So the console
subscribes to every accepted stream as soon as the decision is in, before the box's first fragment can
arrive, and holds the pieces (a bounded queue) until the page's WebSocket takes them. ``from_start`` says
whether that worked; if not (or for a second viewer), the page skips to the first keyframe it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import WSMsgType, web

from edge.errors import Error, Malformed
from edge.hub.admin import (
    CONTROL_STATUS,
    AdminError,
    device_list,
    parse_request_body,
    request_from_body,
)
from edge.hub.control import ControlError, ControlHub
from edge.hub.media import CameraStream, Expected, MediaHub, Viewer, ViewerDropped
from edge.hub.requests import RequestError
from edge.hub.state import HubState
from edge.uplink.claims import REASONS

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).with_name("console")
STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
TOKEN_HEADER: Final = "X-Console-Token"  # noqa: S105 - a header name
MAX_BODY_BYTES: Final = 16 * 1024
# Pieces held for a viewer not connected yet, or lagging: live sends a fragment per frame, so ~10 s at 30 fps.
VIEWER_QUEUE: Final = 300
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src blob:; "
    "connect-src 'self' {ws}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ConsoleError(Error):
    kind = "console"


# --- the MSE type of an init segment ------------------------------------------------------------------------


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[str, int, int]]:
    """(type, body start, end) of the boxes laid end to end in ``data[start:end]``."""
    pos = start
    while pos < end:
        if end - pos < 8:
            raise Malformed(f"{end - pos} stray bytes at offset {pos}")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise Malformed(f"truncated box header at offset {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Malformed(f"box {kind!r} at offset {pos} has a bad size {size}")
        yield kind.decode("latin-1"), pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: str) -> tuple[int, int]:
    for k, body, stop in _boxes(data, start, end):
        if k == kind:
            return body, stop
    raise Malformed(f"no {kind} box")


VISUAL_ENTRY_BYTES: Final = 78  # VisualSampleEntry fields before its child boxes
AUDIO_ENTRY_BYTES: Final = 28  # AudioSampleEntry fields before its child boxes


def codecs_string(init: bytes) -> str:
    """The RFC 6381 ``codecs`` of an fMP4 init segment, for ``MediaSource.isTypeSupported``: ``avc1.PPCCLL``
    from the ``avcC`` box, ``hvc1.…``/``hev1.…`` from ``hvcC``, ``mp4a.40.N`` from ``esds``; any other sample
    entry by its four-character code (which no browser will play). :class:`Malformed` if it is not one."""
    moov = _child(init, 0, len(init), "moov")
    out = []
    for kind, body, end in _boxes(init, *moov):
        if kind != "trak":
            continue
        mdia = _child(init, body, end, "mdia")
        minf = _child(init, *mdia, "minf")
        stbl = _child(init, *minf, "stbl")
        stsd_body, stsd_end = _child(init, *stbl, "stsd")
        entry = next(_boxes(init, stsd_body + 8, stsd_end), None)  # after version/flags and entry_count
        if entry is None:
            raise Malformed("no sample entry")
        out.append(_entry_codec(init, *entry))
    if not out:
        raise Malformed("no track")
    return ",".join(out)


def _entry_codec(data: bytes, kind: str, body: int, end: int) -> str:
    if kind in ("avc1", "avc3"):
        cfg, cfg_end = _child(data, body + VISUAL_ENTRY_BYTES, end, "avcC")
        if cfg_end - cfg < 4:
            raise Malformed("avcC is too short")
        return f"{kind}.{data[cfg + 1]:02x}{data[cfg + 2]:02x}{data[cfg + 3]:02x}"
    if kind in ("hvc1", "hev1"):
        cfg, cfg_end = _child(data, body + VISUAL_ENTRY_BYTES, end, "hvcC")
        if cfg_end - cfg < 13:
            raise Malformed("hvcC is too short")
        first = data[cfg + 1]
        space = ("", "A", "B", "C")[first >> 6]
        tier = "H" if first & 0x20 else "L"
        compat = int(f"{int.from_bytes(data[cfg + 2 : cfg + 6], 'big'):032b}"[::-1], 2)  # bit-reversed
        constraints = data[cfg + 6 : cfg + 12].rstrip(b"\0")
        parts = [f"{kind}", f"{space}{first & 0x1F}", f"{compat:x}", f"{tier}{data[cfg + 12]}"]
        parts += [f"{b:02x}" for b in constraints]
        return ".".join(parts)
    if kind == "mp4a":
        return _mp4a(data, body + AUDIO_ENTRY_BYTES, end)
    return kind


def _mp4a(data: bytes, start: int, end: int) -> str:
    """``mp4a.OO.A``: the object type of the ``esds`` decoder config, and for AAC (0x40) the audio object
    type of its AudioSpecificConfig."""
    try:
        pos, stop = _child(data, start, end, "esds")
    except Malformed:
        return "mp4a.40.2"
    pos += 4  # version, flags

    def descriptor(at: int) -> tuple[int, int, int]:  # (tag, body start, body end)
        tag, size, at = data[at], 0, at + 1
        for _ in range(4):
            size = (size << 7) | (data[at] & 0x7F)
            at += 1
            if not data[at - 1] & 0x80:
                break
        return tag, at, min(at + size, stop)

    try:
        tag, body, _ = descriptor(pos)  # ES_Descriptor
        if tag != 3:
            raise Malformed("esds has no ES descriptor")
        flags = data[body + 2]
        body += 3 + (2 if flags & 0x80 else 0) + (1 + data[body + 3] if flags & 0x40 else 0)
        body += 2 if flags & 0x20 else 0
        tag, body, _ = descriptor(body)  # DecoderConfigDescriptor
        if tag != 4:
            raise Malformed("esds has no decoder config")
        object_type = data[body]
        if object_type != 0x40:
            return f"mp4a.{object_type:02x}"
        tag, specific, _ = descriptor(body + 13)  # DecoderSpecificInfo: AudioSpecificConfig
        return f"mp4a.40.{data[specific] >> 3}" if tag == 5 else "mp4a.40.2"
    except IndexError:
        raise Malformed("esds is truncated") from None


# --- the app ------------------------------------------------------------------------------------------------


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address (or ``localhost``); :class:`ConsoleError` otherwise: the console
    has no TLS and no login of its own."""
    if host == "localhost":
        return host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConsoleError(f"the console listens on a loopback address only (127.0.0.1, ::1), not {host!r}")
    return host


@dataclass
class _Console:
    state: HubState
    control: ControlHub
    media: MediaHub
    token: str
    clock_s: Callable[[], float]
    # Viewers subscribed when the decision came, waiting for the page's WebSocket.
    pending: dict[tuple[str, int], tuple[Viewer, bool]] = field(default_factory=dict)

    def authorised(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def hold(self, session: str, camera: int, viewer: Viewer, from_start: bool) -> None:
        key = (session, camera)
        self.pending[key] = (viewer, from_start)
        stream = self.media.stream(session, camera)
        if stream is not None:  # nobody came for it: let it go with the stream
            stream.ended.add_done_callback(lambda _f: self._release(key, viewer))

    def _release(self, key: tuple[str, int], viewer: Viewer) -> None:
        held = self.pending.get(key)
        if held is not None and held[0] is viewer:
            del self.pending[key]
            viewer.close()


def make_console_app(
    state: HubState,
    control: ControlHub,
    media: MediaHub,
    *,
    token: str,
    clock_s: Callable[[], float] = time.time,
) -> web.Application:
    """The console; every ``/api/`` call needs ``token``."""
    if len(token) < 16:
        raise ConsoleError("the console token is at least 16 characters")
    console = _Console(state, control, media, token, clock_s)
    pages = {path: ((STATIC_DIR / name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            given = request.headers.get(TOKEN_HEADER) or request.query.get("token")
            if not console.authorised(given):
                return _error(403, "forbidden", "open the console with the URL `edge hub serve` printed")
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"http://{request.host}":
                return _error(403, "forbidden", "a request from another origin")
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def static(request: web.Request) -> web.Response:
        body, ctype = pages[request.path]
        headers = {"Content-Type": ctype, "X-Frame-Options": "DENY"}
        if request.path == "/":
            headers["Content-Security-Policy"] = CSP.format(ws=f"ws://{request.host}")
        return web.Response(body=body, headers=headers)

    async def devices(_request: web.Request) -> web.Response:
        return web.json_response({"devices": await device_list(state, control), "reasons": list(REASONS)})

    async def request(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _error(415, "bad_request", "send application/json")
        try:
            body = parse_request_body(await request.read())
            if "stop_after_s" in body:
                raise AdminError("the console stops a stream with its stop button, not stop_after_s")
            # Subscribed the moment the hub expects the streams, before the box can send a fragment: the page
            # gets the stream from its first (key)frame.
            early: dict[int, Viewer] = {}

            def subscribe(expected: Expected) -> None:
                for camera, stream in expected.streams.items():
                    early[camera] = stream.subscribe(max_queued=VIEWER_QUEUE)

            result = await request_from_body(
                state, control, media, body, clock_s=clock_s, on_expected=subscribe
            )
        except (RequestError, AdminError) as e:
            return _error(400, "bad_request", e.message)
        except ControlError as e:
            return _error(CONTROL_STATUS.get(e.kind, 502), e.kind, e.message)
        cameras = []
        if not result.accepted:
            for viewer in early.values():
                viewer.close()
        elif result.expected is not None:
            for camera in result.expected.streams:
                viewer, from_start = early[camera], True
                console.hold(result.session, camera, viewer, from_start)
                live = f"/api/live/{result.session}/{camera}"
                cameras.append({"camera": camera, "live": live, "from_start": from_start})
        reply = {
            "accepted": result.accepted,
            "code": result.code,
            "decision": result.decision,
            "session": result.session,
            "cameras": cameras,
        }
        return web.json_response(reply)

    async def live(request: web.Request) -> web.StreamResponse:
        session, camera = request.match_info["session"], _camera(request.match_info["camera"])
        held = console.pending.pop((session, camera), None)
        if held is not None:
            viewer, from_start = held
        else:
            stream = media.stream(session, camera)
            if stream is None:
                return _error(404, "no_such_stream", "no such live stream (ended, or never accepted)")
            viewer = stream.subscribe(max_queued=VIEWER_QUEUE)
            from_start = not stream.first_fragment.done()
        ws = web.WebSocketResponse(heartbeat=20.0)
        try:
            await ws.prepare(request)
        except BaseException:
            viewer.close()
            raise
        # Read the page's messages (none expected) so that its close is seen and ends the stream here.
        reader = asyncio.ensure_future(_drain(ws, viewer))
        try:
            await _send(ws, viewer, media.stream(session, camera), from_start=from_start)
        except (ConnectionError, RuntimeError):
            log.info("console: the viewer of session %s camera %d went away", session, camera)
        finally:
            viewer.close()
            reader.cancel()
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    async def stop(request: web.Request) -> web.Response:
        session, camera = request.match_info["session"], _camera(request.match_info["camera"])
        return web.json_response({"stopped": await media.stop(session, camera)})

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[guard])
    for path in STATIC:
        app.router.add_get(path, static)
    app.router.add_get("/api/devices", devices)
    app.router.add_post("/api/request", request)
    app.router.add_get("/api/live/{session}/{camera:[0-9]{1,10}}", live)
    app.router.add_post("/api/stop/{session}/{camera:[0-9]{1,10}}", stop)
    return app


async def _send(
    ws: web.WebSocketResponse, viewer: Viewer, stream: CameraStream | None, *, from_start: bool
) -> None:
    pieces = aiter(viewer)
    try:
        init = await anext(pieces)
    except StopAsyncIteration:
        await ws.send_str(_text({"end": "ended before the init segment"}))
        return
    except ViewerDropped as e:
        await ws.send_str(_text({"error": e.kind, "detail": e.message}))
        return
    try:
        codecs = codecs_string(init)
    except Malformed as e:
        await ws.send_str(_text({"error": "bad_init", "detail": e.message}))
        return
    mime = f'video/mp4; codecs="{codecs}"'
    await ws.send_str(_text({"codecs": codecs, "mime": mime, "from_start": from_start}))
    await ws.send_bytes(init)
    try:
        async for piece in pieces:
            await ws.send_bytes(piece)
    except ViewerDropped as e:
        await ws.send_str(_text({"error": e.kind, "detail": e.message}))
        return
    if stream is not None and stream.ended.done():
        await ws.send_str(_text({"end": stream.ended.result().reason}))
    else:
        await ws.send_str(_text({"end": "closed"}))


async def _drain(ws: web.WebSocketResponse, viewer: Viewer) -> None:
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.ERROR):
            break
    viewer.close()


def _camera(text: str) -> int:
    return int(text)  # the route allows 1..10 digits only


def _text(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class ConsoleServer:
    runner: web.AppRunner
    host: str
    port: int
    token: str

    @property
    def url(self) -> str:
        """The page, with the token in the fragment (never sent to the server, nor in a Referer)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/#token={self.token}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_console(
    state: HubState,
    control: ControlHub,
    media: MediaHub,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
) -> ConsoleServer:
    """Serve the console on loopback ``host:port`` (0: any free port) until closed."""
    check_loopback(host)
    token = token if token is not None else new_token()
    app = make_console_app(state, control, media, token=token)
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise ConsoleError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return ConsoleServer(runner, host, int(sock.getsockname()[1]), token)
