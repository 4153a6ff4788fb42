"""A faithful simulated ONVIF camera farm: N cameras in one process, real WS-Discovery and SOAP on the wire.

Two halves live in this file:

* ``Profile``, ``CameraSpec`` and ``OnvifPeer``, the launcher the tests import (contract: the brief), and
* the farm itself, run as ``python tests/peers/onvif_camera.py --spec FILE --group-ip IP --max-delay S`` with
  the venv's python (asyncio + aiohttp + defusedxml). It prints exactly ``READY`` on stdout once every camera
  listens, logs to stderr, and on SIGTERM/SIGINT (or EOF on stdin with ``--watch-stdin``) multicasts a Bye per
  camera and exits 0.

What each camera does, modelled on the ONVIF Core spec, Profile S/T, WS-Discovery (2005/04) and SOAP-over-UDP,
and on captures of real cameras:

* WS-Discovery: a farm socket bound to 239.255.255.250:3702 (joined on ``--group-ip``) takes multicast Probes;
  each camera has its own socket on (ip, 3702) for directed Probes and for sending. A matching Probe gets a
  unicast ProbeMatches (after a random delay in [0, max_delay] when multicast) from the camera's address.
  Probes are parsed with defusedxml (no DTDs, no entities); anything else is ignored with a debug log.
* HTTP/SOAP 1.2 on (ip, port): device service, Media (ver10) and/or Media2 (ver20), a JPEG snapshot. Requests
  are dispatched on the SOAP body's first child (namespace + local name). Auth: WS-UsernameToken
  PasswordDigest checked against the camera's clock (real clock + ``clock_offset_s``, ±5 s) and/or HTTP Digest
  (RFC 7616, MD5, qop=auth).
* Makers differ the way real ones do: namespace prefixes, header order, XAddrs with an IPv6 link-local
  address, extra scopes, repeated UDP replies (SOAP-over-UDP UNICAST_UDP_REPEAT), snapshot paths, time zones.
* Misbehaviours (``behaviour``) make the hostile and broken cameras a client must survive.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import os
import random
import re
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape, quoteattr

HERE = Path(__file__).resolve()
EXIT_BIND_FAILED = 3

MAKERS = ("hikvision", "dahua", "axis", "reolink", "uniview", "generic")
MEDIA = ("media1", "media2", "both")
AUTHS = ("none", "wsse", "http_digest", "either")
PROBE_TYPES = ("both", "nvt_only")
BEHAVIOURS = (
    "normal", "soap_fault", "hang", "not_onvif", "garbage_udp", "bomb_udp", "bomb_http", "huge_udp",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Test side: the specs and the launcher.
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Profile:
    token: str  # e.g. "Profile_1" / "MainStream" (maker-specific)
    name: str  # e.g. "mainStream"
    encoding: str  # "H264" | "H265"
    width: int
    height: int
    fps: int
    rtsp_uri: str  # what GetStreamUri returns, e.g. f"rtsp://{ip}:{rtsp_port}/h264_1080p"


@dataclass
class CameraSpec:
    ip: str
    uuid: str
    profiles: list[Profile]
    port: int = 80
    maker: str = "generic"
    model: str = "IPC-B140"
    firmware: str = "V5.7.3 build 220112"
    serial: str = "SN0000001"
    hardware_id: str = "88"
    name: str = "Shop Camera"
    location: str = "shop/front door"
    media: str = "media1"
    auth: str = "none"
    user: str = "admin"
    password: str = "cam:p@ss w0rd"
    clock_offset_s: float = 0.0
    probe_types: str = "both"
    behaviour: str = "normal"

    def __post_init__(self) -> None:
        for attr, allowed in (
            ("maker", MAKERS), ("media", MEDIA), ("auth", AUTHS), ("probe_types", PROBE_TYPES),
            ("behaviour", BEHAVIOURS),
        ):  # fmt: skip
            if getattr(self, attr) not in allowed:
                raise ValueError(f"CameraSpec.{attr}={getattr(self, attr)!r}: want one of {allowed}")
        self.profiles = [p if isinstance(p, Profile) else Profile(**p) for p in self.profiles]
        if not self.profiles:
            raise ValueError(f"camera {self.ip}: no profiles")
        for p in self.profiles:
            if p.encoding not in ("H264", "H265"):
                raise ValueError(f"profile {p.token}: encoding {p.encoding!r}")


# The farm multicasts (Hello, Bye) and answers whoever probes: it may only live on loopback or on the test LAN
# of tests/lan.py (10.231.0.0/24, inside network namespaces), never on a real interface.
_TEST_LAN = ipaddress.ip_network("10.231.0.0/24")


def check_safe_address(ip: str) -> None:
    addr = ipaddress.ip_address(ip)
    if not (addr.is_loopback or addr in _TEST_LAN):
        raise ValueError(f"{ip}: the ONVIF farm runs only on loopback or the test LAN {_TEST_LAN}")


def xaddr_of(cam: CameraSpec) -> str:
    port = "" if cam.port == 80 else f":{cam.port}"
    return f"http://{cam.ip}{port}/onvif/device_service"


class OnvifPeer:
    """Runs the farm in a subprocess (``prefix`` e.g. ``lan.cmd(lan.cams, [])`` to run it in a namespace)."""

    def __init__(
        self,
        cameras: list[CameraSpec],
        *,
        prefix: Sequence[str] = (),
        group_ip: str = "10.231.0.2",
        log: IO[str] | None = None,
        max_delay_s: float = 0.5,
    ) -> None:
        ips = [c.ip for c in cameras]
        for ip in [*ips, group_ip]:
            check_safe_address(ip)
        if len(set(ips)) != len(ips):
            raise ValueError(f"two cameras share an address: {ips}")
        self.cameras = list(cameras)
        self.prefix = tuple(prefix)
        self.group_ip = group_ip
        self.max_delay_s = max_delay_s
        self._log = log
        self._proc: subprocess.Popen[str] | None = None
        self._spec_path: Path | None = None
        self.exit_code: int | None = None  # of the last process stopped

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self.running else None

    def xaddr(self, cam: CameraSpec) -> str:
        return xaddr_of(cam)

    def start(self, timeout: float = 20.0) -> None:
        """Returns once every camera listens (each has multicast its Hello); raises if the farm fails."""
        if self.running:
            return
        fd, name = tempfile.mkstemp(prefix="onvif-farm-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"cameras": [dataclasses.asdict(c) for c in self.cameras]}, f)
        self._spec_path = Path(name)
        cmd = [
            *self.prefix, sys.executable, str(HERE), "--spec", name, "--group-ip", self.group_ip,
            "--max-delay", str(self.max_delay_s), "--watch-stdin",
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
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                break
            if proc.poll() is not None:
                break
        if line.strip() == "READY":
            self._proc = proc
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        code = _reap(proc)
        self._remove_spec()
        raise RuntimeError(f"ONVIF farm failed to start: exit code {code}, stdout {line!r}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM: each camera multicasts a Bye, then the farm exits (SIGKILL after ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
            self.exit_code = _reap(proc)
        self._remove_spec()

    def _remove_spec(self) -> None:
        if self._spec_path is not None:
            self._spec_path.unlink(missing_ok=True)
            self._spec_path = None

    def __enter__(self) -> OnvifPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reap(proc: subprocess.Popen[str]) -> int:
    code = proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
    return code


# ----------------------------------------------------------------------------------------------------------
# Farm side: namespaces and maker shapes.
# ----------------------------------------------------------------------------------------------------------

SOAP_ENV = "http://www.w3.org/2003/05/soap-envelope"
SOAP_ENC = "http://www.w3.org/2003/05/soap-encoding"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
DN = "http://www.onvif.org/ver10/network/wsdl"
TDS = "http://www.onvif.org/ver10/device/wsdl"
TRT = "http://www.onvif.org/ver10/media/wsdl"
TR2 = "http://www.onvif.org/ver20/media/wsdl"
TT = "http://www.onvif.org/ver10/schema"
TER = "http://www.onvif.org/ver10/error"
TEV = "http://www.onvif.org/ver10/events/wsdl"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSD = "http://www.w3.org/2001/XMLSchema"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest"
)
ANONYMOUS = f"{WSA}/role/anonymous"
DISCOVERY_URN = "urn:schemas-xmlsoap-org:ws:2005:04:discovery"
MULTICAST_GROUP = "239.255.255.250"
WSD_PORT = 3702
RFC3986 = f"{WSD}/rfc3986"
STRCMP0 = f"{WSD}/strcmp0"
CLOCK_TOLERANCE_S = 5.0
HUGE_DATAGRAM_BYTES = 60_000
ONVIF_SCOPE = "onvif://www.onvif.org"
# Device-service operations the ONVIF Core spec lets anyone call (PRE_AUTH).
PRE_AUTH = frozenset(
    {"GetSystemDateAndTime", "GetWsdlUrl", "GetServices", "GetServiceCapabilities", "GetEndpointReference"}
)

# A 32x24 baseline JPEG (ffmpeg's colour source), served as every snapshot.
SNAPSHOT_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAgAAAQABAAD//gAQTGF2YzU5LjM3LjEwMAD/2wBDAAgUFBcUFxsbGxsbGyAeICEhISAgICAhISEkJCQqKiok"
    "JCQhISQkKCgqKi4vLisrKisvLzIyMjw8OTlGRkhWVmf/xABNAAEBAAAAAAAAAAAAAAAAAAAABgEBAQEAAAAAAAAAAAAAAAAAAAUG"
    "EAEAAAAAAAAAAAAAAAAAAAAAEQEAAAAAAAAAAAAAAAAAAAAA/8AAEQgAGAAgAwEiAAIRAAMRAP/aAAwDAQACEQMRAD8AlwGoQQAA"
    "AAAH/9k="
)

# The classic billion laughs: ~1 KB that expands to ~3 GB in a parser that expands entities.
BOMB_DTD = (
    '<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    + "]>"
)


@dataclass(frozen=True)
class Shape:
    """How one maker's firmware writes its messages (all valid; only the shape differs)."""

    env: str  # SOAP envelope prefix
    wsa: str
    wsd: str  # "" = discovery elements in a default namespace declared where used (WCF style)
    dn: str
    tds: str
    types_local: bool  # the Types QName prefixes are declared on the Types element itself
    header_order: tuple[str, ...]
    must_understand: bool
    message_id_prefix: str
    extra_scopes: tuple[str, ...]
    ipv6_xaddr: bool
    udp_repeat: int  # extra copies of each unicast reply (SOAP-over-UDP UNICAST_UDP_REPEAT)
    metadata_version: int
    extra_xmlns: str
    server: str
    realm: str  # HTTP Digest realm, formatted with the serial
    tz: str
    tz_hours: int
    snapshot: str  # path?query, formatted with token / index / width / height
    encoder_token: str


