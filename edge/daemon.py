"""The composition root: the only module that knows every part.

`Daemon.run` recovers the ring buffer, starts one recorder thread per camera, the retention worker and
the control socket, and runs until its stop event is set; then every recorder closes its open segment.
The event loop only coordinates: media, disk and database work run on threads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, TypeVar

from edge import control, identity, requestlog
from edge.audit import AuditLog, Event
from edge.clock import NS_PER_MS, NS_PER_S, Clock
from edge.config import Config
from edge.credentials import Opener
from edge.discovery import wsdiscovery
from edge.errors import Error, NotFound
from edge.recorder.camera import Backoff, CameraRecorder, CameraSpec, CameraStatus
from edge.recorder.fanout import Fanout
from edge.recorder.ringbuffer import RetentionPolicy, RetentionWorker, RingBuffer
from edge.recorder.segmenter import SegmentPolicy
from edge.redact import Redactor, redact_url
from edge.store import Camera, Store
from edge.uplink import pairing, registry
from edge.uplink.control import ControlClient, HubCosignature, control_url
from edge.uplink.gate import Gate, Outcome
from edge.uplink.keyset import KeysetError
from edge.uplink.request import Refused, verify_token
from edge.uplink.sessions import Sessions, Uplink

log = logging.getLogger("edge.daemon")
T = TypeVar("T")

STOP_TIMEOUT_S = 15.0
CHECKPOINT_EVERY_S = 3600
CHECKPOINT_IDLE_S = 86400


def segment_policy(config: Config) -> SegmentPolicy:
    r = config.recording
    return SegmentPolicy(
        segment_ns=r.segment_s * NS_PER_S,
        fragment_ms=r.fragment_ms,
        flush_interval_ns=r.flush_interval_ms * NS_PER_MS,
    )


def retention_policy(config: Config) -> RetentionPolicy:
    s = config.storage
    recordings = s.data_dir / "recordings"

    def budget() -> int:
        return s.budget.resolve(shutil.disk_usage(recordings if recordings.exists() else s.data_dir).total)

    return RetentionPolicy(
        budget_bytes=budget, min_free_bytes=s.min_free_bytes, default_max_age_s=s.max_age_s
    )


def max_ages(store: Store) -> dict[int, int | None]:
    """Every camera's max age, removed ones too: their footage ages out like the rest."""
    return {c.id: c.max_age_s for c in store.cameras(include_removed=True)}


