"""The simulated ONVIF camera farm speaks real WS-Discovery and SOAP: checked from ``lan.box``, raw sockets.

Every client here is a small script run in the appliance's namespace (stdlib sockets + defusedxml), so what is
checked is the bytes the farm puts on the wire, not the farm's own idea of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lan import BOX_IP, Lan
from tests.peers.onvif_camera import CameraSpec, OnvifPeer, Profile
from tests.peers.rtsp_server import RtspPeer

MAX_DELAY_S = 0.3

# The client side, run with the venv's python inside lan.box; ARGS is the JSON in argv[1].
CLIENT = r"""
import base64, datetime as dt, hashlib, http.client, json, os, re, socket, sys, time, urllib.parse, uuid
from defusedxml.ElementTree import fromstring

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
TDS = "http://www.onvif.org/ver10/device/wsdl"
DN = "http://www.onvif.org/ver10/network/wsdl"
TT = "http://www.onvif.org/ver10/schema"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
TOKEN_PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
ARGS = json.loads(sys.argv[1])


def probe_xml(mid, types=None, decls=""):
    t = "" if types is None else f"<d:Types{decls}>{types}</d:Types>"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><e:Envelope xmlns:e="{SOAP}" xmlns:w="{WSA}" xmlns:d="{WSD}">'
        f"<e:Header><w:MessageID>{mid}</w:MessageID><w:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</w:To>"
        f"<w:Action>{WSD}/Probe</w:Action></e:Header><e:Body><d:Probe>{t}</d:Probe></e:Body></e:Envelope>"
    ).encode()


def udp_socket(port=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("10.231.0.1", port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.231.0.1"))
    return s


def collect(s, seconds):
    out = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            break
        out.append((data, addr, time.monotonic()))
    return out


def match_info(data):
    root = fromstring(data, forbid_dtd=True)
    h = root.find(f"{{{SOAP}}}Header")
    m = root.find(f".//{{{WSD}}}ProbeMatch")
    return {
        "relates_to": h.findtext(f"{{{WSA}}}RelatesTo"), "action": h.findtext(f"{{{WSA}}}Action"),
        "to": h.findtext(f"{{{WSA}}}To"), "seq": h.find(f"{{{WSD}}}AppSequence") is not None,
        "epr": m.findtext(f"{{{WSA}}}EndpointReference/{{{WSA}}}Address"),
        "types": m.findtext(f"{{{WSD}}}Types"), "scopes": m.findtext(f"{{{WSD}}}Scopes").split(),
        "xaddrs": m.findtext(f"{{{WSD}}}XAddrs").split(),
    }


def req(url, body=None, headers=None, method="POST"):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5)
    target = u.path + ("?" + u.query if u.query else "")
    hdrs = {"Content-Type": "application/soap+xml; charset=utf-8", **(headers or {})}
    c.request(method, target, body=body, headers=hdrs)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def envelope(op, header=""):
    return (
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:tds="{TDS}" xmlns:trt="http://www.onvif.org/ver10/media/wsdl" '
        f'xmlns:tr2="http://www.onvif.org/ver20/media/wsdl" xmlns:tt="{TT}">'
        f"<s:Header>{header}</s:Header><s:Body>{op}</s:Body></s:Envelope>"
    ).encode()


def wsse(user, password, created, kind="PasswordDigest"):
    nonce = os.urandom(16)
    if kind == "PasswordDigest":
        pw = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()
    else:
        pw = password
    return (
        f'<wsse:Security xmlns:wsse="{WSSE}" xmlns:wsu="{WSU}"><wsse:UsernameToken>'
        f"<wsse:Username>{user}</wsse:Username>"
        f"<wsse:Password Type=\"{TOKEN_PROFILE}#{kind}\">{pw}</wsse:Password>"
        f"<wsse:Nonce>{base64.b64encode(nonce).decode()}</wsse:Nonce><wsu:Created>{created}</wsu:Created>"
        f"</wsse:UsernameToken></wsse:Security>"
    )


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def fault(data):
    root = fromstring(data, forbid_dtd=True)
    code = root.find(f".//{{{SOAP}}}Fault/{{{SOAP}}}Code")
    return [v.text.rpartition(":")[2] for v in code.iter(f"{{{SOAP}}}Value")]  # QName prefixes vary


def camera_clock(url):
    status, _, data = req(url, envelope("<tds:GetSystemDateAndTime/>"))
    assert status == 200, (status, data)
    u = fromstring(data, forbid_dtd=True).find(f".//{{{TT}}}UTCDateTime")
    n = lambda tag: int(u.findtext(f".//{{{TT}}}{tag}"))
    return dt.datetime(n("Year"), n("Month"), n("Day"), n("Hour"), n("Minute"), n("Second"), tzinfo=dt.UTC)


def digest(challenge, user, password, method, uri, nc=1, cnonce="0a4f113b"):
    p = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.split(" ", 1)[1]))
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()
    ha1, ha2, ncs = md5(f"{user}:{p['realm']}:{password}"), md5(f"{method}:{uri}"), f"{nc:08x}"
    response = md5(f"{ha1}:{p['nonce']}:{ncs}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", '
        f'algorithm=MD5, qop=auth, nc={ncs}, cnonce="{cnonce}", response="{response}"'
    )


