"""edge.discovery.onvif: the ONVIF inquiry of one camera.

Most of it runs against the simulated camera farm (tests/peers/onvif_camera.py) inside ``lan.cams``, with the
inquiries in ``lan.box``: one farm and one batch of ~45 concurrent inquiries per module (every maker's reply
shape, Media1 / Media2-only / both, open / WS-Security / HTTP Digest / either, right / wrong / no password,
clocks hours off, and the broken and hostile cameras). A few hostile HTTP servers the farm does not model run
on 127.0.0.1 in-process, and the hand-written Media2 parsers are tested on bytes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, quote_plus
from xml.etree.ElementTree import fromstring

import pytest
from aiohttp import web
from zeep.exceptions import Fault

from edge.discovery import onvif
from edge.discovery.onvif import DeviceReport, MediaProfile, State
from tests.lan import Lan
from tests.peers.onvif_camera import MANUFACTURERS, CameraSpec, OnvifPeer, Profile
from tests.peers.rtsp_server import RtspPeer

ROOT = Path(__file__).resolve().parent.parent
USER = "admin"
PASSWORD = "Zq7:p@ss w0rd/%"  # ":", "@", " ", "/" and "%": every way a password can hide in a URL
HANG_TIMEOUT_S = 1.5

# The farm: (label, CameraSpec keywords). Profiles and addresses are filled in by _specs().
CAMERAS: list[tuple[str, dict[str, object]]] = [
    ("hik", dict(maker="hikvision", auth="wsse", media="media1", clock_offset_s=7200.0)),
    ("dahua", dict(maker="dahua", auth="http_digest", media="media2")),
    ("axis", dict(maker="axis", auth="either", media="both")),
    ("reolink", dict(maker="reolink", auth="none", media="media1")),
    ("uniview", dict(maker="uniview", auth="wsse", media="media2", clock_offset_s=-10800.0)),
    ("generic", dict(maker="generic", auth="http_digest", media="both")),
    ("generic2", dict(maker="generic", auth="either", media="media2")),
    ("open2", dict(maker="hikvision", auth="none", media="media2")),
    ("fault1", dict(maker="dahua", auth="wsse", media="media1", behaviour="soap_fault")),
    ("fault2", dict(maker="axis", auth="none", media="media2", behaviour="soap_fault")),
    ("hang", dict(behaviour="hang")),
    ("web", dict(behaviour="not_onvif")),
    ("bomb", dict(behaviour="bomb_http")),
]
AUTH_CAMERAS = [label for label, kw in CAMERAS if "behaviour" not in kw]
SCHEME = {"wsse": "WS-Security", "http_digest": "HTTP Digest", "either": "HTTP Digest"}  # asked without one


def _profiles(label: str, ip: str, port: int) -> list[Profile]:
    """Three profiles in a maker-ish order (main first on some, last on others), tokens per maker."""
    main = Profile(f"{label}_main", "mainStream", "H265" if label == "axis" else "H264", 1920, 1080, 25,
                   f"rtsp://{ip}:{port}/h264_1080p")  # fmt: skip
    mid = Profile(f"{label}_mid", "thirdStream", "H264", 1280, 720, 30, f"rtsp://{ip}:{port}/h264_720p")
    sub = Profile(f"{label}_sub", "subStream", "H264", 640, 360, 15, f"rtsp://{ip}:{port}/h264_aac")
    return [sub, main, mid] if label in ("dahua", "generic2") else [main, mid, sub]


@dataclass
class Batch:
    specs: dict[str, CameraSpec]
    reports: dict[str, dict[str, object]]  # job id -> DeviceReport.to_json() (+ "detail" as is)
    took_s: dict[str, float]
    stdout: str
    stderr: str
    home: Path
    xaddr: dict[str, str] = field(default_factory=dict)


def _specs(lan: Lan, rtsp: RtspPeer) -> dict[str, CameraSpec]:
    specs = {}
    for i, (label, kw) in enumerate(CAMERAS):
        ip = lan.camera_ips[i]
        specs[label] = CameraSpec(
            ip=ip,
            uuid=f"0b5e7c1a-0000-4000-8000-{i:012x}",
            profiles=_profiles(label, ip, rtsp.port),
            model=f"Model {label}",
            firmware=f"V5.{i}.0 build 2401{i:02d}",
            serial=f"SN-{label}-{i:04d}",
            hardware_id=f"HW{i}",
            user=USER,
            password=PASSWORD,
            **kw,  # type: ignore[arg-type]
        )
    return specs


# Runs in lan.box: every job concurrently, one JSON line per report; DEBUG logging on stderr so a password
# that reached any log line would show; ResourceWarnings and unclosed sessions would show there too.
RUNNER = r"""
import asyncio, gc, json, logging, sys, time
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from edge.discovery import onvif

