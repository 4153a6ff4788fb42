"""Bad "cameras" on 127.0.0.1: one that answers junk instead of RTSP, one that accepts and never answers.

Both run a small accept loop on a daemon thread and are usable as context managers::

    with JunkServer() as junk, SilentServer() as silent:
        junk.url, silent.url  # rtsp://127.0.0.1:<port>/stream
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import threading
from typing import Self

# Binary noise with a few line breaks and an almost-but-not-quite status line, so line-based RTSP parsers
# get lines to chew on and still can't make sense of them.
_rng = random.Random(0x5EED)
JUNK = (
    b"\x00\xff\xfe\x7f garbage \x1b[0m\r\n"
    + bytes(_rng.randrange(256) for _ in range(1500))
    + b"\r\nHTTP/0.0 999 Nonsense\r\nCSeq: banana\r\n\r\n"
    + bytes(_rng.randrange(256) for _ in range(2500))
)


class _TcpPeer:
    """Accepts connections on 127.0.0.1:<port> (0 = any free port) and hands each to ``_serve_conn``."""

    def __init__(self, port: int = 0) -> None:
        self._listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0  # accepted so far

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/stream"

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(timeout=0.1):
                    continue
                try:
                    conn, _ = self._listener.accept()
                except (BlockingIOError, OSError):
                    continue
                self.connections += 1
                with self._lock:
                    self._conns.add(conn)
                threading.Thread(target=self._guard, args=(conn,), daemon=True).start()

    def _guard(self, conn: socket.socket) -> None:
        try:
            self._serve_conn(conn)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _serve_conn(self, conn: socket.socket) -> None:
        raise NotImplementedError


class JunkServer(_TcpPeer):
    """Answers every request (and the bare connection) with junk bytes, then hangs up."""

    def _serve_conn(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        with contextlib.suppress(TimeoutError):
            conn.recv(65536)  # the client's OPTIONS/DESCRIBE, if it sends one first
        conn.sendall(JUNK)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
        # Swallow whatever else the client says until it gives up, so it sees a clean EOF, not a reset.
        conn.settimeout(5.0)
        with contextlib.suppress(TimeoutError):
            while conn.recv(65536):
                pass


class SilentServer(_TcpPeer):
    """Accepts, reads and discards everything, and never says a word until stopped."""

    def _serve_conn(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        while not self._stop.is_set():
            try:
                if not conn.recv(65536):
                    return
            except TimeoutError:
                continue