"""


def run_in_box(lan: Lan, code: str, args: Any, timeout: float = 10.0) -> Any:
    r = subprocess.run(
        lan.cmd(lan.box, [sys.executable, "-c", CLIENT + code, json.dumps(args)]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def farm(lan: Lan, lan_rtsp: RtspPeer) -> Iterator[tuple[OnvifPeer, dict[str, CameraSpec]]]:
    ip = lan.camera_ips[20:27]

    def rtsp(i: int, mount: str) -> str:
        return f"rtsp://{ip[i]}:{lan_rtsp.port}/{mount}"

    cams = {
        "hik": CameraSpec(
            ip=ip[0], uuid="5d3c7a10-0000-4000-8000-c0ffee000001", maker="hikvision", auth="wsse",
            clock_offset_s=3600.0, name="Front door", model="DS-2CD2143G2-I",
            profiles=[
                Profile("Profile_1", "mainStream", "H264", 1920, 1080, 30, rtsp(0, "h264_1080p")),
                Profile("Profile_2", "subStream", "H264", 640, 360, 25, rtsp(0, "h264_aac")),
            ],
        ),
        "axis": CameraSpec(
            ip=ip[1], uuid="5d3c7a10-0000-4000-8000-c0ffee000002", maker="axis", auth="http_digest",
            media="media2", profiles=[Profile("profile_1_h265", "Profile_1 H.265", "H265", 1280, 720, 30,
                                              rtsp(1, "h265"))],
        ),
        "dahua": CameraSpec(
            ip=ip[2], uuid="5d3c7a10-0000-4000-8000-c0ffee000003", maker="dahua", auth="either",
            media="both", probe_types="nvt_only", clock_offset_s=-30.0,
            profiles=[Profile("MediaProfile00000", "Main", "H264", 1280, 720, 30, rtsp(2, "h264_720p"))],
        ),
        "generic": CameraSpec(
            ip=ip[3], uuid="5d3c7a10-0000-4000-8000-c0ffee000004", port=8080,
            profiles=[Profile("MainStream", "main", "H264", 1280, 720, 30, rtsp(3, "h264_720p"))],
        ),
        "hang": CameraSpec(ip=ip[4], uuid="5d3c7a10-0000-4000-8000-c0ffee000005", behaviour="hang",
                           profiles=[Profile("P", "p", "H264", 640, 360, 25, rtsp(4, "h264_aac"))]),
        "bomb": CameraSpec(ip=ip[5], uuid="5d3c7a10-0000-4000-8000-c0ffee000006", behaviour="bomb_http",
                           profiles=[Profile("P", "p", "H264", 640, 360, 25, rtsp(5, "h264_aac"))]),
        "web": CameraSpec(ip=ip[6], uuid="5d3c7a10-0000-4000-8000-c0ffee000007", behaviour="not_onvif",
                          profiles=[Profile("P", "p", "H264", 640, 360, 25, rtsp(6, "h264_aac"))]),
    }  # fmt: skip
    peer = OnvifPeer(list(cams.values()), prefix=lan.cmd(lan.cams, []), max_delay_s=MAX_DELAY_S)
    peer.start()
    try:
        yield peer, cams
    finally:
        peer.stop()
    assert peer.exit_code == 0


def test_multicast_probe_gets_a_match_from_each_camera_that_has_the_types(
    lan: Lan, farm: tuple[OnvifPeer, dict[str, CameraSpec]]
) -> None:
    peer, cams = farm
    code = """
