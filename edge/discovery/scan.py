"""One discovery run: WS-Discovery and mDNS together, each found camera inspected (ONVIF) and its main stream
probed as soon as it answers, all inside one time budget.

Why concurrent rather than "collect, then inspect": an installer waits for the whole run, and cameras answer a
probe within half a second (WS-Discovery's APP_MAX_DELAY), so the ONVIF calls and the stream probe overlap the
rest of the listening window instead of following it. A camera that answers late gets ``inquiry_timeout_s``
after its answer; the run ends when the window has closed and every inquiry has finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from edge.discovery import mdns, onvif, probe, wsdiscovery
from edge.redact import redact_url

log = logging.getLogger(__name__)

Source = Literal["ws-discovery", "mdns", "address"]
PROBE_THREADS = 16
ONVIF_DEVICE_PATH = "/onvif/device_service"


@dataclass(frozen=True)
class Found:
    """One camera found on the LAN and what we learnt about it."""

    key: str  # WS-Discovery endpoint reference, "mdns:<instance>", or the address asked for
    source: Source
    address: str
    name: str | None = None
    hardware: str | None = None
    location: str | None = None
    device_url: str | None = None  # ONVIF device service
    onvif: onvif.DeviceReport | None = None
    stream_url: str | None = None  # the main stream (ONVIF main profile, or the mDNS-announced URL)
    stream: probe.ProbeResult | None = None
    found_after_s: float = 0.0  # from the start of the run to its answer
    ready_after_s: float = 0.0  # … to the end of its inquiry

    @property
    def state(self) -> str:
        """``ok`` when the main stream plays; otherwise the first thing that stopped us."""
        if self.onvif is not None and self.onvif.state != onvif.State.OK:
            return str(self.onvif.state)
        if self.stream_url is None:
            return "no stream"
        if self.stream is None:
            return "not probed"
        return "ok" if self.stream.ok else f"stream failed: {self.stream.error}"

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "source": self.source,
            "address": self.address,
            "name": self.name,
            "hardware": self.hardware,
            "location": self.location,
            "device_url": self.device_url,
            "state": self.state,
            "onvif": self.onvif.to_json() if self.onvif is not None else None,
            "stream_url": redact_url(self.stream_url) if self.stream_url else None,
            "stream": _probe_json(self.stream),
            "found_after_s": round(self.found_after_s, 3),
            "ready_after_s": round(self.ready_after_s, 3),
        }


def _probe_json(p: probe.ProbeResult | None) -> dict[str, object] | None:
    if p is None:
        return None
    return {
        "ok": p.ok,
        "error": p.error,
        "video_codec": p.video_codec,
        "width": p.width,
        "height": p.height,
        "fps": p.fps,
        "audio_codec": p.audio_codec,
    }


@dataclass
class ScanResult:
    found: list[Found] = field(default_factory=list)
    elapsed_s: float = 0.0


async def scan(
    timeout_s: float = 3.0,
    *,
    username: str | None = None,
    password: str | None = None,
    interfaces: Sequence[wsdiscovery.Interface] | None = None,
    unicast: Sequence[str] = (),
    use_mdns: bool = True,
    probe_streams: bool = True,
    inquiry_timeout_s: float = 5.0,
) -> ScanResult:
    """Find cameras for ``timeout_s``; ``username``/``password`` are tried on every ONVIF camera and stream.

    ``interfaces`` None means every LAN interface; ``[]`` means unicast only (``unicast`` = "host[:port]").
    """
    start = time.monotonic()
    tasks: list[asyncio.Task[Found]] = []
    seen_addresses: set[str] = set()
    loop = asyncio.get_running_loop()
    # Probes block in libav; the default pool (cores + 4 threads) would run 20 of them in four rounds.
    pool = ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="probe")
    preload = asyncio.create_task(onvif.preload())  # parse the WSDLs while the first answers arrive

    def elapsed() -> float:
        return time.monotonic() - start

    async def check_stream(found: Found) -> Found:
        if not probe_streams or found.stream_url is None:
            return found
        url = found.stream_url
        result = await loop.run_in_executor(
            pool,
            lambda: probe.probe_stream(
                url, username=username, password=password, timeout_s=inquiry_timeout_s
            ),
        )
        return _with(found, stream=result)

    async def check_onvif(found: Found) -> Found:
        assert found.device_url is not None
        report = await onvif.inspect(
            found.device_url, username=username, password=password, timeout_s=inquiry_timeout_s
        )
        main = report.main
        found = _with(found, onvif=report, stream_url=main.stream_uri if main is not None else None)
        return await check_stream(found) if report.state == onvif.State.OK else found

    async def inquire_onvif(device: wsdiscovery.Device, found_at: float) -> Found:
        found = Found(
            key=device.epr,
            source="ws-discovery",
            address=device.source_ip,
            name=device.name,
            hardware=device.hardware,
            location=device.location,
            device_url=device.device_url,
            found_after_s=found_at,
        )
        if device.device_url is not None:
            found = await check_onvif(found)
        return _with(found, ready_after_s=elapsed())

    async def inquire_mdns(service: mdns.Service, found_at: float) -> Found:
        address = service.addresses[0] if service.addresses else service.server
        found = Found(
            key=f"mdns:{service.instance}",
            source="mdns",
            address=address,
            name=service.instance.split("._", 1)[0],
            stream_url=service.url,
            found_after_s=found_at,
        )
        if service.type == mdns.AXIS_TYPE:
            # Axis announces its web server, not a stream; its streams come from its ONVIF service.
            found = await check_onvif(_with(found, device_url=f"http://{address}{ONVIF_DEVICE_PATH}"))
        else:
            found = await check_stream(found)
        return _with(found, ready_after_s=elapsed())

    def on_device(device: wsdiscovery.Device) -> None:
        seen_addresses.add(device.source_ip)
        tasks.append(asyncio.create_task(inquire_onvif(device, elapsed())))

    def on_service(service: mdns.Service) -> None:
        tasks.append(asyncio.create_task(inquire_mdns(service, elapsed())))

    iface_ips = None if interfaces is None else [i.ip for i in interfaces]
    listeners: list[Coroutine[Any, Any, object]] = [
        wsdiscovery.probe(timeout_s, interfaces=interfaces, unicast=unicast, on_found=on_device)
    ]
    if use_mdns and iface_ips != []:
        listeners.append(mdns.browse(timeout_s, interfaces=iface_ips, on_found=on_service))
    try:
        await asyncio.gather(*listeners)
        results = await asyncio.gather(*tasks)
        await preload
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    # A camera that speaks ONVIF and also announces RTSP over mDNS is one camera: keep the ONVIF row.
    kept = [f for f in results if not (f.source == "mdns" and f.address in seen_addresses)]
    kept.sort(key=lambda f: (_ip_sort_key(f.address), f.key))
    return ScanResult(found=kept, elapsed_s=elapsed())


async def inquire_address(
    device_url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 5.0,
    probe_stream: bool = True,
) -> Found:
    """Inspect one camera the installer named by its ONVIF device address (no discovery)."""
    start = time.monotonic()
    report = await onvif.inspect(device_url, username=username, password=password, timeout_s=timeout_s)
    main = report.main
    found = Found(
        key=device_url,
        source="address",
        address=urlsplit(device_url).hostname or device_url,
        device_url=device_url,
        onvif=report,
        stream_url=main.stream_uri if main is not None else None,
    )
    if probe_stream and report.state == onvif.State.OK and found.stream_url is not None:
        url = found.stream_url
        result = await asyncio.to_thread(
            probe.probe_stream, url, username=username, password=password, timeout_s=timeout_s
        )
        found = _with(found, stream=result)
    return _with(found, ready_after_s=time.monotonic() - start)


def _with(found: Found, **changes: object) -> Found:
    return replace(found, **changes)  # type: ignore[arg-type]


def _ip_sort_key(address: str) -> tuple[int, ...] | tuple[str]:
    parts = address.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return (address,)
