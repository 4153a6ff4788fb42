"""Uplink benchmark: first-frame latency of live requests, and recorded-range throughput over a shaped link.

**Latency.** A box (`edge run`, paired with the reference hub over real TLS on 127.0.0.1) records two cameras
of the real GStreamer RTSP server: GOP 1 s (``h264_720p``) and GOP 4 s (``h264_gop4``). The hub sends N live
requests per camera, each after a random pause in [0, GOP) so it lands anywhere in the GOP. Measured per
request: from the moment hub code starts the request (nonce round trip included) to the first fragment
received and decrypted at the hub, plus the time to decode that fragment's first frame from the received bytes
(init segment + first fragment, a fresh decoder). Each session is then closed by the hub.

**Throughput.** Hub (`edge hub serve`) and box (`edge run`) in two network namespaces joined by a veth; the
box's side is shaped with ``tc tbf`` to the link rate (upload: what the box sends). The box holds footage made
by the real segmenter; the hub asks for a recorded range; bytes of video payload received / time from the
first fragment to the end. Run twice: with the box's rate cap above the link, and at the box's default cap.

Usage: ``bench/uplink.py [--requests 50] [--link-mbit 20] [--range-s 120]`` (root, for the namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
from common import DEFAULT_WORKDIR, EDGE, fmt, fresh_dir, log, machine, machine_line, md_table


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def decode_first_ms(video: Path) -> float:
    """Decode the first frame of a received stream from its bytes (init + first fragment), fresh decoder."""
    data = video.read_bytes()
    t0 = time.perf_counter()
    with av.open(io.BytesIO(data), "r") as c:
        next(iter(c.decode(video=0)))
    return (time.perf_counter() - t0) * 1000


# --- latency ----------------------------------------------------------------------------------------------


def latency(work: Path, media: Path, n: int) -> list[list[str]]:
    from tests.peers.rtsp_server import RtspPeer
    from tests.uplinkworld import HubThread, make_box

    work.mkdir(parents=True, exist_ok=True)
    rtsp_log = (work / "rtsp.log").open("w")
    peer = RtspPeer(media, log=rtsp_log)
    peer.start()
    hub = HubThread(work / "hub")
    rows = []
    try:
        box = make_box(work / "box", hub, peer, ["h264_720p", "h264_gop4"])
        for cam in (1, 2):
            box.cli("consent", "set", str(cam), "--quota", "100")
        rng = random.Random(1)
        for cam, gop_s in ((1, 1.0), (2, 4.0)):
            got, dec = [], []
            for i in range(n):
                time.sleep(rng.uniform(0, gop_s))
                t0 = time.monotonic_ns()
                res = hub.request(box.device_id, [cam])
                assert res.accepted and res.expected is not None, res.decision
                stream = res.expected.streams[cam]
                first = hub.call(asyncio.wait_for(asyncio.shield(stream.first_fragment), 15))
                assert first is not None
                hub.call(hub.hub.media.stop(res.session, cam))
                got.append((first - t0) / 1e6)
                dec.append(decode_first_ms(stream.video_path))
                if i % 10 == 9:
                    log(f"camera {cam}: {i + 1}/{n}, received p50 {statistics.median(got):.0f} ms")
            total = [g + d for g, d in zip(got, dec, strict=True)]
            rows.append([f"{gop_s:g} s", str(n), fmt(statistics.median(got), 0), fmt(pct(got, 95), 0),
                         fmt(statistics.median(dec), 1), fmt(statistics.median(total), 0),
                         fmt(pct(total, 95), 0), fmt(max(total), 0)])  # fmt: skip
        box.daemon.stop()
    finally:
        hub.close()
        peer.stop()
        rtsp_log.close()
    return rows


# --- throughput -------------------------------------------------------------------------------------------


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120, **kw)


async def _admin_request(sock: Path, body: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
    """(end record, seconds from first fragment to end, seconds from decision to end)."""
    import aiohttp

    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s,
        s.post("http://hub/v1/admin/request", json=body, timeout=aiohttp.ClientTimeout(total=600)) as r,
    ):
        times: dict[str, float] = {}
        record: dict[str, Any] = {}
        async for line in r.content:
            event = json.loads(line)
            times[event.get("event", "error")] = time.monotonic()
            if "error" in event:
                raise RuntimeError(event)
            if event["event"] == "decision" and event["decision"]["decision"] != "accepted":
                raise RuntimeError(event["decision"])
            if event["event"] == "end":
                record = event["record"]
    return record, times["end"] - times["first_fragment"], times["end"] - times["decision"]


def throughput(work: Path, media: Path, link_mbit: float, range_s: int) -> list[list[str]]:
    from tests.lan import Lan
    from tests.recordings import record_file

    lan = Lan.create(n_camera_ips=1)
    hub_dir, box_dir = work / "hub-net", work / "box-net"
    procs: list[subprocess.Popen[bytes]] = []
    rows = []
    try:
        hub_ip = "10.231.0.2"
        _run([str(EDGE), "hub", "keygen", "--data", str(hub_dir), "--hub-id", "met-hub-1"])
        hub_log = (work / "hub-net.log").open("wb")
        procs.append(subprocess.Popen(lan.cmd(lan.cams, [str(EDGE), "hub", "serve", "--data", str(hub_dir),
                                                         "--listen", f"{hub_ip}:8443"]),
                                      stdout=hub_log, stderr=hub_log))  # fmt: skip
        sock = hub_dir / "hub.sock"
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        box_dir.mkdir(parents=True)
        data = box_dir / "data"
        data.mkdir()
        end_ns = time.time_ns() - 5_000_000_000
        record_file(data, media / "h264_1080p.mkv", range_s, start_utc_ns=end_ns - range_s * 1_000_000_000)
        for rate in (1000.0, 8.0):
            cfg = box_dir / f"edge-{rate:g}.toml"
            cfg.write_text(f'[storage]\ndata_dir = "{data}"\n[discovery]\nlisten = false\n'
                           f"[uplink]\nrecorded_rate_mbit = {rate}\n")  # fmt: skip
        cfg = box_dir / "edge-1000.toml"
        edge = [str(EDGE), "--config", str(cfg)]
        _run([*edge, "cameras", "set", "1", "--lat", "51.5014", "--lon", "-0.1419"])
        _run([*edge, "consent", "set", "1", "--level", "integrated", "--lookback", "1d", "--quota", "100"])
        code = json.loads(_run([str(EDGE), "hub", "enroll-code", "--data", str(hub_dir), "--url",
                                f"https://{hub_ip}:8443", "--json"]).stdout)  # fmt: skip
        _run(
            lan.cmd(
                lan.box, [*edge, "pair", code["code"], "--confirm-fingerprint", code["keyset_fingerprint"]]
            )
        )
        device = json.loads(_run([*edge, "identity", "--json"]).stdout)["device_id"]
        _run(["ip", "netns", "exec", lan.box, "tc", "qdisc", "add", "dev", "lan0", "root", "tbf",
              "rate", f"{link_mbit:g}mbit", "burst", "32kb", "latency", "50ms"])  # fmt: skip
        for rate in (1000.0, 8.0):
            cfg = box_dir / f"edge-{rate:g}.toml"
            box_log = (work / f"box-{rate:g}.log").open("wb")
            daemon = subprocess.Popen(lan.cmd(lan.box, [str(EDGE), "--config", str(cfg), "run"]),
                                      stdout=box_log, stderr=box_log)  # fmt: skip
            procs.append(daemon)
            time.sleep(3)  # connect and say hello
            from_s = end_ns // 1_000_000_000 - range_s + 2
            body = {"device": device, "cameras": [1], "mode": "recorded", "from": from_s,
                    "to": from_s + range_s - 4, "max_dur": 900, "case": "bench", "reason": "public_safety",
                    "sub": "bench", "incident": {"lat": 51.5014, "lon": -0.1419, "kind": "x"}}  # fmt: skip
            record, stream_s, total_s = asyncio.run(_admin_request(sock, body))
            mbit = record["bytes"] * 8 / stream_s / 1e6
            limit = min(rate, link_mbit)
            log(f"cap {rate:g} Mbit/s: {record['bytes']} bytes in {stream_s:.2f} s = {mbit:.2f} Mbit/s")
            whole = record["bytes"] * 8 / total_s / 1e6
            rows.append([f"{link_mbit:g}", f"{rate:g}", f"{record['bytes'] / 1e6:.1f}", fmt(stream_s, 2),
                         fmt(mbit, 2), f"{100 * mbit / limit:.0f} %", fmt(whole, 2),
                         record["reason"]])  # fmt: skip
            daemon.terminate()
            daemon.wait(30)
            procs.remove(daemon)
            box_log.close()
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        lan.destroy()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--link-mbit", type=float, default=20.0)
    ap.add_argument("--range-s", type=int, default=120)
    args = ap.parse_args()
    from tests.peers.media import make_media

    work = fresh_dir(DEFAULT_WORKDIR / "uplink")
    media = work / "media"
    media.mkdir()
    make_media(media, ["h264_720p", "h264_gop4", "h264_1080p"])
    lat = latency(work / "latency", media, args.requests)
    thr = throughput(work, media, args.link_mbit, args.range_s)
    print(f"\n{machine_line(machine())}\n")
    print(md_table(["GOP", "requests", "received p50 ms", "received p95 ms", "decode ms (p50)",
                    "first frame decoded p50 ms", "p95 ms", "max ms"], lat))  # fmt: skip
    print()
    print(md_table(["link Mbit/s", "box cap Mbit/s", "MB sent", "s (first fragment to end)", "Mbit/s",
                    "of the limit", "Mbit/s from the decision", "end"], thr))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