s = udp_socket()
mids = {k: f"urn:uuid:{uuid.uuid4()}" for k in ("nvt", "device", "any")}
sent = time.monotonic()
# Prefixes that no camera uses: only the namespace URIs may count.
s.sendto(probe_xml(mids["nvt"], "q:NetworkVideoTransmitter", f' xmlns:q="{DN}"'), ("239.255.255.250", 3702))
s.sendto(probe_xml(mids["device"], "zz:Device", f' xmlns:zz="{TDS}"'), ("239.255.255.250", 3702))
s.sendto(probe_xml(mids["any"]), ("239.255.255.250", 3702))
out = {k: [] for k in mids}
for data, addr, t in collect(s, 1.2):
    info = match_info(data)
    kind = next(k for k, v in mids.items() if v == info["relates_to"])
    out[kind].append({**info, "src": list(addr), "after": t - sent})
print(json.dumps(out))
"""
    out = run_in_box(lan, code, {})
    everyone = {c.ip for c in cams.values()}
    for kind, expected in (("nvt", everyone), ("device", everyone - {cams["dahua"].ip}), ("any", everyone)):
        replies = out[kind]
        assert {r["src"][0] for r in replies} == expected, kind
        for r in replies:
            cam = next(c for c in cams.values() if c.ip == r["src"][0])
            assert r["src"][1] == 3702
            assert r["action"] == "http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches"
            assert r["to"] == "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
            assert r["seq"]
            assert r["epr"] == f"urn:uuid:{cam.uuid}"
            assert r["xaddrs"][0] == peer.xaddr(cam)
            assert "onvif://www.onvif.org/type/video_encoder" in r["scopes"]
            assert r["after"] < MAX_DELAY_S + 0.3  # the Dahua's SOAP-over-UDP repeat comes 50 ms later
            types = r["types"].split()
            assert types[0].endswith(":NetworkVideoTransmitter")
            assert len(types) == (1 if cam is cams["dahua"] else 2)
    hik = next(r for r in out["any"] if r["src"][0] == cams["hik"].ip)
    assert "onvif://www.onvif.org/name/Front%20door" in hik["scopes"]
    assert "onvif://www.onvif.org/hardware/DS-2CD2143G2-I" in hik["scopes"]
    assert hik["xaddrs"][1].startswith("http://[fe80::")
    assert peer.xaddr(cams["generic"]) == f"http://{cams['generic'].ip}:8080/onvif/device_service"


def test_hostile_datagrams_are_ignored_and_directed_probes_answered(
    lan: Lan, farm: tuple[OnvifPeer, dict[str, CameraSpec]]
) -> None:
    peer, cams = farm
    code = """
s = udp_socket()
dest = (ARGS["ip"], 3702)
bomb_mid = f"urn:uuid:{uuid.uuid4()}"
bomb = ('<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        + probe_xml(bomb_mid, "&b;").decode().split("?>", 1)[1]).encode()
for junk in (b"", os.urandom(900), b"<not xml", bomb, b"\\xff" * 60000,
             probe_xml(f"urn:uuid:{uuid.uuid4()}", "u:Device")):  # an undeclared prefix
    s.sendto(junk, dest)
mid = f"urn:uuid:{uuid.uuid4()}"
s.sendto(probe_xml(mid, "tds:Device", f' xmlns:tds="{TDS}"'), dest)
print(json.dumps([[match_info(d)["relates_to"], a[0]] for d, a, _ in collect(s, 0.8)] + [mid]))
"""
    *replies, mid = run_in_box(lan, code, {"ip": cams["hik"].ip})
    assert replies == [[mid, cams["hik"].ip]]  # directed: only the camera addressed, no delay, no junk reply
    assert peer.running


def test_ws_security_digest_checked_against_the_camera_clock(
    lan: Lan, farm: tuple[OnvifPeer, dict[str, CameraSpec]]
) -> None:
    peer, cams = farm
    code = """
url, user, pw = ARGS["url"], ARGS["user"], ARGS["password"]
cam_now = camera_clock(url)
skew = (cam_now - dt.datetime.now(dt.UTC)).total_seconds()
info = "<tds:GetDeviceInformation/>"
def call(header):
    status, _, data = req(url, envelope(info, header))
    return [status, fault(data) if status != 200 else data.decode()]
cam_created = iso(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=round(skew)))
out = {
    "skew": skew,
    "none": call(""),
    "right": call(wsse(user, pw, cam_created)),
    "wrong": call(wsse(user, pw + "x", cam_created)),
    "other_user": call(wsse("operator", pw, cam_created)),
    "real_clock": call(wsse(user, pw, iso(dt.datetime.now(dt.UTC)))),
    "plain_text": call(wsse(user, pw, cam_created, kind="PasswordText")),
    "services_pre_auth": req(url, envelope("<tds:GetServices><tds:IncludeCapability>false"
                                            "</tds:IncludeCapability></tds:GetServices>"))[0],
}
print(json.dumps(out))
"""
    hik = cams["hik"]
    out = run_in_box(lan, code, {"url": peer.xaddr(hik), "user": hik.user, "password": hik.password})
    assert abs(out["skew"] - 3600) < 3
    refused = [400, ["Sender", "NotAuthorized"]]
    assert out["none"] == refused
    assert out["right"][0] == 200
    assert "<tds:Manufacturer>HIKVISION</tds:Manufacturer>" in out["right"][1]
    assert "<tds:Model>DS-2CD2143G2-I</tds:Model>" in out["right"][1]
    for case in ("wrong", "other_user", "real_clock", "plain_text"):
        assert out[case] == refused, case
    assert out["services_pre_auth"] == 200


def test_http_digest_challenge_response_and_replay(
    lan: Lan, farm: tuple[OnvifPeer, dict[str, CameraSpec]]
) -> None:
    peer, cams = farm
    code = """