class Daemon:
    def __init__(self, config: Config, *, clock: Clock, redactor: Redactor) -> None:
        self.config = config
        self.data_dir = config.storage.data_dir
        self._clock = clock
        self._redactor = redactor
        # The daemon's own database connection lives on this one thread.
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="daemon-db")
        self._store: Store | None = None
        self._opener: Opener | None = None
        self._ring = RingBuffer(self.data_dir, retention_policy(config), clock)
        self._retention = RetentionWorker(self._ring, max_ages)
        self._recorders: dict[int, CameraRecorder] = {}
        self._fanouts: dict[int, Fanout] = {}
        self._statuses: dict[int, CameraStatus] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconcile_lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._identity: identity.DeviceIdentity | None = None
        self._audit: AuditLog | None = None
        self._last_checkpoint_ns = 0
        self._control: ControlClient | None = None
        self._gate: Gate | None = None
        self._sessions: Sessions | None = None
        self._paired_as: tuple[str, str] | None = None  # (hub URL, client certificate) the uplink runs with
        self.ready = asyncio.Event()

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    def _on_db(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._db_pool, fn)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._store = await self._db(Store.open, self.data_dir)
        store = self._store
        report = await self._db(self._ring.recover, store)
        if report.trimmed or report.adopted or report.quarantined:
            log.info(
                "recovery: %d trimmed, %d adopted, %d quarantined, %d bytes of torn tails cut",
                len(report.trimmed),
                len(report.adopted),
                len(report.quarantined),
                report.lost_bytes,
                extra={"event": "recovery"},
            )
        self._opener = await self._db(Opener.load, self.data_dir)
        self._identity = await self._db(identity.load_or_create, self.data_dir)
        self._audit = AuditLog(store)
        log.info("device %s", self._identity.public.device_id, extra={"event": "identity"})
        await self.checkpoint()
        self._retention.start()
        server = await control.serve(
            control.socket_path(self.data_dir),
            {
                "reload": self._op_reload,
                "status": self._op_status,
                "snapshot": self._op_snapshot,
                "checkpoint": self._op_checkpoint,
                "share": self._op_share,
            },
        )
        self._background(self._checkpoint_periodically())
        announcements = await self._listen_for_cameras()
        try:
            await self.reconcile()
            await self._reconcile_uplink()
            log.info("edge running with %d cameras", len(self._recorders), extra={"event": "daemon.ready"})
            self.ready.set()
            await stop.wait()
        finally:
            server.close()
            if announcements is not None:
                await announcements.close()
            for task in list(self._tasks):
                task.cancel()
            await self._stop_uplink()
            await self._stop_all()
            await self.checkpoint()
            self._retention.stop(STOP_TIMEOUT_S)
            await self._db(store.close)
            self._db_pool.shutdown(wait=True)
            control.socket_path(self.data_dir).unlink(missing_ok=True)
            log.info("edge stopped", extra={"event": "daemon.stopped"})

    async def _stop_all(self) -> None:
        recorders = list(self._recorders.values())
        self._recorders.clear()
        for r in recorders:
            r.stop()
        await asyncio.gather(*(asyncio.to_thread(r.join, STOP_TIMEOUT_S) for r in recorders))

    # --- cameras -------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Make the running recorders match the cameras in the database (add, remove, changed)."""
        async with self._reconcile_lock:
            assert self._store is not None
            cameras = await self._db(self._store.cameras)
            wanted = {c.id: c for c in cameras}
            for cid in [cid for cid in self._recorders if cid not in wanted]:
                await self._stop_recorder(cid)
            for cam in cameras:
                spec = await self._db(self._spec, cam)
                running = self._recorders.get(cam.id)
                if running is not None and running.spec != spec:
                    await self._stop_recorder(cam.id)
                    running = None
                if running is None:
                    self._start_recorder(spec)

    def _spec(self, cam: Camera) -> CameraSpec:
        password = None
        if cam.password_blob is not None:
            assert self._opener is not None
            password = self._opener.open(cam.password_blob, cam.url.encode())
            self._redactor.add(password)
        return CameraSpec(cam.id, cam.name, cam.url, cam.username, password)

    def _start_recorder(self, spec: CameraSpec) -> None:
        r = self.config.recording
        fanout = self._fanouts.setdefault(spec.id, Fanout(spec.id, gop_cache_max_bytes=r.gop_cache_max_bytes))
        rec = CameraRecorder(
            spec,
            data_dir=self.data_dir,
            policy=segment_policy(self.config),
            backoff=Backoff(r.reconnect_min_s, r.reconnect_max_s),
            open_timeout_s=r.open_timeout_s,
            read_timeout_s=r.read_timeout_s,
            clock=self._clock,
            ring=self._ring,
            fanout=fanout,
            on_status=self._on_status_threadsafe,
            on_segment_closed=self._retention.poke,
        )
        self._recorders[spec.id] = rec
        rec.start()
        log.info(
            "camera started: %s", redact_url(spec.url), extra={"event": "camera.added", "camera": spec.id}
        )

    async def _stop_recorder(self, camera_id: int) -> None:
        rec = self._recorders.pop(camera_id)
        rec.stop()
        await asyncio.to_thread(rec.join, STOP_TIMEOUT_S)
        self._statuses.pop(camera_id, None)
        self._retention.poke()
        log.info("camera stopped", extra={"event": "camera.removed", "camera": camera_id})

    def _on_status_threadsafe(self, status: CameraStatus) -> None:
        """Called on camera threads."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                loop.call_soon_threadsafe(self._statuses.__setitem__, status.camera_id, status)

    # --- audit -----------------------------------------------------------------------------------

    async def checkpoint(self, *, force: bool = False) -> bytes:
        """Sign the audit log as it is now (other modules ask at session start and stop); runs on the
        database thread, so the event loop never waits for hashing or fsync."""
        assert self._audit is not None and self._identity is not None
        audit, ident, now = self._audit, self._identity, self._clock.now_utc_ns()
        cp = await self._db(lambda: audit.checkpoint(ident, now_utc_ns=now, force=force))
        self._last_checkpoint_ns = cp.utc_ns
        log.info("audit checkpoint: %d entries", cp.tree_size, extra={"event": "audit.checkpoint"})
        return cp.note

    async def _checkpoint_periodically(self) -> None:
        # Hourly when the log grew; daily even when it did not, so a verifier sees the box was alive.
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            stale = self._clock.now_utc_ns() - self._last_checkpoint_ns > CHECKPOINT_IDLE_S * NS_PER_S
            await self.checkpoint(force=stale)

    async def _op_checkpoint(self, _req: dict[str, Any]) -> dict[str, Any]:
        return {"note_b64": base64.b64encode(await self.checkpoint()).decode()}

    # --- uplink ---------------------------------------------------------------------------------

    async def _reconcile_uplink(self) -> None:
        """Run the control channel while the box is paired (and the uplink not turned off); restart it when
        the pairing changed, stop it when the box was unpaired."""
        assert self._store is not None and self._identity is not None
        store, ident = self._store, self._identity
        paired = await self._db(pairing.load, store) if self.config.uplink.enabled else None
        wanted = (paired.hub_url, paired.client_cert_pem) if paired is not None else None
        if wanted == self._paired_as:
            return
        await self._stop_uplink()
        if paired is None:
            return
        ssl_context = await asyncio.to_thread(pairing.client_ssl_context, self.data_dir, paired)
        device_id = ident.public.device_id
        sessions = Sessions(
            uplink=Uplink(paired.hub_url, ssl_context, device_id), store=store, db=self._on_db,
            data_dir=self.data_dir, clock=self._clock, config=self.config.uplink,
            fanout=self._fanouts.get, checkpoint=self._checkpoint_for_hub,
        )  # fmt: skip
        keys = paired.hub_keys()
        gate = await self._db(
            lambda: Gate(store, ident, keys, open_sessions=sessions.open_cameras, on_accept=sessions.reserve)
        )
        self._sessions, self._paired_as, self._gate = sessions, wanted, gate
        self._control = ControlClient(
            control_url(paired.hub_url), ssl_context, device_id=device_id, gate=gate,
            executor=self._db_pool, on_accepted=self._on_accepted, on_cosignature=self._on_cosignature,
            on_keyset=self._on_keyset,
            clock_ns=self._clock.now_utc_ns, witness_name=paired.witness_name, witness_key=paired.witness_key,
        )  # fmt: skip
        self._control.start()
        await self._push_registry()
        log.info("uplink to %s (%s)", paired.hub_url, paired.agency, extra={"event": "uplink.started"})

    async def _op_share(self, req: dict[str, Any]) -> dict[str, Any]:
        """`edge share`: answer a notice (a request refused ``not_integrated``) with the owner's clip."""
        sessions, store, paired_as = self._sessions, self._store, self._paired_as
        if sessions is None or store is None or paired_as is None:
            raise Error("the box is not paired with a hub (or the uplink is turned off)", kind="not_paired")
        try:
            jti, camera = str(req["request"]), int(req["camera"])
            from_ns, to_ns = int(req["from_ns"]), int(req["to_ns"])
        except (KeyError, TypeError, ValueError):
            raise Error("share needs request, camera, from_ns and to_ns", kind="malformed") from None
        record = await self._db(lambda: requestlog.find(AuditLog(store), jti))
        if record is None:
            raise NotFound(f"no request {jti} in the audit log")
        if not record.notice or camera not in record.cameras or record.token is None:
            raise Error(
                f"request {jti} is not a notice for camera {camera}: only a request refused because the"
                " camera is registered (not integrated) can be answered with a share",
                kind="not_a_notice",
            )
        paired = await self._db(pairing.load, store)
        assert paired is not None and self._identity is not None
        try:  # the token again, as it was when it arrived: still signed by a pinned hub key
            device_id, then_s = self._identity.public.device_id, record.utc_ns // NS_PER_S
            request = verify_token(record.token, hub=paired.hub_keys(), device_id=device_id, now_s=then_s)
        except Refused as r:
            raise Error(f"request {jti} no longer verifies: {r.detail}", kind=r.code) from None
        session = sessions.start_share(request, camera, from_ns, to_ns)
        return {"session": session, "agency": paired.agency}

    async def _push_registry(self) -> None:
        """Tell the hub which cameras it may know of (registered and integrated, never private), now: a
        withdrawal must reach it at once. Logged (``registry.sent``) when what it says changed."""
        control, store, ident = self._control, self._store, self._identity
        if control is None or store is None or ident is None:
            return
        now = self._clock.now_utc_ns()

        def build() -> dict[str, Any]:
            doc = registry.build(store, ident, now_utc_ns=now)
            if registry.should_log(store, doc):
                details = registry.audit_details(doc)
                event = Event("registry.sent", "daemon", cameras=tuple(details["cameras"]), details=details)
                AuditLog(store).log(event, now_utc_ns=now)
            return doc

        doc = await self._db(build)
        try:
            await control.send_registry(doc)  # sent now, or as soon as the channel is up
        except Error as e:
            log.warning("registry not sent: %s", e.message, extra={"event": "registry.failed"})

    async def _stop_uplink(self) -> None:
        control, sessions = self._control, self._sessions
        self._control, self._sessions, self._paired_as, self._gate = None, None, None, None
        if sessions is not None:
            await sessions.close()
        if control is not None:
            await control.close()

    def _on_accepted(self, outcome: Outcome) -> None:
        if self._sessions is not None and outcome.request is not None:
            self._sessions.start(outcome.request)

    async def _on_cosignature(self, cosig: HubCosignature) -> None:
        """Keep the hub's cosignature: the off-box witness that shows a rewrite of this log."""
        assert self._audit is not None
        audit, now = self._audit, self._clock.now_utc_ns()
        witness = cosig.line.split(" ", 2)[1] if cosig.line.count(" ") >= 2 else "?"
        await self._db(
            lambda: audit.add_cosignature(tree_size=cosig.size, note=cosig.note, line=cosig.line,
                                          witness=witness, verified=cosig.verified, now_utc_ns=now)
        )  # fmt: skip
        unverified = "" if cosig.verified else " (no witness key pinned)"
        log.info(
            "the hub cosigned checkpoint %d%s", cosig.size, unverified, extra={"event": "audit.cosigned"}
        )

    async def _on_keyset(self, token: str) -> None:
        """The hub's key set, sent on every connection and after a rotation: pinned if it is newer and
        signed by a pinned key; from then on requests are checked against it."""
        gate, now = self._gate, self._clock.now_utc_ns()
        if gate is None:
            return
        try:
            pinned = await self._db(lambda: gate.accept_keyset(token, now_utc_ns=now))
        except KeysetError as e:
            log.warning("the hub's key set was refused: %s", e.message, extra={"event": "hub.keys.refused"})
            return
        if pinned is not None:
            kids = ", ".join(sorted(pinned.keys))
            log.info("hub key set version %d pinned (%s)", pinned.version, kids, extra={"event": "hub.keys"})

    async def _checkpoint_for_hub(self) -> None:
        """Sign a checkpoint and hand it to the hub to cosign (session start and end)."""
        note = await self.checkpoint()
        control = self._control
        if control is not None and control.connected:
            await control.send_checkpoint(note)

    # --- discovery -----------------------------------------------------------------------------

    async def _listen_for_cameras(self) -> wsdiscovery.Announcements | None:
        """Note cameras that announce themselves (WS-Discovery Hello/Bye) as candidates for the owner.

        Not being able to listen (another service holds the port, no LAN interface yet) costs only this
        convenience: `edge discover` still works, so it is a warning, not a reason to stop recording.
        """
        if not self.config.discovery.listen:
            return None
        names = set(self.config.discovery.interfaces)
        interfaces = [i for i in wsdiscovery.lan_interfaces() if not names or i.name in names]
        listener = wsdiscovery.Announcements(self._on_hello, self._on_bye, interfaces=interfaces)
        try:
            await listener.start()
        except OSError as e:
            log.warning("not listening for camera announcements: %s", e, extra={"event": "discovery.off"})
            return None
        log.info(
            "listening for camera announcements on %s",
            ", ".join(i.name for i in interfaces) or "no interface",
            extra={"event": "discovery.listening"},
        )
        return listener

    def _on_hello(self, device: wsdiscovery.Device) -> None:
        assert self._store is not None
        log.info(
            "camera announced itself: %s %s",
            device.source_ip,
            device.name or device.hardware or "",
            extra={"event": "discovery.hello"},
        )
        store, now = self._store, self._clock.now_utc_ns()
        self._background(
            self._db(
                lambda: store.saw_candidate(
                    key=device.epr,
                    source="ws-discovery",
                    address=device.source_ip,
                    now_utc_ns=now,
                    device_url=device.device_url,
                    name=device.name,
                    hardware=device.hardware,
                    location=device.location,
                )
            )
        )

    def _on_bye(self, epr: str) -> None:
        assert self._store is not None
        log.info("camera said goodbye: %s", epr, extra={"event": "discovery.bye"})
        store, now = self._store, self._clock.now_utc_ns()
        self._background(self._db(lambda: store.candidate_gone(epr, now_utc_ns=now)))

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background task failed: %s", task.exception(), extra={"event": "daemon.task_failed"})

    # --- queries (control socket ops; the web page will call the same) --------------------------

    async def camera_table(self) -> list[dict[str, Any]]:
        assert self._store is not None
        cameras = await self._db(self._store.cameras)
        stats = await self._db(self._store.camera_stats)
        rows = []
        for cam in cameras:
            st = self._statuses.get(cam.id)
            n, size, oldest, newest = stats.get(cam.id, (0, 0, None, None))
            info = asdict(st.info) if st is not None and st.info is not None else None
            rows.append(
                {
                    "id": cam.id,
                    "name": cam.name,
                    "url": redact_url(cam.url),
                    "consent": cam.consent,
                    "state": st.state if st is not None else "starting",
                    "error_kind": st.error_kind if st is not None else None,
                    "detail": self._redactor(st.detail) if st is not None else "",
                    "retry_in_s": st.retry_in_s if st is not None else None,
                    "stream": info,
                    "segments": n,
                    "bytes": size,
                    "oldest_utc_ns": oldest,
                    "newest_utc_ns": newest,
                }
            )
        return rows

    async def _op_reload(self, _req: dict[str, Any]) -> dict[str, Any]:
        await self.reconcile()
        await self._reconcile_uplink()
        await self._push_registry()  # consent, cameras or the owner's contact may have changed
        return {"cameras": len(self._recorders), "uplink": self._control is not None}

    async def _op_status(self, _req: dict[str, Any]) -> dict[str, Any]:
        return {"cameras": await self.camera_table(), "uplink": self.uplink_status()}

    def uplink_status(self) -> dict[str, Any]:
        """Paired or not, the control channel up or not, and what is being sent now."""
        control, sessions, paired_as = self._control, self._sessions, self._paired_as
        if control is None or sessions is None or paired_as is None:
            return {"paired": False, "connected": False, "sessions": []}
        streams = [
            {"camera": cam, "mode": s.mode, "request": s.request.jti, "frames": s.frames, "bytes": s.bytes}
            for cam, s in sorted(sessions.streams.items())
        ]
        return {"paired": True, "hub": paired_as[0], "connected": control.connected, "sessions": streams}

    async def snapshot(self, camera_id: int) -> bytes:
        fanout = self._fanouts.get(camera_id)
        if fanout is None:
            raise NotFound(f"camera {camera_id} is not recording")
        description, packets = fanout.latest_gop()
        if description is None or not packets:
            raise NotFound(f"camera {camera_id} has no live picture yet")
        # Imported on first use: decoding and JPEG encoding bring OpenCV (~27 MiB) into the daemon.
        from edge.recorder.snapshot import jpeg_from_gop

        return await asyncio.to_thread(jpeg_from_gop, description, packets)

    async def _op_snapshot(self, req: dict[str, Any]) -> dict[str, Any]:
        jpeg = await self.snapshot(int(req.get("camera", -1)))
        return {"jpeg_b64": base64.b64encode(jpeg).decode()}