async def one(job):
    t0 = time.monotonic()
    report = await onvif.inspect(
        job["xaddr"], username=job["user"], password=job["password"], timeout_s=job["timeout_s"]
    )
    return {"id": job["id"], "took_s": time.monotonic() - t0, "report": report.to_json()}

async def main():
    jobs = json.load(sys.stdin)
    results = await asyncio.gather(*(one(j) for j in jobs))
    gc.collect()
    for r in results:
        print(json.dumps(r))

asyncio.run(main())
gc.collect()
"""


def _jobs(specs: dict[str, CameraSpec], closed: str) -> list[dict[str, object]]:
    jobs: list[dict[str, object]] = []

    def add(job_id: str, xaddr: str, user: str | None, password: str | None, timeout_s: float = 6.0) -> None:
        jobs.append(
            {"id": job_id, "xaddr": xaddr, "user": user, "password": password, "timeout_s": timeout_s}
        )

    for label, spec in specs.items():
        xaddr = f"http://{spec.ip}/onvif/device_service"
        if label == "hang":
            add(label, xaddr, USER, PASSWORD, HANG_TIMEOUT_S)
            continue
        add(f"{label}/right", xaddr, USER, PASSWORD)
        add(f"{label}/none", xaddr, None, None)
        if label in AUTH_CAMERAS:
            add(f"{label}/wrong", xaddr, USER, PASSWORD[::-1])
    add("closed", closed, USER, PASSWORD)
    add(
        "in-url",
        f"http://{USER}:{quote(PASSWORD, safe='')}@{specs['hik'].ip}/onvif/device_service",
        None,
        None,
    )
    return jobs


@pytest.fixture(scope="module")
def batch(lan: Lan, lan_rtsp: RtspPeer, tmp_path_factory: pytest.TempPathFactory) -> Batch:
    tmp = tmp_path_factory.mktemp("onvif")
    home = tmp / "home"
    home.mkdir()
    specs = _specs(lan, lan_rtsp)
    closed_ip = lan.camera_ips[len(CAMERAS)]  # an address of the cameras' LAN where nothing listens
    jobs = _jobs(specs, f"http://{closed_ip}/onvif/device_service")
    with (
        (tmp / "onvif_peer.log").open("a") as log,
        OnvifPeer(list(specs.values()), prefix=lan.cmd(lan.cams, []), log=log),
    ):
        proc = subprocess.run(
            lan.cmd(lan.box, [sys.executable, "-W", "always::ResourceWarning", "-c", RUNNER]),
            input=json.dumps(jobs),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")},
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return Batch(
        specs=specs,
        reports={r["id"]: r["report"] for r in rows},
        took_s={r["id"]: r["took_s"] for r in rows},
        stdout=proc.stdout,
        stderr=proc.stderr,
        home=home,
    )


def _expect_profiles(report: dict[str, object], spec: CameraSpec) -> None:
    got = {p["token"]: p for p in report["profiles"]}  # type: ignore[attr-defined]
    assert set(got) == {p.token for p in spec.profiles}
    for p in spec.profiles:
        g = got[p.token]
        assert (g["name"], g["encoding"], g["width"], g["height"], g["fps"]) == (
            p.name, p.encoding, p.width, p.height, float(p.fps),
        )  # fmt: skip
        assert g["stream_uri"] == p.rtsp_uri
        assert str(g["snapshot_uri"]).startswith(f"http://{spec.ip}/")
    assert report["main"] == next(p.token for p in spec.profiles if p.width == 1920)
    assert report["sub"] == next(p.token for p in spec.profiles if p.width == 640)


def test_right_password_reads_every_maker_and_media_kind(batch: Batch) -> None:
    for label in AUTH_CAMERAS:
        spec, report = batch.specs[label], batch.reports[f"{label}/right"]
        assert report["state"] == "ok", (label, report["detail"])
        assert report["manufacturer"] == MANUFACTURERS[spec.maker]
        assert (report["model"], report["firmware"], report["serial"], report["hardware_id"]) == (
            spec.model, spec.firmware, spec.serial, spec.hardware_id,
        )  # fmt: skip
        assert report["media"] == ("media2" if spec.media == "media2" else "media1"), label
        # The scheme the camera accepted: an open camera takes (and ignores) the WS-Security header.
        assert report["auth"] == ("http-digest" if spec.auth == "http_digest" else "ws-security"), label
        _expect_profiles(report, spec)


def test_no_password_on_an_open_camera_is_fine(batch: Batch) -> None:
    for label in ("reolink", "open2"):
        report = batch.reports[f"{label}/none"]
        assert report["state"] == "ok", report["detail"]
        assert report["auth"] == "none"
        _expect_profiles(report, batch.specs[label])


def test_no_password_on_a_protected_camera_needs_one(batch: Batch) -> None:
    for label in AUTH_CAMERAS:
        spec, report = batch.specs[label], batch.reports[f"{label}/none"]
        if spec.auth == "none":
            continue
        assert report["state"] == "needs password", (label, report)
        assert report["detail"] == f"the camera asks for a password ({SCHEME[spec.auth]})"
        assert report["profiles"] == [] and report["auth"] is None


def test_wrong_password_is_auth_failed(batch: Batch) -> None:
    for label in AUTH_CAMERAS:
        spec, report = batch.specs[label], batch.reports[f"{label}/wrong"]
        if spec.auth == "none":  # nothing checks it
            assert report["state"] == "ok"
            continue
        scheme = "HTTP Digest" if spec.auth == "http_digest" else "WS-Security"
        assert report["state"] == "auth failed", (label, report)
        assert report["detail"] == f"the camera refused the password ({scheme})"
        assert report["manufacturer"] is None and report["profiles"] == []


def test_clock_hours_off_still_authenticates_and_is_reported(batch: Batch) -> None:
    for label in ("hik", "uniview"):  # WS-Security over Media1 and over the hand-written Media2
        spec, report = batch.specs[label], batch.reports[f"{label}/right"]
        assert report["state"] == "ok"
        assert report["clock_offset_s"] == pytest.approx(spec.clock_offset_s, abs=1.5)
        # Asked without a password, the camera's clock is still known (GetSystemDateAndTime is pre-auth).
        assert batch.reports[f"{label}/none"]["clock_offset_s"] == pytest.approx(spec.clock_offset_s, abs=1.5)
    assert batch.reports["reolink/right"]["clock_offset_s"] == pytest.approx(0, abs=1.5)


def test_credentials_in_the_url_are_used_not_sent_in_clear(batch: Batch) -> None:
    report = batch.reports["in-url"]
    assert report["state"] == "ok", report["detail"]
    assert report["auth"] == "ws-security"
    assert report["xaddr"] == f"http://{batch.specs['hik'].ip}/onvif/device_service"


def test_soap_fault_on_get_profiles_is_an_error_naming_it(batch: Batch) -> None:
    for job in ("fault1/right", "fault2/none", "fault2/right"):
        report = batch.reports[job]
        assert report["state"] == "error"
        assert report["detail"] == (
            "GetProfiles failed: Receiver: Internal Server Error: media configuration unavailable"
        )
        assert report["manufacturer"] == MANUFACTURERS[batch.specs[job.split("/")[0]].maker]  # still read
        assert report["profiles"] == []
    assert batch.reports["fault1/none"]["state"] == "needs password"


def test_hanging_camera_is_unreachable_within_the_timeout(batch: Batch) -> None:
    report = batch.reports["hang"]
    assert report["state"] == "unreachable"
    assert report["detail"] == f"no answer within {HANG_TIMEOUT_S:g} s"
    assert HANG_TIMEOUT_S <= batch.took_s["hang"] < HANG_TIMEOUT_S + 0.5


def test_plain_web_server_is_not_onvif(batch: Batch) -> None:
    for job in ("web/right", "web/none"):
        report = batch.reports[job]
        assert report["state"] == "not ONVIF"
        assert report["detail"] == "HTTP 404 from a non-ONVIF web server"


def test_entity_bomb_is_refused_unexpanded_and_fast(batch: Batch) -> None:
    for job in ("bomb/right", "bomb/none"):
        report = batch.reports[job]
        assert report["state"] == "error"
        assert report["detail"] == (
            "GetSystemDateAndTime: the camera sent XML with a DTD, refused unread"
            " (no entity is ever expanded)"
        )
        assert batch.took_s[job] < 1.0  # a billion laughs expanded takes minutes and gigabytes


def test_closed_port_is_unreachable(batch: Batch) -> None:
    report = batch.reports["closed"]
    assert report["state"] == "unreachable"
    assert report["detail"] == "connection refused"
    assert batch.took_s["closed"] < 1.0


def test_inquiries_are_fast_when_run_together(batch: Batch) -> None:
    # ~45 inquiries at once on 2 cores, the farm on the same cores: each well inside a discovery window.
    slow = {job: t for job, t in batch.took_s.items() if job != "hang" and t > 1.5}
    assert slow == {}


def test_no_password_anywhere_and_every_session_closed(batch: Batch) -> None:
    forms = {PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD), quote_plus(PASSWORD), PASSWORD[::-1]}
    for form in forms:
        assert form not in batch.stdout
        assert form not in batch.stderr
    assert "DEBUG" in batch.stderr  # the logs were on, and still clean
    for sign in ("Unclosed", "ResourceWarning", "Traceback", "Task exception was never retrieved"):
        assert sign not in batch.stderr
    # No WSDL cache (zeep's SqliteCache) or anything else written under the inquirer's home.
    assert [p for p in batch.home.rglob("*")] == []


# --- hostile HTTP servers the farm does not model (127.0.0.1, in-process) ---------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/onvif/device_service"
    finally:
        await runner.cleanup()


async def test_http_basic_is_never_answered() -> None:
    seen: list[str | None] = []

    async def basic(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="cam"'}, text="401")

    async with _server(basic) as url:
        without = await onvif.inspect(url, timeout_s=3)
        with_creds = await onvif.inspect(url, username=USER, password=PASSWORD, timeout_s=3)
        in_url = await onvif.inspect(url.replace("//", f"//{USER}:{quote(PASSWORD, safe='')}@"), timeout_s=3)
    assert (without.state, without.detail) == (
        State.NEEDS_PASSWORD,
        "the camera asks for a password (HTTP Basic)",
    )
    assert with_creds.state is State.AUTH_FAILED and "HTTP Basic" in with_creds.detail
    assert in_url.state is State.AUTH_FAILED
    assert seen and all(h is None for h in seen)  # the password never went out in clear


def _clock_reply(offset_s: float) -> bytes:
    t = datetime.now(UTC) + timedelta(seconds=offset_s)
    return (
        '<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"'
        ' xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema">'
        "<s:Body><tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>Manual"
        "</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings><tt:UTCDateTime><tt:Time>"
        f"<tt:Hour>{t.hour}</tt:Hour><tt:Minute>{t.minute}</tt:Minute><tt:Second>{t.second}</tt:Second>"
        f"</tt:Time><tt:Date><tt:Year>{t.year}</tt:Year><tt:Month>{t.month}</tt:Month><tt:Day>{t.day}"
        "</tt:Day></tt:Date></tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        "</s:Body></s:Envelope>"
    ).encode()


NOT_AUTHORIZED = (
    b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:ter="http://www.onvif.org/ver10/error">'
    b"<s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>ter:NotAuthorized</s:Value>"
    b"</s:Subcode></s:Code><s:Reason><s:Text>Sender not Authorized</s:Text></s:Reason></s:Fault></s:Body>"
    b"</s:Envelope>"
)


@pytest.mark.parametrize("clock_wants_auth", [False, True])
async def test_a_camera_that_stops_answering_midway(clock_wants_auth: bool) -> None:
    """It answers the clock (some firmwares only when signed: the inquiry asks again, signed), then nothing:
    the report says what it was waiting for, and keeps the clock it learnt."""
    signed: list[bool] = []

    async def clock_then_silence(request: web.Request) -> web.Response:
        body = await request.read()
        if b"GetSystemDateAndTime" in body:
            signed.append(b"UsernameToken" in body)
            if clock_wants_auth and not signed[-1]:
                return web.Response(status=400, body=NOT_AUTHORIZED, content_type="application/soap+xml")
            return web.Response(body=_clock_reply(3600), content_type="application/soap+xml")
        await asyncio.sleep(10)
        return web.Response(status=500)

    async with _server(clock_then_silence) as url:
        report = await onvif.inspect(url, username=USER, password=PASSWORD, timeout_s=1)
    assert (report.state, report.detail) == (
        State.UNREACHABLE, "no answer to GetDeviceInformation, GetServices within 1 s",
    )  # fmt: skip
    assert report.clock_offset_s == pytest.approx(3600, abs=1.5)
    assert signed == ([False, True] if clock_wants_auth else [False])


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_reply_is_refused(chunked: bool) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/soap+xml"})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = 3 * 1024 * 1024
        await response.prepare(request)
        for _ in range(48):
            await response.write(b" " * 65536)
        return response

    async with _server(huge) as url:
        t0 = time.monotonic()
        report = await onvif.inspect(url, timeout_s=5)
    assert report.state is State.ERROR
    assert report.detail.startswith("GetSystemDateAndTime: the camera sent a ")
    assert str(onvif.MAX_REPLY_BYTES) in report.detail
    assert time.monotonic() - t0 < 2


async def test_junk_instead_of_http_is_not_onvif(garbage_rtsp_url: str) -> None:
    url = garbage_rtsp_url.replace("rtsp://", "http://").replace("/stream", "/onvif/device_service")
    report = await onvif.inspect(url, timeout_s=3)
    assert report.state is State.NOT_ONVIF, report.detail


async def test_silent_server_is_unreachable_in_time(silent_rtsp_url: str) -> None:
    url = silent_rtsp_url.replace("rtsp://", "http://")
    t0 = time.monotonic()
    report = await onvif.inspect(url, timeout_s=0.5)
    assert (report.state, report.detail) == (State.UNREACHABLE, "no answer within 0.5 s")
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(
    "xaddr", ["", "ftp://10.0.0.1/onvif", "http:///onvif", "http://[::1/x", "http://h:99999/"]
)
async def test_a_bad_address_is_an_error_not_an_exception(xaddr: str) -> None:
    report = await onvif.inspect(xaddr, timeout_s=1)
    assert (report.state, report.detail) == (State.ERROR, "not an http(s) URL of a device service")


# --- the hand-written Media2 parsers, on bytes ------------------------------------------------------------

MEDIA2_PROFILES = b"""<?xml version="1.0" encoding="UTF-8"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:tr2="http://www.onvif.org/ver20/media/wsdl"
 xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:x="urn:wrong-but-seen-in-the-wild"><env:Body>