url, user, pw = ARGS["url"], ARGS["user"], ARGS["password"]
path = urllib.parse.urlsplit(url).path
body = envelope("<tds:GetSystemDateAndTime/>")
s1, h1, _ = req(url, body)
challenge = h1["www-authenticate"]
auth = digest(challenge, user, pw, "POST", path)
s2, _, d2 = req(url, body, {"Authorization": auth})
s3, _, _ = req(url, body, {"Authorization": auth})  # same nc again: a replay
s4, _, _ = req(url, body, {"Authorization": digest(challenge, user, pw + "x", "POST", path, nc=2)})
unknown_nonce = challenge.replace('nonce="', 'nonce="00')
s5, h5, _ = req(url, body, {"Authorization": digest(unknown_nonce, user, pw, "POST", path)})
# The snapshot (a plain GET) wants the same digest.
get_snap = "<tr2:GetSnapshotUri><tr2:ProfileToken>profile_1_h265</tr2:ProfileToken></tr2:GetSnapshotUri>"
_, _, data = req(url, envelope(get_snap), {"Authorization": digest(challenge, user, pw, "POST", path, nc=3)})
snap = fromstring(data).findtext(".//{http://www.onvif.org/ver20/media/wsdl}Uri")
u = urllib.parse.urlsplit(snap)
sc, hc, _ = req(snap, method="GET")
auth = digest(hc["www-authenticate"], user, pw, "GET", u.path + "?" + u.query)
s6, h6, jpeg = req(snap, method="GET", headers={"Authorization": auth})
print(json.dumps({
    "challenge": challenge, "codes": [s1, s2, s3, s4, s5, sc, s6], "stale": h5["www-authenticate"],
    "utc": "<tt:UTCDateTime>" in d2.decode(), "jpeg": jpeg[:3].hex(), "type": h6["content-type"],
}))
"""
    axis = cams["axis"]
    out = run_in_box(lan, code, {"url": peer.xaddr(axis), "user": axis.user, "password": axis.password})
    assert out["challenge"].startswith('Digest realm="AXIS_')
    assert 'qop="auth"' in out["challenge"] and "algorithm=MD5" in out["challenge"]
    assert out["codes"] == [401, 200, 401, 401, 401, 401, 200]
    assert "stale=TRUE" in out["stale"]
    assert out["utc"]
    assert out["jpeg"] == "ffd8ff"
    assert out["type"] == "image/jpeg"


def test_stream_uris_play_and_media2_only_camera_has_no_ver10_media(
    lan: Lan, farm: tuple[OnvifPeer, dict[str, CameraSpec]]
) -> None:
    peer, cams = farm
    code = """
gen, axis = ARGS["generic"], ARGS["axis"]
setup = ("<trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream><tt:Transport><tt:Protocol>RTSP</tt:Protocol>"
         "</tt:Transport></trt:StreamSetup><trt:ProfileToken>MainStream</trt:ProfileToken>")
