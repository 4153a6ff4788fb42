"""`edge discover` and `edge cameras add <ONVIF address>` on a simulated shop LAN (tests/lan.py): simulated
ONVIF cameras (tests/peers/onvif_camera.py) in ``lan.cams`` whose streams come from the real GStreamer RTSP
server, and the appliance's CLI and daemon in ``lan.box``. Nothing here leaves those two namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, edge_cli, write_config
from tests.lan import Lan
from tests.peers.onvif_camera import CameraSpec, OnvifPeer, Profile
from tests.peers.rtsp_server import RtspPeer

USER = "admin"  # the RTSP server's /auth account doubles as the cameras' ONVIF account
MAKERS = ("hikvision", "dahua", "axis", "reolink", "uniview", "generic")
# (mount, encoding, width, height, fps) of the main streams: the RTSP server's clips.
MAINS = (
    ("h264_1080p", "H264", 1920, 1080, 30),
    ("h265", "H265", 1280, 720, 30),
    ("h264_720p", "H264", 1280, 720, 30),
)


def _profiles(ip: str, rtsp: RtspPeer, i: int, *, rtsp_auth: bool = False) -> list[Profile]:
    main = MAINS[i % len(MAINS)]
    mount = "auth" if rtsp_auth else main[0]
    if rtsp_auth:
        main = ("auth", "H264", 1280, 720, 30)
    return [
        Profile(
            "Profile_1", "mainStream", main[1], main[2], main[3], main[4], f"rtsp://{ip}:{rtsp.port}/{mount}"
        ),
        Profile("Profile_2", "subStream", "H264", 640, 360, 25, f"rtsp://{ip}:{rtsp.port}/h264_aac"),
    ]


def _uuid(i: int) -> str:
    return f"5f5a69c2-e0ae-504f-829b-00000000{i:04x}"


def _farm(lan: Lan, rtsp: RtspPeer, password: str) -> list[CameraSpec]:
    """20 cameras: six makers' reply shapes, Media1 / Media2-only / both, open / WS-Security / HTTP digest,
    one answering only NetworkVideoTransmitter probes, one with its clock two hours off."""
    cams = []
    for i in range(20):
        ip = lan.camera_ips[i]
        auth = ("none", "wsse", "http_digest", "either")[i % 4]
        cams.append(
            CameraSpec(
                ip=ip,
                uuid=_uuid(i),
                profiles=_profiles(ip, rtsp, i, rtsp_auth=(i == 7)),
                maker=MAKERS[i % len(MAKERS)],
                model=f"Model-{i}",
                serial=f"SN{i:06d}",
                name=f"Shop cam {i}",
                location=f"aisle {i}",
                media=("media1", "media2", "both")[i % 3],
                auth=auth,
                user=USER,
                password=password,
                probe_types="nvt_only" if i == 5 else "both",
                clock_offset_s=7200.0 if i == 9 else 0.0,
            )
        )
    return cams


def _discover(lan: Lan, cfg: Path, password: str, *args: str) -> tuple[dict[str, object], float]:
    t0 = time.monotonic()
    proc = edge_cli(
        cfg, "discover", "--json", "--user", USER, "--password-stdin", *args,
        stdin=password + "\n", prefix=lan.cmd(lan.box, []),
    )  # fmt: skip
    return json.loads(proc.stdout), time.monotonic() - t0


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path / "edge.toml", tmp_path / "data", discovery={"listen": False})


@pytest.fixture
def farm(lan: Lan, lan_rtsp: RtspPeer, tmp_path: Path) -> Iterator[list[CameraSpec]]:
    cams = _farm(lan, lan_rtsp, lan_rtsp.auth_password)
    with (
        (tmp_path / "onvif_peer.log").open("a") as log,
        OnvifPeer(cams, prefix=lan.cmd(lan.cams, []), log=log),
    ):
        yield cams


def test_twenty_cameras_found_with_their_streams_in_under_3_s(
    lan: Lan, lan_rtsp: RtspPeer, cfg: Path, farm: list[CameraSpec]
) -> None:
    report, wall_s = _discover(lan, cfg, lan_rtsp.auth_password, "--timeout", "2")
    found = {f["address"]: f for f in report["found"]}  # type: ignore[attr-defined]
    print(f"edge discover: {len(found)} cameras, wall {wall_s:.2f} s, run {report['elapsed_s']} s")
    for f in found.values():
        print(
            f"  {f['address']:<13} {f['onvif']['manufacturer'] if f['onvif'] else '-':<10} "
            f"{f['onvif']['media'] if f['onvif'] else '-':<7} {f['state']:<4} "
            f"found {f['found_after_s']:.2f} s ready {f['ready_after_s']:.2f} s {f['stream_url']}"
        )
    assert sorted(found) == sorted(c.ip for c in farm), "every camera found, nothing else"
    for cam in farm:
        f = found[cam.ip]
        assert f["state"] == "ok", (cam, f)
        assert f["key"] == f"urn:uuid:{cam.uuid}"
        assert f["name"] == cam.name and f["location"] == cam.location
        assert f["stream_url"] == cam.profiles[0].rtsp_uri  # the main (highest resolution) profile
        onvif = f["onvif"]
        assert onvif["model"] == cam.model and onvif["serial"] == cam.serial
        assert onvif["media"] == ("media2" if cam.media == "media2" else "media1")
        assert [p["stream_uri"] for p in onvif["profiles"]] == [p.rtsp_uri for p in cam.profiles]
        # The stream was opened and read (it plays), and it is what the camera said it is.
        stream = f["stream"]
        assert stream["ok"], stream
        assert (stream["width"], stream["height"]) == (cam.profiles[0].width, cam.profiles[0].height)
        assert stream["video_codec"] == {"H264": "h264", "H265": "hevc"}[cam.profiles[0].encoding]
        assert f["ready_after_s"] <= 3.0
    assert abs(found[farm[9].ip]["onvif"]["clock_offset_s"] - 7200) < 5  # adjusted for, reported
    # The 3 s promise is the discovery run's own clock (probe sent -> every camera inspected and
    # probed). The command's wall time adds interpreter start and imports (0.5 s here, 1.2 s seen
    # on a loaded CI machine), so it is printed above and only guarded against a hang.
    assert float(report["elapsed_s"]) <= 3.0, report["elapsed_s"]  # type: ignore[arg-type]
    assert wall_s <= 10.0, f"edge discover took {wall_s:.2f} s"


def test_found_stream_decodes(lan: Lan, lan_rtsp: RtspPeer, cfg: Path, farm: list[CameraSpec]) -> None:
    report, _ = _discover(lan, cfg, lan_rtsp.auth_password, "--timeout", "1.5", "--no-mdns")
    url = next(f["stream_url"] for f in report["found"] if f["address"] == farm[2].ip)  # type: ignore[attr-defined]
    proc = subprocess.run(
        lan.cmd(lan.box, ["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i", url, "-frames:v", "5",
                          "-f", "null", "-"]),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_table_output_and_known_candidates(
    lan: Lan, lan_rtsp: RtspPeer, cfg: Path, farm: list[CameraSpec]
) -> None:
    proc = edge_cli(
        cfg, "discover", "--timeout", "1.5", "--user", USER, "--password-stdin",
        stdin=lan_rtsp.auth_password + "\n", prefix=lan.cmd(lan.box, []),
    )  # fmt: skip
    out = proc.stdout
    assert "20 camera(s)" in out
    assert farm[0].ip in out and "1920x1080" in out and farm[0].name in out
    known = json.loads(edge_cli(cfg, "discover", "--known", "--json").stdout)
    assert {k["address"] for k in known} == {c.ip for c in farm}
    assert lan_rtsp.auth_password not in out + proc.stderr


def test_misbehaving_cameras_get_a_clear_state_and_spoil_nothing(
    lan: Lan, lan_rtsp: RtspPeer, cfg: Path, tmp_path: Path
) -> None:
    password = lan_rtsp.auth_password
    ips = lan.camera_ips[20:]

    def cam(i: int, **kw: object) -> CameraSpec:
        spec: dict[str, object] = {
            "ip": ips[i],
            "uuid": _uuid(100 + i),
            "profiles": _profiles(ips[i], lan_rtsp, i),
        }
        spec |= {"user": USER, "password": password, "name": f"odd {i}"}
        return CameraSpec(**(spec | kw))  # type: ignore[arg-type]

    cams = [
        cam(0),  # a good one among them
        cam(1, auth="wsse", password="not the installer's"),  # the installer's password is wrong for it
        cam(2, behaviour="soap_fault"),
        cam(3, behaviour="hang"),
        cam(4, behaviour="not_onvif"),
        cam(5, behaviour="garbage_udp"),
        cam(6, behaviour="bomb_udp"),
        cam(7, behaviour="bomb_http"),
        cam(8, behaviour="huge_udp"),
        cam(9, auth="http_digest", maker="dahua", password="also wrong"),
    ]
    expected = {
        ips[0]: "ok",
        ips[1]: "auth failed",
        ips[2]: "error",
        ips[3]: "unreachable",
        ips[4]: "not ONVIF",
        ips[7]: "error",
        ips[9]: "auth failed",
    }
    with (tmp_path / "peer.log").open("a") as log, OnvifPeer(cams, prefix=lan.cmd(lan.cams, []), log=log):
        t0 = time.monotonic()
        proc = edge_cli(
            cfg, "discover", "--json", "--timeout", "1.5", "--no-mdns", "--user", USER, "--password-stdin",
            stdin=password + "\n", prefix=lan.cmd(lan.box, []), check=False,
        )  # fmt: skip
        took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and password not in proc.stdout + proc.stderr
    found = {f["address"]: f for f in json.loads(proc.stdout)["found"]}
    # Garbage, entity bombs and huge datagrams are not cameras: ignored, not listed, no crash.
    assert {ips[5], ips[6], ips[8]}.isdisjoint(found)
    assert {a: f["state"] for a, f in found.items()} == expected, found
    assert found[ips[0]]["stream"]["ok"]
    assert (
        "NotAuthorized" in found[ips[1]]["onvif"]["detail"] or "password" in found[ips[1]]["onvif"]["detail"]
    )
    assert took < 10, f"a hung camera held discovery for {took:.1f} s"


def test_without_credentials_cameras_that_want_them_say_so(
    lan: Lan, lan_rtsp: RtspPeer, cfg: Path, farm: list[CameraSpec]
) -> None:
    proc = edge_cli(cfg, "discover", "--json", "--timeout", "1.5", "--no-mdns", prefix=lan.cmd(lan.box, []))
    found = {f["address"]: f["state"] for f in json.loads(proc.stdout)["found"]}
    for c in farm:
        assert found[c.ip] == ("needs password" if c.auth != "none" else "ok"), (c, found[c.ip])


def test_camera_added_by_onvif_address_records_then_stops_keeping_its_footage(
    lan: Lan, lan_rtsp: RtspPeer, tmp_path: Path
) -> None:
    """The installer types the camera's address and password; the box resolves the main stream, records
    it with the sealed password, and never shows or stores the password in clear."""
    password = lan_rtsp.auth_password
    ip = lan.camera_ips[30]
    cam = CameraSpec(
        ip=ip, uuid=_uuid(300), profiles=_profiles(ip, lan_rtsp, 0, rtsp_auth=True), maker="hikvision",
        model="DS-2CD2143G2-I", serial="DS-2CD2143G2-I20231234AAWRJ12345678", auth="either", user=USER,
        password=password, media="both",
    )  # fmt: skip
    data = tmp_path / "data"
    cfg = write_config(tmp_path / "edge.toml", data, discovery={"listen": False}, recording={"segment_s": 2})
    box = lan.cmd(lan.box, [])
    with (
        (tmp_path / "peer.log").open("a") as log,
        OnvifPeer([cam], prefix=lan.cmd(lan.cams, []), log=log),
        Daemon(cfg, data, tmp_path / "daemon.log", prefix=box) as daemon,
    ):
        daemon.start()
        out = edge_cli(
            cfg, "cameras", "add", ip, "--user", USER, "--password-stdin", stdin=password + "\n", prefix=box
        )
        assert "added camera 1" in out.stdout and "main stream: H264 1280x720" in out.stdout, out.stdout
        listed = json.loads(edge_cli(cfg, "cameras", "list", "--json").stdout)[0]
        assert listed["url"] == f"rtsp://{ip}:{lan_rtsp.port}/auth"
        assert listed["sub_url"] == f"rtsp://{ip}:{lan_rtsp.port}/h264_aac"
        assert (listed["maker"], listed["model"], listed["serial"]) == ("HIKVISION", cam.model, cam.serial)
        assert listed["onvif_url"] == f"http://{ip}/onvif/device_service"
        assert listed["consent"] == "private"
        again = edge_cli(
            cfg, "cameras", "add", f"http://{ip}/", "--user", USER, "--password-stdin",
            stdin=password + "\n", prefix=box, check=False,
        )  # fmt: skip
        assert again.returncode == 1 and "already camera 1" in again.stderr
        daemon.wait_for(lambda cams: cams and cams[0]["segments"] >= 2, timeout_s=30, what="recording")
        edge_cli(cfg, "cameras", "remove", "1")
        daemon.wait_for(lambda cams: not cams, timeout_s=15, what="recorder stopped")
        time.sleep(1.0)
        files = sorted((data / "recordings").rglob("*.mp4"))
        assert files, "footage kept after removal"
        size = sum(f.stat().st_size for f in files)
        time.sleep(2.0)
        assert sum(f.stat().st_size for f in sorted((data / "recordings").rglob("*.mp4"))) == size  # stopped
        daemon.stop()
    # The password: sealed in the database, absent from every log and every output.
    secret = password.encode()
    for path in [*data.rglob("edge.db*"), tmp_path / "daemon.log"]:
        assert secret not in path.read_bytes(), path
    assert password not in out.stdout + out.stderr


def test_daemon_notes_cameras_announcing_hello_and_bye(lan: Lan, lan_rtsp: RtspPeer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = write_config(tmp_path / "edge.toml", data, discovery={"listen": True})
    ip = lan.camera_ips[31]
    cam = CameraSpec(ip=ip, uuid=_uuid(301), profiles=_profiles(ip, lan_rtsp, 1), name="New in the shop")

    def known() -> list[dict[str, object]]:
        return list(json.loads(edge_cli(cfg, "discover", "--known", "--json").stdout))

    def wait(pred: object, what: str) -> list[dict[str, object]]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = known()
            if pred(rows):  # type: ignore[operator]
                return rows
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {known()}")

    with Daemon(cfg, data, tmp_path / "daemon.log", prefix=lan.cmd(lan.box, [])) as daemon:
        daemon.start()
        deadline = time.monotonic() + 10
        while "discovery.listening" not in daemon.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "lan0" in daemon.log_text()
        with (tmp_path / "peer.log").open("a") as log:
            peer = OnvifPeer([cam], prefix=lan.cmd(lan.cams, []), log=log)
            peer.start()
            try:
                (row,) = wait(lambda rows: len(rows) == 1, "the Hello")
                assert row["key"] == f"urn:uuid:{cam.uuid}" and row["address"] == ip
                assert row["name"] == "New in the shop" and row["gone_utc_ns"] is None
                assert row["device_url"] == f"http://{ip}/onvif/device_service"
            finally:
                peer.stop()
        wait(lambda rows: rows[0]["gone_utc_ns"] is not None, "the Bye")
        assert "event=discovery.hello" in daemon.log_text() and "event=discovery.bye" in daemon.log_text()
        daemon.stop()


def test_camera_announced_over_mdns_is_listed_with_a_playing_stream(
    lan: Lan, lan_rtsp: RtspPeer, cfg: Path
) -> None:
    """A camera without ONVIF that announces ``_rtsp._tcp`` (tests/peers/mdns_peer.py, plain zeroconf)."""
    ip = lan.camera_ips[32]
    peer = Path(__file__).parent / "peers" / "mdns_peer.py"
    argv = ["announce", "--address", ip, "--port", str(lan_rtsp.port), "--path", "/h264_aac"]
    proc = subprocess.Popen(
        lan.cmd(lan.cams, [sys.executable, str(peer), *argv]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
        report, _ = _discover(lan, cfg, lan_rtsp.auth_password, "--timeout", "2")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    (row,) = [f for f in report["found"] if f["address"] == ip]  # type: ignore[attr-defined]
    assert row["source"] == "mdns" and row["key"].startswith("mdns:Camera-")
    assert row["stream_url"] == f"rtsp://{ip}:{lan_rtsp.port}/h264_aac"
    assert row["state"] == "ok"
    assert (row["stream"]["video_codec"], row["stream"]["width"], row["stream"]["audio_codec"]) == (
        "h264", 640, "aac",
    )  # fmt: skip
