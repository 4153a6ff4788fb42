"""One simulated camera (:class:`Camera`): who it is (EPR, scopes, XAddrs, clock) and its WS-Discovery side.

Probes and Resolves are parsed with defusedxml (no DTDs, no entities; QNames resolved with the prefixes in
scope) and matched by type and scope (RFC 3986 or strcmp0); ProbeMatches, ResolveMatches, Hello and Bye are
written in the camera's maker shape, delayed and repeated the way SOAP-over-UDP does; a misbehaving camera
sends junk, an entity bomb or a 60 KB datagram instead. The sockets are the farm's (onvif_camera.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import os
import random
import urllib.parse
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

from tests.peers.onvif_shapes import (
    ANONYMOUS,
    BOMB_DTD,
    DISCOVERY_URN,
    DN,
    MULTICAST_GROUP,
    ONVIF_SCOPE,
    RFC3986,
    SHAPES,
    SOAP_ENV,
    STRCMP0,
    TDS,
    WSA,
    WSD,
    WSD_PORT,
)
from tests.peers.onvif_spec import CameraSpec, xaddr_of

HUGE_DATAGRAM_BYTES = 60_000

log = logging.getLogger("onvif_camera")


def _q(prefix: str, local: str) -> str:
    return f"{prefix}:{local}" if prefix else local


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