media1 = gen.replace("device_service", "media_service")
_, _, d1 = req(media1, envelope(f"<trt:GetStreamUri>{setup}</trt:GetStreamUri>"))
uri1 = fromstring(d1).findtext(f".//{{{TT}}}Uri")
_, _, dp = req(media1, envelope("<trt:GetProfiles/>"))
enc = fromstring(dp).find(f".//{{{TT}}}VideoEncoderConfiguration")
profile = [enc.findtext(f"{{{TT}}}Encoding"), enc.findtext(f".//{{{TT}}}Width"),
           enc.findtext(f".//{{{TT}}}FrameRateLimit")]
bad = req(media1, envelope(f"<trt:GetStreamUri>{setup.replace('MainStream', 'nope')}</trt:GetStreamUri>"))
unknown = req(gen, envelope("<tds:SystemReboot/>"))

path = urllib.parse.urlsplit(axis).path
TR2 = "http://www.onvif.org/ver20/media/wsdl"
s, h, _ = req(axis, b"")
def call(url, op, nc):
    path = urllib.parse.urlsplit(url).path
    auth = digest(h["www-authenticate"], "admin", ARGS["pw"], "POST", path, nc=nc)
    status, _, data = req(url, envelope(op), {"Authorization": auth})
    return status, data
media2 = axis.replace("device_service", "media2_service")
get_uri = "<tr2:Protocol>RtspUnicast</tr2:Protocol><tr2:ProfileToken>profile_1_h265</tr2:ProfileToken>"
_, d2 = call(media2, f"<tr2:GetStreamUri>{get_uri}</tr2:GetStreamUri>", 1)
uri2 = fromstring(d2).findtext(f".//{{{TR2}}}Uri")
_, dp2 = call(media2, "<tr2:GetProfiles><tr2:Type>All</tr2:Type></tr2:GetProfiles>", 2)
enc2 = fromstring(dp2).find(f".//{{{TR2}}}VideoEncoder")
get_services = "<tds:IncludeCapability>false</tds:IncludeCapability>"
_, ds = call(axis, f"<tds:GetServices>{get_services}</tds:GetServices>", 3)
namespaces = [e.text for e in fromstring(ds).iter(f"{{{TDS}}}Namespace")]
_, dc = call(axis, "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>", 4)
v10_path = call(axis.replace("device_service", "media_service"), "<trt:GetProfiles/>", 5)[0]
v10_status, v10_data = call(axis, "<trt:GetProfiles/>", 6)
print(json.dumps({
    "uri1": uri1, "profile": profile, "bad": [bad[0], fault(bad[2])],
    "unknown": [unknown[0], fault(unknown[2])], "uri2": uri2,
    "enc2": [enc2.findtext(f"{{{TT}}}Encoding"), enc2.findtext(f".//{{{TT}}}Height")],
    "namespaces": namespaces, "media_caps": f"{{{TT}}}Media" in [e.tag for e in fromstring(dc).iter()],
    "v10": [v10_path, v10_status, fault(v10_data)],
}))
"""
    gen, axis = cams["generic"], cams["axis"]
    out = run_in_box(lan, code, {"generic": peer.xaddr(gen), "axis": peer.xaddr(axis), "pw": axis.password})
    assert out["uri1"] == gen.profiles[0].rtsp_uri
    assert out["profile"] == ["H264", "1280", "30"]
    assert out["bad"] == [400, ["Sender", "InvalidArgVal", "NoProfile"]]
    assert out["unknown"] == [500, ["Receiver", "ActionNotSupported"]]
    assert out["uri2"] == axis.profiles[0].rtsp_uri
    assert out["enc2"] == ["H265", "720"]
    assert "http://www.onvif.org/ver20/media/wsdl" in out["namespaces"]
    assert "http://www.onvif.org/ver10/media/wsdl" not in out["namespaces"]
    assert not out["media_caps"]
    assert out["v10"] == [404, 500, ["Receiver", "ActionNotSupported"]]
    # The URIs the cameras hand out really play (from the appliance's side of the LAN).
    for uri, codec, width in ((out["uri1"], "h264", 1280), (out["uri2"], "hevc", 1280)):
        r = subprocess.run(
            lan.cmd(lan.box, ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-select_streams", "v:0",
                              "-show_entries", "stream=codec_name,width", "-of", "json", uri]),
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        (stream,) = json.loads(r.stdout)["streams"]
        assert (stream["codec_name"], stream["width"]) == (codec, width)


def test_misbehaving_http_cameras(lan: Lan, farm: tuple[OnvifPeer, dict[str, CameraSpec]]) -> None:
    peer, cams = farm
    code = """
