"""The daemon's local control socket: how the CLI tells a running daemon that something changed.

A Unix socket in the data directory (directory 0700, socket 0600: root and the daemon's user only),
one JSON object per line each way. Requests: ``{"op": "...", ...}``; replies: ``{"ok": true, ...}`` or
``{"ok": false, "error": "...", "kind": "..."}``. It is an explicit event, not a polled file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edge.errors import Error

MAX_LINE_BYTES = 1 << 20
SOCKET_NAME = "run/control.sock"

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class DaemonUnavailable(Error):
    kind = "daemon_unavailable"


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


async def serve(path: Path, handlers: dict[str, Handler]) -> asyncio.AbstractServer:
    """Listen on `path`; each request line is dispatched to ``handlers[op]``. Runs on the loop."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a daemon that died

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await _dispatch(handlers, line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_client, path=str(path), limit=MAX_LINE_BYTES)
    finally:
        os.umask(old)
    return server


async def _dispatch(handlers: dict[str, Handler], line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise ValueError("request must be an object with a string 'op'")
    except ValueError as e:
        return {"ok": False, "kind": "malformed", "error": f"bad request: {e}"}
    handler = handlers.get(request["op"])
    if handler is None:
        return {"ok": False, "kind": "unknown_op", "error": f"unknown op {request['op']!r}"}
    try:
        reply = await handler(request)
    except Error as e:
        return {"ok": False, "kind": e.kind, "error": e.message}
    return {"ok": True, **reply}


def call(data_dir: Path, op: str, *, timeout_s: float = 10.0, **args: Any) -> dict[str, Any]:
    """Blocking client for the CLI. Raises DaemonUnavailable if no daemon listens; Error on a refusal."""
    path = socket_path(data_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(path))
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_LINE_BYTES:
                    raise Error("daemon reply too large")
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonUnavailable(f"no edge daemon is running for {data_dir}") from None
    except OSError as e:
        raise DaemonUnavailable(f"cannot reach the edge daemon at {path}: {e.strerror or e}") from None
    try:
        reply = json.loads(buf)
    except ValueError:
        raise Error("the daemon sent an unreadable reply") from None
    if not reply.get("ok"):
        raise Error(str(reply.get("error", "refused")), kind=str(reply.get("kind", "error")))
    return dict(reply)
