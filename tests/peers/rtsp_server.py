"""A real RTSP camera for the tests: GStreamer's gst-rtsp-server serving pre-encoded clips, looped forever.

Two halves live in this file:

* the server, run as ``/usr/bin/python3 tests/peers/rtsp_server.py --media-dir DIR`` (Debian's python, which
  has ``gi``; nothing below ``_serve`` is importable from the venv), and
* ``RtspPeer``, a stdlib-only launcher the venv side (pytest fixtures, bench/) uses to start, stop, restart,
  freeze and thaw that process on a fixed port.

How the server streams, cheaply enough for 32+ clients on two cores:

* At start every ``*.mkv`` clip in the media dir is demuxed and parsed once (``filesrc ! parsebin ! appsink``)
  into memory: H.264/H.265 access units (avc/hvc1 with codec_data), AAC frames, or G.711 µ-law re-cut into
  20 ms packets. Video frames get ideal CFR timestamps (frame i at i/fps); audio is trimmed to the video's
  loop period so both tracks loop together.
* Each mount is a non-shared ``RTSPMediaFactory`` (one pipeline per client) whose pipeline is just
  ``appsrc ! rtpXpay`` per track. On ``need-data`` the appsrc is fed ~0.2 s of buffers that share the
  in-memory data (``copy_region`` is a few µs, no payload copy), with timestamps ``loop * period + t`` so they
  increase forever, with no reset at the loop point.
* The sources are not live: the RTSP media's sinks sync on the pipeline clock, so the stream leaves at real
  time from PLAY on (the appsrc queue just refills when it runs dry). No encoding anywhere.

Mounts: ``/<clip>`` for every clip, ``/auth`` (= h264_720p behind RTSP Basic or Digest auth) and, with
``--mount-copies N``, ``/bench/<clip>/<i>`` for i in 0..N-1. Prints exactly ``READY <port>`` on stdout once
listening; everything else goes to stderr. SIGTERM/SIGINT (or EOF on stdin with ``--watch-stdin``) exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

SYSTEM_PYTHON = "/usr/bin/python3"
EXIT_BIND_FAILED = 3
HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------------------
# Venv side: the launcher.
# ----------------------------------------------------------------------------------------------------------


class RtspPeer:
    """Runs the server in a subprocess; restarts keep the port so a "camera" can go away and come back."""

    def __init__(
        self,
        media_dir: Path,
        *,
        port: int = 0,
        auth_user: str = "admin",
        auth_password: str = "s3cret:p@ss word",
        auth_method: str = "basic",
        mount_copies: int = 0,
        log: IO[str] | None = None,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> None:
        """``host`` is the address to listen on; ``prefix`` is put before the command (an ``ip netns exec NS``
        to run the camera in another network namespace)."""
        self.media_dir = Path(media_dir)
        self.host = host
        self.prefix = tuple(prefix)
        self.port = port
        self.auth_user = auth_user
        self.auth_password = auth_password
        self.auth_method = auth_method
        self.mount_copies = mount_copies
        self._log = log
        self._proc: subprocess.Popen[str] | None = None
        self.exit_code: int | None = None  # of the last process stopped or killed

    # -- lifecycle -------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart, on the same port once known); retry briefly while the port can't be bound."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            err = self._start_once(deadline)
            if err is None:
                return
            last_error = err
            if self.port == 0 or time.monotonic() > deadline:
                raise RuntimeError(f"RTSP peer failed to start: {last_error}")
            time.sleep(0.2)

    def _start_once(self, deadline: float) -> str | None:
        cmd = [
            *self.prefix,
            SYSTEM_PYTHON, str(HERE), "--media-dir", str(self.media_dir), "--host", self.host,
            "--port", str(self.port),
            "--auth-user", self.auth_user, "--auth-password", self.auth_password,
            "--auth-method", self.auth_method, "--mount-copies", str(self.mount_copies), "--watch-stdin",
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log is not None else None,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                break
            if proc.poll() is not None:
                break
        if line.startswith("READY "):
            self.port = int(line.split()[1])
            self._proc = proc
            return None
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        _reap(proc)
        return f"exit code {proc.returncode}, stdout {line!r}"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (the server closes its clients and exits); SIGKILL if it doesn't within ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a frozen server can't handle SIGTERM
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.exit_code = _reap(proc)

    def kill(self) -> None:
        """Abrupt death (SIGKILL): the kernel resets the connections."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            self.exit_code = _reap(proc)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing more arrives (a hung camera)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> RtspPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addressing ------------------------------------------------------------------------------------------
    def url(self, mount: str, user: str | None = None, password: str | None = None) -> str:
        """``rtsp://[user[:password]@]<host>:<port>/<mount>``, credentials percent-encoded."""
        auth = ""
        if user is not None:
            auth = urllib.parse.quote(user, safe="")
            if password is not None:
                auth += ":" + urllib.parse.quote(password, safe="")
            auth += "@"
        return f"rtsp://{auth}{self.host}:{self.port}/{mount.lstrip('/')}"

    def auth_url(self) -> str:
        return self.url("auth", self.auth_user, self.auth_password)