<tr2:GetProfilesResponse>
 <tr2:Profiles token="P1" fixed="true"><tr2:Name>main</tr2:Name><tr2:Configurations>
  <tr2:VideoSource token="vs"><tt:Name>src</tt:Name></tr2:VideoSource>
  <tr2:VideoEncoder token="ve1" GovLength="50" Profile="Main"><tt:Name>e</tt:Name><tt:UseCount>1</tt:UseCount>
   <tt:Encoding>H265</tt:Encoding><tt:Resolution><tt:Width>2560</tt:Width><tt:Height>1440</tt:Height></tt:Resolution>
   <tt:RateControl ConstantBitRate="false"><tt:FrameRateLimit>12.5</tt:FrameRateLimit></tt:RateControl>
  </tr2:VideoEncoder></tr2:Configurations></tr2:Profiles>
 <tr2:Profiles token="P2"><x:Name>odd ns</x:Name><tr2:Configurations><x:VideoEncoder>
  <tt:Encoding>H264</tt:Encoding>
  <tt:Resolution><tt:Width>-4</tt:Width><tt:Height>huge</tt:Height></tt:Resolution></x:VideoEncoder>
  </tr2:Configurations></tr2:Profiles>
 <tr2:Profiles><tr2:Name>no token: skipped</tr2:Name></tr2:Profiles>
 <tr2:Profiles token="P3"/>