_GSOAP_NS = f'xmlns:SOAP-ENC="{SOAP_ENC}" xmlns:xsi="{XSI}" xmlns:xsd="{XSD}"'
_STD_ORDER = ("MessageID", "RelatesTo", "To", "Action", "AppSequence")
# fmt: off
SHAPES: dict[str, Shape] = {
    "hikvision": Shape(
        env="env", wsa="wsa", wsd="d", dn="dn", tds="tds", types_local=False, header_order=_STD_ORDER,
        must_understand=False, message_id_prefix="urn:uuid:",
        extra_scopes=("onvif://www.onvif.org/Profile/G", "onvif://www.onvif.org/Profile/T"), ipv6_xaddr=True,
        udp_repeat=0, metadata_version=10,
        extra_xmlns=f'xmlns:soapenc="{SOAP_ENC}" xmlns:xsi="{XSI}" xmlns:xs="{XSD}" xmlns:tt="{TT}"',
        server="App-webs/", realm="IP Camera({serial})", tz="CST-8:00:00", tz_hours=8,
        snapshot="/onvif-http/snapshot?{token}", encoder_token="VideoEncoderToken_{n}",
    ),
    "dahua": Shape(
        env="SOAP-ENV", wsa="wsa", wsd="wsdd", dn="dn", tds="tds", types_local=False, header_order=_STD_ORDER,
        must_understand=True, message_id_prefix="urn:uuid:",
        extra_scopes=(f"{ONVIF_SCOPE}/type/Network_Video_Transmitter", f"{ONVIF_SCOPE}/Profile/T",
                      f"{ONVIF_SCOPE}/extension/unique_identifier/1"),
        ipv6_xaddr=False, udp_repeat=1, metadata_version=1, extra_xmlns=_GSOAP_NS, server="Webs",
        realm="Login to {serial}", tz="GMT-08:00", tz_hours=8,
        snapshot="/onvifsnapshot/media_service/snapshot?channel=1&subtype={index}", encoder_token="{n}",
    ),
    "axis": Shape(
        env="SOAP-ENV", wsa="wsa", wsd="d", dn="dn", tds="tds", types_local=False,
        header_order=("Action", "MessageID", "RelatesTo", "To", "AppSequence"), must_understand=True,
        message_id_prefix="uuid:",
        extra_scopes=(f"{ONVIF_SCOPE}/type/audio_encoder", f"{ONVIF_SCOPE}/Profile/G",
                      f"{ONVIF_SCOPE}/Profile/T"),
        ipv6_xaddr=False, udp_repeat=0, metadata_version=1,
        extra_xmlns=f'{_GSOAP_NS} xmlns:wsu="{WSU}" xmlns:wsse="{WSSE}"', server="Apache",
        realm="AXIS_{serial}", tz="CET-1", tz_hours=1,
        snapshot="/onvif-cgi/jpg/image.cgi?resolution={width}x{height}&compression=30",
        encoder_token="default_{n}_h264",
    ),
    "reolink": Shape(
        env="SOAP-ENV", wsa="wsa", wsd="wsdd", dn="dn", tds="tds", types_local=False,
        header_order=("MessageID", "RelatesTo", "To", "Action", "AppSequence"), must_understand=True,
        message_id_prefix="uuid:", extra_scopes=("onvif://www.onvif.org/Profile/T",), ipv6_xaddr=False,
        udp_repeat=0, metadata_version=1, extra_xmlns=_GSOAP_NS, server="nginx", realm="{serial}", tz="UTC0",
        tz_hours=0, snapshot="/cgi-bin/api.cgi?cmd=onvifSnapPic&channel=0&stream={index}",
        encoder_token="000{n}",
    ),
    "uniview": Shape(
        env="SOAP-ENV", wsa="wsa", wsd="wsdd", dn="tdn", tds="tds", types_local=False,
        header_order=("To", "Action", "MessageID", "RelatesTo", "AppSequence"), must_understand=True,
        message_id_prefix="urn:uuid:",
        extra_scopes=("onvif://www.onvif.org/Profile/T", "onvif://www.onvif.org/Profile/G"), ipv6_xaddr=False,
        udp_repeat=0, metadata_version=1, extra_xmlns=_GSOAP_NS, server="Hydra/1.0", realm="{serial}",
        tz="CST-8", tz_hours=8, snapshot="/images/snapshot.jpg?stream={index}",
        encoder_token="VideoEncoder_{n}",
    ),
    "generic": Shape(
        env="s", wsa="a", wsd="", dn="dp0", tds="dp1", types_local=True,
        header_order=("Action", "MessageID", "To", "RelatesTo", "AppSequence"), must_understand=True,
        message_id_prefix="urn:uuid:", extra_scopes=(), ipv6_xaddr=False, udp_repeat=0, metadata_version=2,
        extra_xmlns="", server="gSOAP/2.8", realm="ONVIF {serial}", tz="GMT0", tz_hours=0,
        snapshot="/onvif/snapshot?token={token}", encoder_token="VEC_{n}",
    ),
}
# fmt: on

log = logging.getLogger("onvif_camera")


def _q(prefix: str, local: str) -> str:
    return f"{prefix}:{local}" if prefix else local