body = envelope("<tds:GetSystemDateAndTime/>")
status, _, bomb = req(ARGS["bomb"], body)
web = req(ARGS["web"], body)
u = urllib.parse.urlsplit(ARGS["hang"])
s = socket.create_connection((u.hostname, 80), timeout=2)
head = b"POST /onvif/device_service HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body)
s.sendall(head + body)
s.settimeout(1.0)
try:
    hang = s.recv(100).hex()
except socket.timeout:
    hang = "timeout"
print(json.dumps({"bomb": [status, "<!DOCTYPE" in bomb.decode(), "&lol9;" in bomb.decode()],
                  "web": [web[0], web[1]["content-type"]], "hang": hang}))
"""
    args = {k: peer.xaddr(cams[k]) for k in ("bomb", "web", "hang")}
    t0 = time.monotonic()
    out = run_in_box(lan, code, args)
    assert out == {"bomb": [200, True, True], "web": [404, "text/html; charset=utf-8"], "hang": "timeout"}
    assert time.monotonic() - t0 < 5


def test_hello_on_start_bye_on_stop(lan: Lan) -> None:
    cam = CameraSpec(
        ip=lan.camera_ips[39], uuid="5d3c7a10-0000-4000-8000-c0ffee0000ff", maker="uniview",
        profiles=[Profile("P", "p", "H264", 640, 360, 25, "rtsp://unused/")],
    )  # fmt: skip
    listen = f"""
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("239.255.255.250", 3702))
group = socket.inet_aton("239.255.255.250") + socket.inet_aton("{BOX_IP}")
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
s.settimeout(5.0)
print("LISTENING", flush=True)
out = []
while not out or not out[-1][0].endswith("/Bye"):
    data, addr = s.recvfrom(65535)
    root = fromstring(data)
    action = root.findtext(f".//{{{{{{WSA}}}}}}Action")
    out.append([action, root.findtext(f".//{{{{{{WSA}}}}}}Address"), addr[0]])
print(json.dumps(out))
"""
    proc = subprocess.Popen(
        lan.cmd(lan.box, [sys.executable, "-c", CLIENT + listen, "{}"]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "LISTENING"
        with OnvifPeer([cam], prefix=lan.cmd(lan.cams, [])) as peer:
            pass
        assert peer.exit_code == 0
        out, _ = proc.communicate(timeout=6)
    finally:
        proc.kill()
    wsd = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
    epr = f"urn:uuid:{cam.uuid}"
    assert json.loads(out.splitlines()[-1]) == [[f"{wsd}/Hello", epr, cam.ip], [f"{wsd}/Bye", epr, cam.ip]]


def test_misbehaving_udp_cameras(lan: Lan) -> None:
    specs = [
        CameraSpec(
            ip=lan.camera_ips[28 + i], uuid=f"5d3c7a10-0000-4000-8000-c0ffee0001{i:02d}", behaviour=b,
            profiles=[Profile("P", "p", "H264", 640, 360, 25, "rtsp://unused/")],
        )
        for i, b in enumerate(("garbage_udp", "bomb_udp", "huge_udp"))
    ]  # fmt: skip
    code = """
s = udp_socket()
mid = f"urn:uuid:{uuid.uuid4()}"
s.sendto(probe_xml(mid), ("239.255.255.250", 3702))
out = {}
for data, addr, _ in collect(s, 1.0):
    try:
        verdict = match_info(data)["relates_to"] == mid
    except Exception as e:
        verdict = type(e).__name__
    out[addr[0]] = [len(data), verdict]
print(json.dumps(out))
"""
    with OnvifPeer(specs, prefix=lan.cmd(lan.cams, []), max_delay_s=MAX_DELAY_S):
        out = run_in_box(lan, code, {})
    garbage, bomb, huge = (out[c.ip] for c in specs)
    assert garbage[1] in ("ParseError", "AttributeError")  # junk, or XML that is no ProbeMatches
    assert bomb[1] == "DTDForbidden" and bomb[0] < 4000
    assert huge[1] is True and 55_000 < huge[0] < 65_000