def _reap(proc: subprocess.Popen[str]) -> int:
    code = proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
    return code


# ----------------------------------------------------------------------------------------------------------
# Server side (Debian's python + gi only).
# ----------------------------------------------------------------------------------------------------------

FEED_AHEAD_NS = 200_000_000  # how much media to queue in an appsrc per need-data
PCMU_PACKET_NS = 20_000_000


def _log(msg: str) -> None:
    print(f"rtsp_server[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def _serve(args: argparse.Namespace) -> int:
    import gi  # type: ignore[import-not-found, unused-ignore]

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import (  # type: ignore[import-not-found, unused-ignore]
        GLib,
        GObject,
        Gst,
        GstRtsp,
        GstRtspServer,
    )

    Gst.init(None)
    second = Gst.SECOND
    copy_flags = Gst.BufferCopyFlags.FLAGS | Gst.BufferCopyFlags.META | Gst.BufferCopyFlags.MEMORY

    class Track:
        """One elementary stream of a clip: caps, in-memory buffers and their offsets within one loop."""

        def __init__(self, caps: Any, buffers: list[Any], offsets: list[int], durations: list[int]) -> None:
            self.caps = caps
            self.buffers = buffers
            self.offsets = offsets
            self.durations = durations
            self.kind = caps.get_structure(0).get_name()

        def payloader(self, index: int) -> Any:
            name = f"pay{index}"
            if self.kind == "video/x-h264":
                pay = Gst.ElementFactory.make("rtph264pay", name)
                pay.set_property("config-interval", -1)
                pay.set_property("pt", 96)
            elif self.kind == "video/x-h265":
                pay = Gst.ElementFactory.make("rtph265pay", name)
                pay.set_property("config-interval", -1)
                pay.set_property("pt", 96)
            elif self.kind == "audio/mpeg":
                pay = Gst.ElementFactory.make("rtpmp4gpay", name)
                pay.set_property("pt", 97)
            elif self.kind == "audio/x-mulaw":
                pay = Gst.ElementFactory.make("rtppcmupay", name)  # static pt 0
            else:
                raise ValueError(f"no payloader for {self.kind}")
            return pay

    class Clip:
        def __init__(self, name: str, tracks: list[Track], period: int) -> None:
            self.name = name
            self.tracks = tracks  # video first
            self.period = period

    def demux(path: Path) -> list[tuple[Any, list[Any]]]:
        pipeline = Gst.parse_launch("filesrc name=src ! parsebin name=pb")
        pipeline.get_by_name("src").set_property("location", str(path))
        found: list[tuple[list[Any], list[Any]]] = []  # (caps holder, buffers)

        def on_pad(_pb: Any, pad: Any) -> None:
            caps_holder: list[Any] = []
            bufs: list[Any] = []
            found.append((caps_holder, bufs))
            sink = Gst.ElementFactory.make("appsink")
            sink.set_property("sync", False)
            sink.set_property("async", False)
            sink.set_property("emit-signals", True)

            def on_sample(s: Any) -> Any:
                sample = s.emit("pull-sample")
                if not caps_holder:
                    caps_holder.append(sample.get_caps())
                bufs.append(sample.get_buffer())
                return Gst.FlowReturn.OK

            sink.connect("new-sample", on_sample)
            pipeline.add(sink)
            sink.sync_state_with_parent()
            pad.link(sink.get_static_pad("sink"))

        pipeline.get_by_name("pb").connect("pad-added", on_pad)
        pipeline.set_state(Gst.State.PLAYING)
        msg = pipeline.get_bus().timed_pop_filtered(60 * second, Gst.MessageType.EOS | Gst.MessageType.ERROR)
        pipeline.set_state(Gst.State.NULL)
        if msg is None or msg.type != Gst.MessageType.EOS:
            detail = msg.parse_error()[0].message if msg is not None else "timeout"
            raise RuntimeError(f"cannot demux {path}: {detail}")
        return [(c[0], b) for c, b in found if c and b]

    def strip(buf: Any) -> Any:
        out = buf.copy_region(copy_flags, 0, buf.get_size())
        out.unset_flags(Gst.BufferFlags.DISCONT | Gst.BufferFlags.TAG_MEMORY)
        return out

    def load_clip(path: Path) -> Clip:
        streams = demux(path)
        videos = [s for s in streams if s[0].get_structure(0).get_name().startswith("video/")]
        audios = [s for s in streams if s[0].get_structure(0).get_name().startswith("audio/")]
        if len(videos) != 1 or len(audios) > 1:
            raise RuntimeError(f"{path}: want one video and at most one audio track")
        caps, bufs = videos[0]
        st = caps.get_structure(0)
        ok, num, den = st.get_fraction("framerate")
        if not ok or num <= 0:
            raise RuntimeError(f"{path}: no frame rate in {caps.to_string()}")
        if bufs[0].has_flags(Gst.BufferFlags.DELTA_UNIT):
            raise RuntimeError(f"{path}: does not start with a keyframe")
        n = len(bufs)
        # Rounded up to the ns so the payloader's (flooring) conversion to the 90 kHz clock lands on exact
        # multiples: frame steps of exactly 3000 ticks at 30 fps rather than 2999/3000/3001.
        vt = [-(-i * second * den // num) for i in range(n + 1)]
        period = vt[n]
        tracks = [Track(caps, [strip(b) for b in bufs], vt[:n], [vt[i + 1] - vt[i] for i in range(n)])]
        if audios:
            tracks.append(load_audio(path, audios[0][0], audios[0][1], period))
        return Clip(path.stem, tracks, period)

    def load_audio(path: Path, caps: Any, bufs: list[Any], period: int) -> Track:
        st = caps.get_structure(0)
        name = st.get_name()
        _, rate = st.get_int("rate")
        if name == "audio/x-mulaw":
            data = b"".join(b.extract_dup(0, b.get_size()) for b in bufs)
            per_packet = rate * PCMU_PACKET_NS // second
            count = period // PCMU_PACKET_NS
            if len(data) < count * per_packet:
                raise RuntimeError(f"{path}: audio shorter than video")
            out = [Gst.Buffer.new_wrapped(data[i * per_packet : (i + 1) * per_packet]) for i in range(count)]
            offsets = [i * PCMU_PACKET_NS for i in range(count)]
            return Track(caps, out, offsets, [PCMU_PACKET_NS] * count)
        if name == "audio/mpeg":
            frame = 1024  # AAC-LC samples per frame
            count = period * rate // (second * frame)
            if count * frame * second != period * rate:
                _log(f"{path.name}: audio frames don't divide the loop; a small audio gap at each loop")
            if len(bufs) < count:
                raise RuntimeError(f"{path}: audio shorter than video")
            offsets = [-(-i * frame * second // rate) for i in range(count + 1)]
            durations = [offsets[i + 1] - offsets[i] for i in range(count)]
            return Track(caps, [strip(b) for b in bufs[:count]], offsets[:count], durations)
        raise RuntimeError(f"{path}: unsupported audio {name}")

    class Feeder:
        """Feeds one client's appsrc from a track, forever, with ever-increasing timestamps."""

        __slots__ = ("first", "index", "loop", "period", "track")

        def __init__(self, track: Track, period: int) -> None:
            self.track = track
            self.period = period
            self.index = 0
            self.loop = 0
            self.first = True

        def on_need_data(self, src: Any, _length: int) -> None:
            t = self.track
            n = len(t.buffers)
            base = self.loop * self.period
            stop_at = base + t.offsets[self.index] + FEED_AHEAD_NS
            while True:
                i = self.index
                pts = base + t.offsets[i]
                if pts >= stop_at:
                    return
                buf = t.buffers[i].copy_region(copy_flags, 0, t.buffers[i].get_size())
                buf.pts = buf.dts = pts
                buf.duration = t.durations[i]
                if self.first:
                    buf.set_flags(Gst.BufferFlags.DISCONT)
                    self.first = False
                if src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                    return  # flushing / shutting down
                i += 1
                if i == n:
                    i = 0
                    self.loop += 1
                    base += self.period
                self.index = i

    class ClipFactory(GstRtspServer.RTSPMediaFactory):  # type: ignore[misc]
        def __init__(self, clip: Clip) -> None:
            super().__init__()
            self.clip = clip
            self.set_shared(False)
            self.set_suspend_mode(GstRtspServer.RTSPSuspendMode.NONE)

        def do_create_element(self, _url: Any) -> Any:
            pipeline_bin = Gst.Bin.new(None)
            for idx, track in enumerate(self.clip.tracks):
                src = Gst.ElementFactory.make("appsrc", f"src{idx}")
                src.set_property("caps", track.caps)
                src.set_property("format", Gst.Format.TIME)
                src.set_property("is-live", False)
                src.set_property("max-bytes", 0)
                src.set_property("emit-signals", True)
                feeder = Feeder(track, self.clip.period)
                src.connect("need-data", feeder.on_need_data)
                pay = track.payloader(idx)
                pipeline_bin.add(src)
                pipeline_bin.add(pay)
                src.link(pay)
            return pipeline_bin

    GObject.type_register(ClipFactory)

    # -- load media ------------------------------------------------------------------------------------------
    media_dir = Path(args.media_dir)
    paths = sorted(media_dir.glob("*.mkv"))
    if not paths:
        _log(f"no *.mkv clips in {media_dir}")
        return 2
    t0 = time.monotonic()
    clips = {p.stem: load_clip(p) for p in paths}
    _log(
        f"loaded {len(clips)} clips in {time.monotonic() - t0:.2f}s: "
        + ", ".join(
            f"{c.name}({'+'.join(t.kind for t in c.tracks)}, {c.period / second:g}s)" for c in clips.values()
        )
    )

    # -- server ----------------------------------------------------------------------------------------------
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()

    class MountAuth(GstRtspServer.RTSPAuth):  # type: ignore[misc]
        """Demands credentials on the protected mounts only.

        gst's own way (a default token for anonymous users plus per-factory roles) answers 404, not 401, to an
        anonymous client on a protected mount, so a client never gets the challenge and never sends
        credentials. Here requests for other paths pass every check, and those for protected paths (and
        their per-track control URLs) get gst's default checks with no default token: 401 + challenge.
        """

        def __init__(self, protected: tuple[str, ...]) -> None:
            super().__init__()
            self.protected = protected

        def do_check(self, ctx: Any, check: str) -> bool:
            uri = ctx.uri
            path = uri.abspath if uri is not None else ""
            if not any(path == p or path.startswith(p + "/") for p in self.protected):
                return True
            return bool(GstRtspServer.RTSPAuth.do_check(self, ctx, check))

    auth = MountAuth(("/auth",))
    user = GstRtspServer.RTSPToken()
    user.set_string("media.factory.role", "user")
    if args.auth_method == "digest":
        auth.add_digest(args.auth_user, args.auth_password, user)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    else:
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.auth_user, args.auth_password), user)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
    auth.set_realm("edge-test-camera")
    server.set_auth(auth)

    def role(name: str) -> Any:
        return Gst.Structure.new_from_string(
            f"{name}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )

    def mount(path: str, clip: Clip, protected: bool = False) -> None:
        factory = ClipFactory(clip)
        if protected:
            factory.add_role_from_structure(role("user"))
        mounts.add_factory(path, factory)

    for clip in clips.values():
        mount(f"/{clip.name}", clip)
        for i in range(args.mount_copies):
            mount(f"/bench/{clip.name}/{i}", clip)
    if "h264_720p" in clips:
        mount("/auth", clips["h264_720p"], protected=True)

    loop = GLib.MainLoop()
    try:
        source_id = server.attach(None)
    except GLib.Error as e:  # older bindings raise, newer return 0
        _log(f"cannot listen on {args.host}:{args.port}: {e.message}")
        return EXIT_BIND_FAILED
    if not source_id:
        _log(f"cannot listen on {args.host}:{args.port}")
        return EXIT_BIND_FAILED
    port = server.get_bound_port()

    def on_client(_server: Any, client: Any) -> None:
        conn = client.get_connection()
        peer = f"{conn.get_ip()}" if conn is not None else "?"
        _log(f"client connected from {peer}")
        client.connect("closed", lambda _c: _log(f"client from {peer} closed"))

    server.connect("client-connected", on_client)

    def quit_(*_a: Any) -> bool:
        loop.quit()
        return False  # GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, quit_)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, quit_)
    if args.watch_stdin:

        def on_stdin(fd: int, cond: Any) -> bool:
            if cond & (GLib.IO_HUP | GLib.IO_ERR) or not os.read(fd, 4096):
                return quit_()
            return True  # GLib.SOURCE_CONTINUE

        GLib.io_add_watch(
            sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, on_stdin
        )

    print(f"READY {port}", flush=True)
    _log(
        f"listening on rtsp://{args.host}:{port}/ ({len(clips)} clips, {args.mount_copies} bench copies each)"
    )
    loop.run()

    _log("stopping")
    GLib.source_remove(source_id)
    server.client_filter(lambda _s, _c: GstRtspServer.RTSPFilterResult.REMOVE)
    ctx = GLib.MainContext.default()
    end = time.monotonic() + 1.0
    while time.monotonic() < end and server.client_filter(None):
        if not ctx.iteration(False):
            time.sleep(0.01)
    sys.stdout.flush()
    sys.stderr.flush()
    # Streaming threads may still be winding down; don't let interpreter teardown race them.
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--media-dir", required=True, type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed in the READY line)")
    ap.add_argument("--auth-user", default="admin")
    ap.add_argument("--auth-password", default="s3cret:p@ss word")
    ap.add_argument("--auth-method", choices=("basic", "digest"), default="basic")
    ap.add_argument("--mount-copies", type=int, default=0, help="extra mounts /bench/<clip>/<i>, i < N")
    ap.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF (parent died)")
    return _serve(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