def _xml_now(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------------------------------------
# WS-Discovery: parsing probes (namespace-aware, QNames resolved with the in-scope prefixes).
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DiscoveryMessage:
    action: str
    message_id: str
    body_tag: str  # "{ns}local" of the body's first child
    types: list[tuple[str, str]] | None = None  # resolved QNames; None = no Types element
    scopes: list[str] | None = None
    match_by: str = RFC3986
    resolve_address: str | None = None


class Unparsable(ValueError):
    pass


def parse_discovery(data: bytes) -> DiscoveryMessage:
    """Bytes -> message, or ``Unparsable`` for junk, DTDs, entities, wrong structure."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse

    scopes_stack: list[dict[str, str]] = [{}]
    pending: dict[str, str] = {}
    types_ns: dict[str, str] | None = None
    root: Element | None = None
    try:
        for event, item in iterparse(
            io.BytesIO(data), events=("start-ns", "start", "end"), forbid_dtd=True, forbid_entities=True
        ):
            if event == "start-ns":
                prefix, uri = item
                pending[prefix] = uri
            elif event == "start":
                scope = {**scopes_stack[-1], **pending} if pending else scopes_stack[-1]
                pending = {}
                scopes_stack.append(scope)
                if root is None:
                    root = item
                if item.tag == f"{{{WSD}}}Types":
                    types_ns = scope
            else:
                scopes_stack.pop()
    except (ParseError, DefusedXmlException, ValueError, UnicodeError) as e:
        raise Unparsable(f"not XML: {type(e).__name__}: {e}") from None
    if root is None or root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise Unparsable("not a SOAP 1.2 envelope")
    header = root.find(f"{{{SOAP_ENV}}}Header")
    body = root.find(f"{{{SOAP_ENV}}}Body")
    if header is None or body is None or len(body) == 0:
        raise Unparsable("no header or empty body")
    msg = DiscoveryMessage(
        action=(header.findtext(f"{{{WSA}}}Action") or "").strip(),
        message_id=(header.findtext(f"{{{WSA}}}MessageID") or "").strip(),
        body_tag=body[0].tag,
    )
    first = body[0]
    types_el = first.find(f"{{{WSD}}}Types")
    if types_el is not None:
        msg.types = []
        for qname in (types_el.text or "").split():
            prefix, _, local = qname.rpartition(":")
            ns = (types_ns or {}).get(prefix)
            if ns is None and prefix:
                raise Unparsable(f"undeclared prefix in Types: {qname!r}")
            msg.types.append((ns or "", local))
    scopes_el = first.find(f"{{{WSD}}}Scopes")
    if scopes_el is not None:
        msg.scopes = (scopes_el.text or "").split()
        msg.match_by = scopes_el.get("MatchBy", RFC3986)
    msg.resolve_address = first.findtext(f"{{{WSA}}}EndpointReference/{{{WSA}}}Address")
    return msg


def scope_matches(probe_scope: str, cam_scope: str, match_by: str) -> bool:
    if match_by == STRCMP0:
        return probe_scope == cam_scope
    if match_by != RFC3986:
        return False  # a rule we don't support matches nothing
    p, c = urllib.parse.urlsplit(probe_scope), urllib.parse.urlsplit(cam_scope)
    if p.scheme.lower() != c.scheme.lower() or p.netloc.lower() != c.netloc.lower():
        return False
    p_segs = [s for s in p.path.split("/") if s]
    c_segs = [s for s in c.path.split("/") if s]
    return c_segs[: len(p_segs)] == p_segs


# ----------------------------------------------------------------------------------------------------------
# One camera.
# ----------------------------------------------------------------------------------------------------------


class Camera:
    def __init__(self, spec: CameraSpec, instance_id: int, max_delay_s: float) -> None:
        self.spec = spec
        self.shape = SHAPES[spec.maker]
        self.instance_id = instance_id
        self.max_delay_s = max_delay_s
        self.message_number = 0
        self.udp: asyncio.DatagramTransport | None = None
        self.seen_probes: OrderedDict[str, None] = OrderedDict()
        self.nonces: OrderedDict[str, set[int]] = OrderedDict()  # HTTP Digest nonce -> nc values seen
        self.realm = self.shape.realm.format(serial=spec.serial)
        port = "" if spec.port == 80 else f":{spec.port}"
        self.base_url = f"http://{spec.ip}{port}"

    # -- identity -----------------------------------------------------------------------------------------
    @property
    def epr(self) -> str:
        return f"urn:uuid:{self.spec.uuid}"

    def type_set(self) -> set[tuple[str, str]]:
        if self.spec.probe_types == "nvt_only":
            return {(DN, "NetworkVideoTransmitter")}
        return {(DN, "NetworkVideoTransmitter"), (TDS, "Device")}

    def scopes(self) -> list[str]:
        s = self.spec

        def enc(v: str) -> str:
            return urllib.parse.quote(v, safe="")

        base = {
            "type": f"{ONVIF_SCOPE}/type/video_encoder",
            "streaming": f"{ONVIF_SCOPE}/Profile/Streaming",
            "name": f"{ONVIF_SCOPE}/name/{enc(s.name)}",
            "hardware": f"{ONVIF_SCOPE}/hardware/{enc(s.model)}",
            "location": f"{ONVIF_SCOPE}/location/{enc(s.location)}",
        }
        order = ("location", "name", "hardware", "streaming", "type") if s.maker == "dahua" else tuple(base)
        return [base[k] for k in order] + list(self.shape.extra_scopes)

    def xaddrs(self) -> list[str]:
        out = [xaddr_of(self.spec)]
        if self.shape.ipv6_xaddr:
            tail = self.spec.uuid.replace("-", "")[-12:]
            port = "" if self.spec.port == 80 else f":{self.spec.port}"
            out.append(f"http://[fe80::{tail[0:4]}:{tail[4:8]}:{tail[8:12]}]{port}/onvif/device_service")
        return out

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.spec.clock_offset_s)

    # -- WS-Discovery -------------------------------------------------------------------------------------
    def matches(self, msg: DiscoveryMessage) -> bool:
        if msg.types is not None and not set(msg.types) <= self.type_set():
            return False
        if msg.scopes:
            mine = self.scopes()
            return all(any(scope_matches(p, c, msg.match_by) for c in mine) for p in msg.scopes)
        return True

    def envelope(self, action: str, body: str, *, to: str, relates_to: str | None = None) -> bytes:
        sh = self.shape
        self.message_number += 1
        mu = f' {sh.env}:mustUnderstand="true"' if sh.must_understand else ""
        d_decl = f' xmlns="{WSD}"' if not sh.wsd else ""
        parts = {
            "MessageID": f"<{sh.wsa}:MessageID>{sh.message_id_prefix}{uuid.uuid4()}</{sh.wsa}:MessageID>",
            "RelatesTo": f"<{sh.wsa}:RelatesTo>{escape(relates_to)}</{sh.wsa}:RelatesTo>"
            if relates_to
            else "",
            "To": f"<{sh.wsa}:To{mu}>{to}</{sh.wsa}:To>",
            "Action": f"<{sh.wsa}:Action{mu}>{WSD}/{action}</{sh.wsa}:Action>",
            "AppSequence": f'<{_q(sh.wsd, "AppSequence")}{d_decl} InstanceId="{self.instance_id}" '
            f'MessageNumber="{self.message_number}"/>',
        }
        header = "".join(parts[k] for k in sh.header_order)
        decls = [f'xmlns:{sh.env}="{SOAP_ENV}"', f'xmlns:{sh.wsa}="{WSA}"']
        if sh.wsd:
            decls.append(f'xmlns:{sh.wsd}="{WSD}"')
        if not sh.types_local:
            decls += [f'xmlns:{sh.dn}="{DN}"', f'xmlns:{sh.tds}="{TDS}"']
        if sh.extra_xmlns:
            decls.append(sh.extra_xmlns)
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<{sh.env}:Envelope {" ".join(decls)}>'
            f"<{sh.env}:Header>{header}</{sh.env}:Header><{sh.env}:Body>{body}</{sh.env}:Body>"
            f"</{sh.env}:Envelope>"
        ).encode()

    def match_content(self, scopes: list[str] | None = None) -> str:
        sh = self.shape
        d = sh.wsd
        types = f"{sh.dn}:NetworkVideoTransmitter"
        if self.spec.probe_types == "both":
            types += f" {sh.tds}:Device"
        tdecl = f' xmlns:{sh.dn}="{DN}" xmlns:{sh.tds}="{TDS}"' if sh.types_local else ""
        scope_text = escape(" ".join(scopes if scopes is not None else self.scopes()))
        return (
            f"{self.epr_xml()}<{_q(d, 'Types')}{tdecl}>{types}</{_q(d, 'Types')}>"
            f"<{_q(d, 'Scopes')}>{scope_text}</{_q(d, 'Scopes')}>"
            f"<{_q(d, 'XAddrs')}>{escape(' '.join(self.xaddrs()))}</{_q(d, 'XAddrs')}>"
            f"<{_q(d, 'MetadataVersion')}>{sh.metadata_version}</{_q(d, 'MetadataVersion')}>"
        )

    def wrap(self, element: str, inner: str, *, outer: bool = True) -> str:
        """A discovery element; WCF-style shapes declare the default namespace on the outermost one."""
        d = self.shape.wsd
        decl = f' xmlns="{WSD}"' if not d and outer else ""
        return f"<{_q(d, element)}{decl}>{inner}</{_q(d, element)}>"

    def probe_matches(self, relates_to: str) -> bytes:
        b = self.spec.behaviour
        if b == "garbage_udp":
            return junk_datagram()
        if b == "bomb_udp":
            return self.bomb_matches(relates_to)
        scopes = self.scopes()
        if b == "huge_udp":  # a firmware that stuffs ~60 KB of scopes into one (IP-fragmented) datagram
            room = HUGE_DATAGRAM_BYTES - len(self.match_reply(relates_to, scopes))
            scopes += [f"{ONVIF_SCOPE}/extension/padding/{i:05d}/{'x' * 40}" for i in range(room // 88)]
        return self.match_reply(relates_to, scopes)

    def match_reply(self, relates_to: str, scopes: list[str]) -> bytes:
        match = self.wrap("ProbeMatch", self.match_content(scopes), outer=False)
        return self.envelope(
            "ProbeMatches", self.wrap("ProbeMatches", match), to=ANONYMOUS, relates_to=relates_to
        )

    def bomb_matches(self, relates_to: str) -> bytes:
        xml = self.match_reply(relates_to, self.scopes()).decode()
        decl, _, rest = xml.partition("\n")
        rest = rest.replace("onvif://www.onvif.org/type/video_encoder", "&lol9;", 1)
        return f"{decl}\n{BOMB_DTD}\n{rest}".encode()

    def hello(self) -> bytes:
        if self.spec.behaviour == "garbage_udp":
            return junk_datagram()
        if self.spec.behaviour == "bomb_udp":
            return f'<?xml version="1.0"?>\n{BOMB_DTD}\n<lolz>&lol9;</lolz>'.encode()
        return self.envelope("Hello", self.wrap("Hello", self.match_content()), to=DISCOVERY_URN)

    def bye(self) -> bytes:
        return self.envelope("Bye", self.wrap("Bye", self.epr_xml()), to=DISCOVERY_URN)

    def epr_xml(self) -> str:
        a = self.shape.wsa
        return f"<{a}:EndpointReference><{a}:Address>{self.epr}</{a}:Address></{a}:EndpointReference>"

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.udp is None or self.udp.is_closing():
            return
        try:
            self.udp.sendto(data, addr)
        except OSError as e:
            log.info("%s: cannot send %d bytes to %s: %s", self.spec.ip, len(data), addr, e)

    def multicast(self, data: bytes) -> None:
        self.send(data, (MULTICAST_GROUP, WSD_PORT))

    def on_discovery(self, msg: DiscoveryMessage, addr: tuple[str, int], *, multicast: bool) -> None:
        """Called on the loop for every parsed discovery message meant for this camera."""
        if msg.body_tag == f"{{{WSD}}}Probe":
            reply_kind = "ProbeMatches"
            if not self.matches(msg):
                log.debug("%s: probe %s from %s does not match", self.spec.ip, msg.message_id, addr)
                return
        elif msg.body_tag == f"{{{WSD}}}Resolve":
            reply_kind = "ResolveMatches"
            if msg.resolve_address != self.epr:
                return
        else:
            return  # Hello/Bye/ProbeMatches from others (or our own, looped back)
        if not msg.message_id:
            log.debug("%s: %s without MessageID from %s ignored", self.spec.ip, reply_kind, addr)
            return
        # SOAP-over-UDP senders repeat messages with the same MessageID: answer the first only.
        if msg.message_id in self.seen_probes:
            return
        self.seen_probes[msg.message_id] = None
        if len(self.seen_probes) > 256:
            self.seen_probes.popitem(last=False)
        if reply_kind == "ProbeMatches":
            data = self.probe_matches(msg.message_id)
        else:
            inner = self.wrap("ResolveMatch", self.match_content(), outer=False)
            data = self.envelope(
                "ResolveMatches", self.wrap("ResolveMatches", inner), to=ANONYMOUS, relates_to=msg.message_id
            )
        delay = random.uniform(0.0, self.max_delay_s) if multicast else 0.0
        log.info(
            "%s: %s to %s in %.0f ms (%d bytes)", self.spec.ip, reply_kind, addr, delay * 1000, len(data)
        )
        loop = asyncio.get_running_loop()
        for i in range(1 + self.shape.udp_repeat):
            loop.call_later(delay + 0.05 * i, self.send, data, addr)


def junk_datagram() -> bytes:
    kind = random.randrange(4)
    if kind == 0:
        return os.urandom(random.randint(1, 1400))
    if kind == 1:
        return (
            b'<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="'
            + SOAP_ENV.encode()
            + b'"><env:Bo'
        )
    if kind == 2:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    return b"\xff\xfe<\x00?\x00x\x00m\x00l\x00" + os.urandom(64)


# ----------------------------------------------------------------------------------------------------------
# HTTP/SOAP.
# ----------------------------------------------------------------------------------------------------------


class SoapFault(Exception):
    def __init__(self, code: str, subcodes: Sequence[str], reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.code = code  # "Sender" | "Receiver" | "VersionMismatch"
        self.subcodes = list(subcodes)  # ter: local names, outermost first
        self.reason = reason
        self.status = status if status is not None else (500 if code == "Receiver" else 400)


def _text(el: Element | None, local: str) -> str | None:
    """The text of the first descendant named ``local`` in any namespace (cameras are lenient here)."""
    if el is None:
        return None
    for sub in el.iter():
        if sub.tag.rpartition("}")[2] == local and sub is not el:
            return (sub.text or "").strip()
    return None


def _texts(el: Element, local: str) -> list[str]:
    return [(s.text or "").strip() for s in el if s.tag.rpartition("}")[2] == local]


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()  # HTTP Digest MD5: what cameras speak


_DIGEST_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))')


class SoapService:
    """The HTTP side of one camera."""

    def __init__(self, cam: Camera) -> None:
        self.cam = cam
        self.spec = cam.spec
        self.sh = cam.shape

    # -- envelopes ----------------------------------------------------------------------------------------
    def envelope(self, body: str, dtd: str = "") -> bytes:
        e = self.sh.env
        decls = (
            f'xmlns:{e}="{SOAP_ENV}" xmlns:xsi="{XSI}" xmlns:xsd="{XSD}" xmlns:tt="{TT}" xmlns:tds="{TDS}" '
            f'xmlns:trt="{TRT}" xmlns:tr2="{TR2}" xmlns:ter="{TER}"'
        )
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n{dtd}<{e}:Envelope {decls}><{e}:Body>{body}</{e}:Body>'
            f"</{e}:Envelope>"
        ).encode()

    def fault_body(self, f: SoapFault) -> str:
        e = self.sh.env
        sub = ""
        for s in reversed(f.subcodes):
            sub = f"<{e}:Subcode><{e}:Value>ter:{s}</{e}:Value>{sub}</{e}:Subcode>"
        return (
            f"<{e}:Fault><{e}:Code><{e}:Value>{e}:{f.code}</{e}:Value>{sub}</{e}:Code>"
            f'<{e}:Reason><{e}:Text xml:lang="en">{escape(f.reason)}</{e}:Text></{e}:Reason></{e}:Fault>'
        )

    # -- auth ---------------------------------------------------------------------------------------------
    def challenge(self, stale: bool = False) -> str:
        nonce = secrets.token_hex(16)
        self.cam.nonces[nonce] = set()
        while len(self.cam.nonces) > 512:
            self.cam.nonces.popitem(last=False)
        st = ", stale=TRUE" if stale else ""
        return f'Digest realm="{self.cam.realm}", qop="auth", nonce="{nonce}", algorithm=MD5{st}'

    def check_digest(self, authorization: str | None, method: str, raw_uri: str) -> tuple[str, bool]:
        """-> ("ok" | "absent" | "bad", stale)."""
        if not authorization or not authorization.lower().startswith("digest "):
            return "absent", False
        p = {
            m[1].lower(): (m[2] if m[2] is not None else m[3]) for m in _DIGEST_PARAM.finditer(authorization)
        }
        try:
            user, nonce, uri, nc_s = p["username"], p["nonce"], p["uri"], p["nc"]
            cnonce, qop, response, realm = p["cnonce"], p["qop"], p["response"], p["realm"]
            nc = int(nc_s, 16)
        except (KeyError, ValueError):
            return "bad", False
        if p.get("algorithm", "MD5").upper() != "MD5" or qop != "auth" or realm != self.cam.realm:
            return "bad", False
        if user != self.spec.user or uri != raw_uri:
            return "bad", False
        ha1 = _md5(f"{self.spec.user}:{self.cam.realm}:{self.spec.password}")
        ha2 = _md5(f"{method}:{uri}")
        expected = _md5(f"{ha1}:{nonce}:{nc_s}:{cnonce}:{qop}:{ha2}")
        if not hmac.compare_digest(expected, response.lower()):
            return "bad", False
        seen = self.cam.nonces.get(nonce)
        if seen is None:
            return "bad", True  # right password, nonce we never gave (or forgot): stale
        if nc in seen:
            return "bad", False  # replay
        seen.add(nc)
        return "ok", False

    def check_wsse(self, header: Element | None) -> str:
        """-> "ok" | "absent" | "bad" for the WS-Security UsernameToken (PasswordDigest only)."""
        sec = header.find(f"{{{WSSE}}}Security") if header is not None else None
        tok = sec.find(f"{{{WSSE}}}UsernameToken") if sec is not None else None
        if tok is None:
            return "absent"
        pw = tok.find(f"{{{WSSE}}}Password")
        nonce_text = tok.findtext(f"{{{WSSE}}}Nonce")
        created = tok.findtext(f"{{{WSU}}}Created") or tok.findtext(f"{{{WSSE}}}Created")
        user = tok.findtext(f"{{{WSSE}}}Username")
        if pw is None or nonce_text is None or created is None or user != self.spec.user:
            return "bad"
        if pw.get("Type", PASSWORD_DIGEST) != PASSWORD_DIGEST:
            return "bad"  # PasswordText: not on this camera
        try:
            nonce = base64.b64decode(nonce_text.strip(), validate=True)
            when = dt.datetime.fromisoformat(created.strip())
        except ValueError:
            return "bad"
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        skew = abs((when - self.cam.now()).total_seconds())
        if skew > CLOCK_TOLERANCE_S:
            log.info("%s: WS-Security Created is %.1f s off the camera clock", self.spec.ip, skew)
            return "bad"
        digest = base64.b64encode(
            hashlib.sha1(nonce + created.strip().encode() + self.spec.password.encode()).digest()
        ).decode()
        return "ok" if hmac.compare_digest(digest, (pw.text or "").strip()) else "bad"

    # -- request handling ---------------------------------------------------------------------------------
    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        path = request.path
        if self.spec.behaviour == "not_onvif":
            return self.plain_web(request)
        if request.method == "GET" and path == "/":
            return web.Response(text=LOGIN_HTML, content_type="text/html", headers=self.headers())
        if request.method == "GET" and path == urllib.parse.urlsplit(self.sh.snapshot).path:
            return await self.snapshot(request)
        services = {"/onvif/device_service", "/onvif/event_service"}
        if self.spec.media in ("media1", "both"):
            services.add("/onvif/media_service")
        if self.spec.media in ("media2", "both"):
            services.add("/onvif/media2_service")
        if path not in services:
            return web.Response(
                status=404, text=NOT_FOUND_HTML, content_type="text/html", headers=self.headers()
            )
        if request.method != "POST":
            return web.Response(status=405, text="Method Not Allowed", headers=self.headers())
        body = await request.read()
        if self.spec.auth == "http_digest":
            denied = self.digest_gate(request)
            if denied is not None:
                return denied
        try:
            status, xml = self.soap(request, body)
        except SoapFault as f:
            log.info("%s %s: fault %s/%s: %s", self.spec.ip, path, f.code, f.subcodes, f.reason)
            status, xml = f.status, self.envelope(self.fault_body(f))
        except DigestChallenge as c:
            return self.unauthorized(c.stale)
        return web.Response(
            status=status,
            body=xml,
            content_type="application/soap+xml",
            charset="utf-8",
            headers=self.headers(),
        )

    def headers(self) -> dict[str, str]:
        return {"Server": self.sh.server}

    def digest_gate(self, request: Any) -> Any:
        verdict, stale = self.check_digest(
            request.headers.get("Authorization"), request.method, request.raw_path
        )
        if verdict == "ok":
            return None
        log.info("%s %s: HTTP digest %s", self.spec.ip, request.path, verdict)
        return self.unauthorized(stale)

    def unauthorized(self, stale: bool) -> Any:
        from aiohttp import web

        headers = {**self.headers(), "WWW-Authenticate": self.challenge(stale)}
        return web.Response(status=401, text=UNAUTHORIZED_HTML, content_type="text/html", headers=headers)

    def plain_web(self, request: Any) -> Any:
        """A router/NAS web UI on the camera's address: HTML, no SOAP."""
        from aiohttp import web

        headers = {"Server": "lighttpd/1.4.59"}
        if request.path in ("/", "/index.html") and request.method in ("GET", "HEAD"):
            return web.Response(text=LOGIN_HTML, content_type="text/html", headers=headers)
        if request.method in ("GET", "HEAD"):
            return web.Response(status=404, text=NOT_FOUND_HTML, content_type="text/html", headers=headers)
        if request.path == "/onvif/device_service":
            return web.Response(status=404, text=NOT_FOUND_HTML, content_type="text/html", headers=headers)
        return web.Response(status=405, text="<html><body>405 Method Not Allowed</body></html>",
                            content_type="text/html", headers=headers)  # fmt: skip

    async def snapshot(self, request: Any) -> Any:
        from aiohttp import web

        if self.spec.auth != "none":  # snapshots are plain GETs: cameras protect them with HTTP Digest
            denied = self.digest_gate(request)
            if denied is not None:
                return denied
        return web.Response(body=SNAPSHOT_JPEG, content_type="image/jpeg", headers=self.headers())

    def soap(self, request: Any, body: bytes) -> tuple[int, bytes]:
        from defusedxml import DefusedXmlException
        from defusedxml.ElementTree import fromstring

        try:
            root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except (ParseError, DefusedXmlException, ValueError) as e:
            raise SoapFault("Sender", ["WellFormed"], f"Well-formed Error: {type(e).__name__}") from None
        if root.tag != f"{{{SOAP_ENV}}}Envelope":
            raise SoapFault("VersionMismatch", [], "SOAP 1.2 envelope expected", status=500)
        header = root.find(f"{{{SOAP_ENV}}}Header")
        soap_body = root.find(f"{{{SOAP_ENV}}}Body")
        if soap_body is None or len(soap_body) == 0:
            raise SoapFault("Sender", ["InvalidArgs"], "empty Body")
        op_el = soap_body[0]
        ns, _, op = op_el.tag[1:].partition("}") if op_el.tag.startswith("{") else ("", "", op_el.tag)
        log.info("%s %s: {%s}%s", self.spec.ip, request.path, ns, op)
        if self.spec.behaviour == "bomb_http":
            inner = f"<{self.sh.env}:Bomb>&lol9;</{self.sh.env}:Bomb>"
            return 200, self.envelope(
                f'<tds:{op}Response xmlns:tds="{ns}">{inner}</tds:{op}Response>', BOMB_DTD
            )
        self.authorise(request, header, ns, op)
        handler = self.handlers().get((ns, op))
        if handler is None:
            raise SoapFault("Receiver", ["ActionNotSupported"], f"Optional Action Not Implemented: {op}")
        return 200, self.envelope(handler(op_el))

    def authorise(self, request: Any, header: Element | None, ns: str, op: str) -> None:
        auth = self.spec.auth
        digest_tried = stale = False
        if auth in ("none", "http_digest"):  # http_digest was checked before parsing
            return
        if auth == "either":
            verdict, stale = self.check_digest(
                request.headers.get("Authorization"), request.method, request.raw_path
            )
            if verdict == "ok":
                return
            digest_tried = verdict == "bad"
        if ns == TDS and op in PRE_AUTH:
            return
        ws = self.check_wsse(header)
        if ws == "ok":
            return
        if auth == "either" and ws == "absent":
            raise DigestChallenge(stale if digest_tried else False)
        raise SoapFault("Sender", ["NotAuthorized"], "Sender not Authorized")

    def handlers(self) -> dict[tuple[str, str], Callable[[Element], str]]:
        ops = DeviceOps(self.cam)
        table: dict[tuple[str, str], Callable[[Element], str]] = {
            (TDS, name): getattr(ops, name)
            for name in (
                "GetSystemDateAndTime", "GetDeviceInformation", "GetCapabilities", "GetServices", "GetScopes",
                "GetServiceCapabilities", "GetWsdlUrl", "GetEndpointReference", "GetHostname",
            )
        }  # fmt: skip
        if self.spec.media in ("media1", "both"):
            m1 = Media1Ops(self.cam)
            for name in ("GetProfiles", "GetProfile", "GetStreamUri", "GetSnapshotUri", "GetVideoSources",
                         "GetServiceCapabilities"):  # fmt: skip
                table[(TRT, name)] = getattr(m1, name)
        if self.spec.media in ("media2", "both"):
            m2 = Media2Ops(self.cam)
            for name in ("GetProfiles", "GetStreamUri", "GetSnapshotUri", "GetServiceCapabilities"):
                table[(TR2, name)] = getattr(m2, name)
        return table


class DigestChallenge(Exception):
    def __init__(self, stale: bool) -> None:
        super().__init__("digest challenge")
        self.stale = stale


LOGIN_HTML = (
    "<!DOCTYPE html><html><head><title>Login</title></head><body><form method='post' action='/login'>"
    "<input name='username'><input name='password' type='password'><button>Login</button></form>"
    "</body></html>"
)
NOT_FOUND_HTML = "<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1></body></html>"
UNAUTHORIZED_HTML = "<html><head><title>401 Unauthorized</title></head><body>401 Unauthorized</body></html>"


# ----------------------------------------------------------------------------------------------------------
# SOAP operations (replies in schema order; zeep-based clients parse them by sequence).
# ----------------------------------------------------------------------------------------------------------

MANUFACTURERS = {
    "hikvision": "HIKVISION", "dahua": "Dahua", "axis": "AXIS", "reolink": "Reolink", "uniview": "UNIVIEW",
    "generic": "IPCAM",
}  # fmt: skip
ONVIF_VERSION = "<tt:Major>2</tt:Major><tt:Minor>60</tt:Minor>"


def _child_text(req: Element, local: str) -> str | None:
    found = _texts(req, local)
    return found[0] if found else None


def _bool(v: bool) -> str:
    return "true" if v else "false"


class Ops:
    def __init__(self, cam: Camera) -> None:
        self.cam = cam
        self.spec = cam.spec
        self.sh = cam.shape

    def url(self, path: str) -> str:
        return self.cam.base_url + path

    def snapshot_uri(self, index: int, p: Profile) -> str:
        return self.url(
            self.sh.snapshot.format(
                token=urllib.parse.quote(p.token, safe=""), index=index, width=p.width, height=p.height
            )
        )

    def profile(self, token: str | None) -> tuple[int, Profile]:
        for i, p in enumerate(self.spec.profiles):
            if p.token == token:
                return i, p
        raise SoapFault("Sender", ["InvalidArgVal", "NoProfile"], f"Profile token does not exist: {token!r}")

    def source(self) -> Profile:
        return max(self.spec.profiles, key=lambda p: (p.width * p.height, p.fps))

    def encoder_token(self, i: int) -> str:
        return self.sh.encoder_token.format(n=i + 1)

    def bitrate_kbps(self, p: Profile) -> int:
        return max(256, p.width * p.height * p.fps // (20_000 if p.encoding == "H264" else 35_000))

    def source_config(self, tag: str) -> str:
        src = self.source()
        n = len(self.spec.profiles)
        return (
            f'<{tag} token="VideoSourceConfigToken"><tt:Name>VideoSourceConfig</tt:Name>'
            f"<tt:UseCount>{n}</tt:UseCount><tt:SourceToken>VideoSource_1</tt:SourceToken>"
            f'<tt:Bounds x="0" y="0" width="{src.width}" height="{src.height}"/></{tag}>'
        )


class DeviceOps(Ops):
    def GetSystemDateAndTime(self, req: Element) -> str:
        now = self.cam.now()
        local = now + dt.timedelta(hours=self.sh.tz_hours)

        def date_time(t: dt.datetime) -> str:
            return (
                f"<tt:Time><tt:Hour>{t.hour}</tt:Hour><tt:Minute>{t.minute}</tt:Minute>"
                f"<tt:Second>{t.second}</tt:Second></tt:Time><tt:Date><tt:Year>{t.year}</tt:Year>"
                f"<tt:Month>{t.month}</tt:Month><tt:Day>{t.day}</tt:Day></tt:Date>"
            )

        kind = "NTP" if self.spec.clock_offset_s == 0 else "Manual"
        return (
            f"<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>{kind}</tt:DateTimeType>"
            f"<tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>{self.sh.tz}</tt:TZ></tt:TimeZone>"
            f"<tt:UTCDateTime>{date_time(now)}</tt:UTCDateTime><tt:LocalDateTime>{date_time(local)}"
            f"</tt:LocalDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    def GetDeviceInformation(self, req: Element) -> str:
        s = self.spec
        return (
            f"<tds:GetDeviceInformationResponse><tds:Manufacturer>{MANUFACTURERS[s.maker]}</tds:Manufacturer>"
            f"<tds:Model>{escape(s.model)}</tds:Model><tds:FirmwareVersion>{escape(s.firmware)}"
            f"</tds:FirmwareVersion><tds:SerialNumber>{escape(s.serial)}</tds:SerialNumber>"
            f"<tds:HardwareId>{escape(s.hardware_id)}</tds:HardwareId></tds:GetDeviceInformationResponse>"
        )

    def GetCapabilities(self, req: Element) -> str:
        media1 = self.spec.media in ("media1", "both")
        sections = {
            "Device": (
                f"<tt:Device><tt:XAddr>{self.url('/onvif/device_service')}</tt:XAddr><tt:Network>"
                "<tt:IPFilter>false</tt:IPFilter><tt:ZeroConfiguration>false</tt:ZeroConfiguration>"
                "<tt:IPVersion6>false</tt:IPVersion6><tt:DynDNS>false</tt:DynDNS></tt:Network><tt:System>"
                "<tt:DiscoveryResolve>true</tt:DiscoveryResolve><tt:DiscoveryBye>true</tt:DiscoveryBye>"
                "<tt:RemoteDiscovery>false</tt:RemoteDiscovery><tt:SystemBackup>false</tt:SystemBackup>"
                "<tt:SystemLogging>false</tt:SystemLogging><tt:FirmwareUpgrade>false</tt:FirmwareUpgrade>"
                f"<tt:SupportedVersions>{ONVIF_VERSION}</tt:SupportedVersions></tt:System></tt:Device>"
            ),
            "Events": (
                f"<tt:Events><tt:XAddr>{self.url('/onvif/event_service')}</tt:XAddr>"
                "<tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>"
                "<tt:WSPullPointSupport>false</tt:WSPullPointSupport>"
                "<tt:WSPausableSubscriptionManagerInterfaceSupport>false"
                "</tt:WSPausableSubscriptionManagerInterfaceSupport></tt:Events>"
            ),
        }
        if media1:
            sections["Media"] = (
                f"<tt:Media><tt:XAddr>{self.url('/onvif/media_service')}</tt:XAddr><tt:StreamingCapabilities>"
                "<tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP>"
                "<tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP></tt:StreamingCapabilities></tt:Media>"
            )
        wanted = _texts(req, "Category") or ["All"]
        if "All" in wanted:
            chosen = list(sections)
        else:
            missing = [c for c in wanted if c not in sections]
            if missing:
                raise SoapFault(
                    "Receiver", ["ActionNotSupported", "NoSuchService"], f"No such service: {missing}"
                )
            chosen = wanted
        order = ("Device", "Events", "Media")  # the schema's sequence
        inner = "".join(sections[k] for k in order if k in chosen)
        caps = f"<tds:Capabilities>{inner}</tds:Capabilities>"
        return f"<tds:GetCapabilitiesResponse>{caps}</tds:GetCapabilitiesResponse>"

    def device_capabilities(self) -> str:
        auth = self.spec.auth
        return (
            '<tds:Network IPFilter="false" ZeroConfiguration="false" IPVersion6="false" DynDNS="false"/>'
            f'<tds:Security UsernameToken="{_bool(auth in ("none", "wsse", "either"))}" '
            f'HttpDigest="{_bool(auth in ("http_digest", "either"))}"/>'
            '<tds:System DiscoveryResolve="true" DiscoveryBye="true" RemoteDiscovery="false" '
            'SystemBackup="false" SystemLogging="false" FirmwareUpgrade="false"/>'
        )

    def GetServices(self, req: Element) -> str:
        include = (_child_text(req, "IncludeCapability") or "false").lower() in ("true", "1")
        entries = [
            (
                TDS,
                "/onvif/device_service",
                f"<tds:Capabilities>{self.device_capabilities()}</tds:Capabilities>",
            )
        ]
        if self.spec.media in ("media1", "both"):
            entries.append((TRT, "/onvif/media_service", Media1Ops(self.cam).capabilities()))
        if self.spec.media in ("media2", "both"):
            entries.append((TR2, "/onvif/media2_service", Media2Ops(self.cam).capabilities()))
        events_caps = (
            f'<tev:Capabilities xmlns:tev="{TEV}" WSSubscriptionPolicySupport="false" '
            'WSPullPointSupport="false" WSPausableSubscriptionManagerInterfaceSupport="false"/>'
        )
        entries.append((TEV, "/onvif/event_service", events_caps))
        out = []
        for ns, path, caps in entries:
            cap = f"<tds:Capabilities>{caps}</tds:Capabilities>" if include else ""
            out.append(
                f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{self.url(path)}</tds:XAddr>{cap}"
                f"<tds:Version>{ONVIF_VERSION}</tds:Version></tds:Service>"
            )
        return f"<tds:GetServicesResponse>{''.join(out)}</tds:GetServicesResponse>"

    def GetServiceCapabilities(self, req: Element) -> str:
        return (
            f"<tds:GetServiceCapabilitiesResponse><tds:Capabilities>{self.device_capabilities()}"
            "</tds:Capabilities></tds:GetServiceCapabilitiesResponse>"
        )

    def GetScopes(self, req: Element) -> str:
        items = []
        for scope in self.cam.scopes():
            kind = "Configurable" if "/name/" in scope or "/location/" in scope else "Fixed"
            items.append(
                f"<tds:Scopes><tt:ScopeDef>{kind}</tt:ScopeDef><tt:ScopeItem>{escape(scope)}</tt:ScopeItem></tds:Scopes>"
            )
        return f"<tds:GetScopesResponse>{''.join(items)}</tds:GetScopesResponse>"

    def GetWsdlUrl(self, req: Element) -> str:
        return "<tds:GetWsdlUrlResponse><tds:WsdlUrl>http://www.onvif.org/</tds:WsdlUrl></tds:GetWsdlUrlResponse>"

    def GetEndpointReference(self, req: Element) -> str:
        guid = f"<tds:GUID>{self.cam.epr}</tds:GUID>"
        return f"<tds:GetEndpointReferenceResponse>{guid}</tds:GetEndpointReferenceResponse>"

    def GetHostname(self, req: Element) -> str:
        name = escape(re.sub(r"[^A-Za-z0-9-]", "-", self.spec.name))
        return (
            "<tds:GetHostnameResponse><tds:HostnameInformation><tt:FromDHCP>false</tt:FromDHCP>"
            f"<tt:Name>{name}</tt:Name></tds:HostnameInformation></tds:GetHostnameResponse>"
        )


def _media_uri(uri: str) -> str:
    return (
        f"<tt:Uri>{escape(uri)}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
        "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout>"
    )


class Media1Ops(Ops):
    """Media ver10 (trt)."""

    def capabilities(self) -> str:
        return (
            '<trt:Capabilities SnapshotUri="true" Rotation="false" VideoSourceMode="false" OSD="false">'
            f'<trt:ProfileCapabilities MaximumNumberOfProfiles="{len(self.spec.profiles)}"/>'
            '<trt:StreamingCapabilities RTPMulticast="false" RTP_TCP="true" RTP_RTSP_TCP="true" '
            'NonAggregateControl="false" NoRTSPStreaming="false"/></trt:Capabilities>'
        )

    def GetServiceCapabilities(self, req: Element) -> str:
        return (
            f"<trt:GetServiceCapabilitiesResponse>{self.capabilities()}</trt:GetServiceCapabilitiesResponse>"
        )

    def profile_xml(self, tag: str, i: int, p: Profile) -> str:
        h264 = (
            f"<tt:H264><tt:GovLength>{p.fps * 2}</tt:GovLength><tt:H264Profile>Main</tt:H264Profile>"
            "</tt:H264>"
            if p.encoding == "H264"
            else ""
        )
        return (
            f'<{tag} token={quoteattr(p.token)} fixed="true"><tt:Name>{escape(p.name)}</tt:Name>'
            f"{self.source_config('tt:VideoSourceConfiguration')}"
            f'<tt:VideoEncoderConfiguration token="{self.encoder_token(i)}">'
            f"<tt:Name>{escape(p.name)}</tt:Name>"
            f"<tt:UseCount>1</tt:UseCount><tt:Encoding>{p.encoding}</tt:Encoding><tt:Resolution>"
            f"<tt:Width>{p.width}</tt:Width><tt:Height>{p.height}</tt:Height></tt:Resolution>"
            f"<tt:Quality>4</tt:Quality><tt:RateControl><tt:FrameRateLimit>{p.fps}</tt:FrameRateLimit>"
            f"<tt:EncodingInterval>1</tt:EncodingInterval><tt:BitrateLimit>{self.bitrate_kbps(p)}</tt:BitrateLimit>"
            f"</tt:RateControl>{h264}<tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type>"
            "<tt:IPv4Address>0.0.0.0</tt:IPv4Address></tt:Address><tt:Port>0</tt:Port><tt:TTL>5</tt:TTL>"
            "<tt:AutoStart>false</tt:AutoStart></tt:Multicast><tt:SessionTimeout>PT60S</tt:SessionTimeout>"
            f"</tt:VideoEncoderConfiguration></{tag}>"
        )

    def GetProfiles(self, req: Element) -> str:
        if self.spec.behaviour == "soap_fault":
            raise SoapFault("Receiver", [], "Internal Server Error: media configuration unavailable")
        inner = "".join(self.profile_xml("trt:Profiles", i, p) for i, p in enumerate(self.spec.profiles))
        return f"<trt:GetProfilesResponse>{inner}</trt:GetProfilesResponse>"

    def GetProfile(self, req: Element) -> str:
        i, p = self.profile(_child_text(req, "ProfileToken"))
        return f"<trt:GetProfileResponse>{self.profile_xml('trt:Profile', i, p)}</trt:GetProfileResponse>"

    def GetVideoSources(self, req: Element) -> str:
        src = self.source()
        return (
            f'<trt:GetVideoSourcesResponse><trt:VideoSources token="VideoSource_1"><tt:Framerate>{src.fps}'
            f"</tt:Framerate><tt:Resolution><tt:Width>{src.width}</tt:Width><tt:Height>{src.height}</tt:Height>"
            "</tt:Resolution></trt:VideoSources></trt:GetVideoSourcesResponse>"
        )

    def GetStreamUri(self, req: Element) -> str:
        setup = next((c for c in req if c.tag.rpartition("}")[2] == "StreamSetup"), None)
        stream = _text(setup, "Stream")
        protocol = _text(setup, "Protocol")
        if setup is None or stream is None or protocol is None:
            raise SoapFault(
                "Sender", ["InvalidArgVal"], "StreamSetup with Stream and Transport/Protocol required"
            )
        _, p = self.profile(_child_text(req, "ProfileToken"))
        if stream != "RTP-Unicast" or protocol not in ("UDP", "TCP", "RTSP", "HTTP"):
            raise SoapFault(
                "Sender",
                ["InvalidArgVal", "InvalidStreamSetup"],
                f"Stream setup not supported: {stream}/{protocol}",
            )
        uri = f"<trt:MediaUri>{_media_uri(p.rtsp_uri)}</trt:MediaUri>"
        return f"<trt:GetStreamUriResponse>{uri}</trt:GetStreamUriResponse>"

    def GetSnapshotUri(self, req: Element) -> str:
        i, p = self.profile(_child_text(req, "ProfileToken"))
        uri = _media_uri(self.snapshot_uri(i, p))
        return f"<trt:GetSnapshotUriResponse><trt:MediaUri>{uri}</trt:MediaUri></trt:GetSnapshotUriResponse>"


class Media2Ops(Ops):
    """Media ver20 (tr2)."""

    def capabilities(self) -> str:
        return (
            '<tr2:Capabilities SnapshotUri="true" Rotation="false" VideoSourceMode="false" OSD="false" '
            'Mask="false" SourceMask="false">'
            f'<tr2:ProfileCapabilities MaximumNumberOfProfiles="{len(self.spec.profiles)}" '
            'ConfigurationsSupported="VideoSource VideoEncoder"/><tr2:StreamingCapabilities '
            'RTSPStreaming="true" RTPMulticast="false" RTP_RTSP_TCP="true" NonAggregateControl="false" '
            'AutoStartMulticast="false"/>'
            "</tr2:Capabilities>"
        )

    def GetServiceCapabilities(self, req: Element) -> str:
        return (
            f"<tr2:GetServiceCapabilitiesResponse>{self.capabilities()}</tr2:GetServiceCapabilitiesResponse>"
        )

    def encoder_xml(self, i: int, p: Profile) -> str:
        level = "Main"
        return (
            f'<tr2:VideoEncoder token="{self.encoder_token(i)}" GovLength="{p.fps * 2}" Profile="{level}">'
            f"<tt:Name>{escape(p.name)}</tt:Name><tt:UseCount>1</tt:UseCount><tt:Encoding>{p.encoding}</tt:Encoding>"
            f"<tt:Resolution><tt:Width>{p.width}</tt:Width><tt:Height>{p.height}</tt:Height></tt:Resolution>"
            f'<tt:RateControl ConstantBitRate="false"><tt:FrameRateLimit>{p.fps}</tt:FrameRateLimit>'
            f"<tt:BitrateLimit>{self.bitrate_kbps(p)}</tt:BitrateLimit></tt:RateControl>"
            "<tt:Quality>4</tt:Quality></tr2:VideoEncoder>"
        )

    def GetProfiles(self, req: Element) -> str:
        if self.spec.behaviour == "soap_fault":
            raise SoapFault("Receiver", [], "Internal Server Error: media configuration unavailable")
        token = _child_text(req, "Token")
        chosen = [self.profile(token)] if token is not None else list(enumerate(self.spec.profiles))
        types = set(_texts(req, "Type"))
        # Per the Media2 spec, a request without Type gets profiles without configurations.
        with_source = bool(types & {"All", "VideoSource"})
        with_encoder = bool(types & {"All", "VideoEncoder"})
        out = []
        for i, p in chosen:
            conf = ""
            if with_source or with_encoder:
                src = self.source_config("tr2:VideoSource") if with_source else ""
                enc = self.encoder_xml(i, p) if with_encoder else ""
                conf = f"<tr2:Configurations>{src}{enc}</tr2:Configurations>"
            out.append(
                f'<tr2:Profiles token={quoteattr(p.token)} fixed="true"><tr2:Name>{escape(p.name)}</tr2:Name>'
                f"{conf}</tr2:Profiles>"
            )
        return f"<tr2:GetProfilesResponse>{''.join(out)}</tr2:GetProfilesResponse>"

    def GetStreamUri(self, req: Element) -> str:
        protocol = _child_text(req, "Protocol")
        _, p = self.profile(_child_text(req, "ProfileToken"))
        if protocol not in ("RtspUnicast", "RTSP", "RtspOverHttp"):
            raise SoapFault(
                "Sender", ["InvalidArgVal", "InvalidStreamSetup"], f"Protocol not supported: {protocol}"
            )
        return f"<tr2:GetStreamUriResponse><tr2:Uri>{escape(p.rtsp_uri)}</tr2:Uri></tr2:GetStreamUriResponse>"

    def GetSnapshotUri(self, req: Element) -> str:
        i, p = self.profile(_child_text(req, "ProfileToken"))
        uri = f"<tr2:Uri>{escape(self.snapshot_uri(i, p))}</tr2:Uri>"
        return f"<tr2:GetSnapshotUriResponse>{uri}</tr2:GetSnapshotUriResponse>"


# ----------------------------------------------------------------------------------------------------------
# The farm process.
# ----------------------------------------------------------------------------------------------------------


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, name: str, cams: list[Camera], *, multicast: bool) -> None:
        self.name = name
        self.cams = cams
        self.multicast = multicast

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = parse_discovery(data)
        except Unparsable as e:
            log.debug("%s: ignored %d-byte datagram from %s: %s", self.name, len(data), addr, e)
            return
        for cam in self.cams:
            try:
                cam.on_discovery(msg, addr, multicast=self.multicast)
            except Exception:
                log.exception("%s: cannot answer %s", cam.spec.ip, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: %s", self.name, exc)


def _group_socket(group_ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((MULTICAST_GROUP, WSD_PORT))
    mreq = struct.pack("4s4s", socket.inet_aton(MULTICAST_GROUP), socket.inet_aton(group_ip))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    s.setblocking(False)
    return s


def _camera_socket(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, WSD_PORT))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setblocking(False)
    return s


async def _start_http(cam: Camera) -> Callable[[], Any]:
    """Starts the camera's HTTP side; returns an async cleanup."""
    if cam.spec.behaviour == "hang":
        writers: set[asyncio.StreamWriter] = set()

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.add(writer)
            try:
                while await reader.read(65536):
                    pass  # accepted, read, never answered
            except OSError:
                pass
            finally:
                writers.discard(writer)
                writer.close()

        server = await asyncio.start_server(swallow, cam.spec.ip, cam.spec.port, reuse_address=True)

        async def close_hang() -> None:
            server.close()
            for w in list(writers):
                w.close()

        return close_hang

    from aiohttp import web

    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", SoapService(cam).handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, cam.spec.ip, cam.spec.port, reuse_address=True).start()
    return runner.cleanup


async def _serve(args: argparse.Namespace) -> int:
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    specs = [CameraSpec(**c) for c in spec["cameras"]]
    try:
        for ip in [*(s.ip for s in specs), args.group_ip]:
            check_safe_address(ip)
    except ValueError as e:
        log.error("%s", e)
        return 2
    instance_id = int(time.time())
    cams = [Camera(s, instance_id, args.max_delay) for s in specs]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.watch_stdin:

        def on_stdin() -> None:
            try:
                data = os.read(sys.stdin.fileno(), 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(sys.stdin.fileno())
                log.info("stdin closed: parent gone, stopping")
                stop.set()

        loop.add_reader(sys.stdin.fileno(), on_stdin)

    transports: list[asyncio.DatagramTransport] = []
    cleanups: list[Callable[[], Any]] = []
    try:
        group, _ = await loop.create_datagram_endpoint(
            functools.partial(_Udp, "multicast", cams, multicast=True), sock=_group_socket(args.group_ip)
        )
        transports.append(group)
        for cam in cams:
            own, _ = await loop.create_datagram_endpoint(
                functools.partial(_Udp, cam.spec.ip, [cam], multicast=False), sock=_camera_socket(cam.spec.ip)
            )
            cam.udp = own
            transports.append(own)
            cleanups.append(await _start_http(cam))
    except OSError as e:
        log.error("cannot listen: %s", e)
        return EXIT_BIND_FAILED
    for cam in cams:
        cam.multicast(cam.hello())
    log.info("%d cameras listening: %s", len(cams), ", ".join(f"{c.spec.ip}:{c.spec.port}" for c in cams))
    print("READY", flush=True)
    await stop.wait()
    for cam in cams:
        cam.multicast(cam.bye())
    await asyncio.sleep(0.05)  # let the Byes leave before the sockets close
    for cleanup in cleanups:
        await cleanup()
    for t in transports:
        t.close()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--spec", required=True, type=Path, help='JSON {"cameras": [CameraSpec as dict, ...]}')
    ap.add_argument("--group-ip", required=True, help="interface address to join 239.255.255.250 on")
    ap.add_argument("--max-delay", type=float, default=0.5, help="ProbeMatch random delay bound, seconds")
    ap.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF (parent died)")
    args = ap.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="onvif_camera[%(process)d] %(levelname)s %(message)s"
    )
    log.setLevel(logging.DEBUG)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