</tr2:GetProfilesResponse></env:Body></env:Envelope>"""


def test_media2_profiles_parse_tolerantly() -> None:
    response = onvif.media2_response(fromstring(MEDIA2_PROFILES), "GetProfiles", 200)
    assert onvif.parse_media2_profiles(response) == [
        onvif.Media2Profile("P1", "main", "H265", 2560, 1440, 12.5),
        onvif.Media2Profile("P2", "odd ns", "H264", None, None, None),
        onvif.Media2Profile("P3", None, None, None, None, None),
    ]


def test_media2_faults_read_like_zeep_faults() -> None:
    soap12 = b"""<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
    xmlns:ter="http://www.onvif.org/ver10/error"><s:Body><s:Fault>
    <s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>ter:NotAuthorized</s:Value></s:Subcode></s:Code>
    <s:Reason><s:Text xml:lang="en">Sender not Authorized</s:Text></s:Reason>
    </s:Fault></s:Body></s:Envelope>"""
    with pytest.raises(Fault) as caught:
        onvif.media2_response(fromstring(soap12), "GetProfiles", 400)
    assert (caught.value.message, caught.value.code, caught.value.subcodes) == (
        "Sender not Authorized", "s:Sender", ["ter:NotAuthorized"],
    )  # fmt: skip
    soap11 = b"""<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault>
    <faultcode>e:Server</faultcode><faultstring>busy</faultstring></e:Fault></e:Body></e:Envelope>"""
    with pytest.raises(Fault) as caught:
        onvif.media2_response(fromstring(soap11), "GetStreamUri", 500)
    assert (caught.value.message, caught.value.code) == ("busy", "e:Server")
    wrong = b"""<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><Other/></s:Body></s:Envelope>"""
    with pytest.raises(ValueError, match="Other instead of GetStreamUriResponse"):
        onvif.media2_response(fromstring(wrong), "GetStreamUri", 200)


# --- the report -------------------------------------------------------------------------------------------


def _p(
    token: str, w: int | None, h: int | None, uri: str | None, enc: str = "H264", fps: float = 25
) -> MediaProfile:
    return MediaProfile(token, token, enc, w, h, fps, uri, None)


def _report(*profiles: MediaProfile) -> DeviceReport:
    return DeviceReport("http://cam/onvif/device_service", State.OK, "", profiles=profiles)


def test_main_is_the_biggest_playable_and_sub_the_smallest_other() -> None:
    r = _report(
        _p("jpeg", 1920, 1080, "rtsp://c/j", enc="JPEG"),
        _p("main", 1920, 1080, "rtsp://c/m"),
        _p("nouri", 3840, 2160, None),
        _p("sub", 640, 360, "rtsp://c/s"),
        _p("same", 320, 240, "rtsp://c/m"),  # the main's own stream again: not a sub stream
        _p("unknown", None, None, "rtsp://c/u"),
    )
    assert (r.main and r.main.token, r.sub and r.sub.token) == ("main", "sub")
    only = _report(_p("one", 1280, 720, "rtsp://c/1"))
    assert (only.main and only.main.token, only.sub) == ("one", None)
    assert (_report(_p("x", 1, 1, None)).main, _report().sub) == (None, None)


def test_to_json_redacts_credentials_firmwares_put_in_uris() -> None:
    report = DeviceReport(
        "http://cam/onvif/device_service",
        State.OK,
        "1 profile via media1",
        profiles=(
            MediaProfile(
                "t", "n", "H264", 1, 1, 1.0, "rtsp://admin:hunter2@cam/s", "http://cam/snap?pwd=hunter2"
            ),
        ),
    )
    text = json.dumps(report.to_json())
    assert "hunter2" not in text
    assert "rtsp://admin:***@cam/s" in text and "pwd=***" in text
    assert report.to_json()["state"] == "ok" and report.to_json()["main"] == "t"


async def test_preload_parses_the_wsdls_once() -> None:
    await onvif.preload()
    t0 = time.process_time()
    await asyncio.gather(*(onvif.preload() for _ in range(10)))
    assert time.process_time() - t0 < 0.2  # parsing the WSDLs costs seconds; a cache hit, microseconds
