"""WS-Discovery client: parse() on hostile bytes, probe() against responders on 127.0.0.1 (unicast only), and
multicast probes and Hello/Bye inside the test LAN namespaces.

The message builders and the Probe checker below are also imported by the scripts run inside the namespaces
(``python -c`` with the repository as working directory), so both sides speak exactly the same XML.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import cast
from xml.etree.ElementTree import Element, XMLPullParser

import defusedxml.ElementTree as defused
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.discovery.wsdiscovery import (
    DEVICE,
    MAX_DATAGRAM_BYTES,
    MAX_DEVICES,
    NVT,
    Bye,
    Device,
    Hello,
    Interface,
    ProbeMatches,
    build_probe,
    lan_interfaces,
    parse,
    probe,
)
from edge.errors import Malformed
from tests.lan import BOX_IP, CAMS_IP, Lan

REPO = Path(__file__).resolve().parent.parent

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
WSA_2005 = "http://www.w3.org/2005/08/addressing"
WSD_2009 = "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01"
ONVIF_NS = (
    'xmlns:dn="http://www.onvif.org/ver10/network/wsdl" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" '
    'xmlns:pub="http://schemas.microsoft.com/windows/pnpx/2005/10"'
)
BOTH = "dn:NetworkVideoTransmitter tds:Device"
SCOPES = (
    "onvif://www.onvif.org/type/video_encoder",
    "onvif://www.onvif.org/name/Shop%20Front%20Caf%C3%A9",
    "onvif://www.onvif.org/hardware/DS-2CD2143G2-I",
    "onvif://www.onvif.org/location/city/Leeds",
)


# ------------------------------------------------------------------------------------- message builders


def envelope(
    action: str,
    body: str,
    *,
    relates_to: str | None = None,
    message_id: str | None = None,
    wsd: str = WSD,
    wsa: str = WSA,
    soap: str = SOAP12,
    prolog: str = "",
) -> bytes:
    """A SOAP envelope as cameras send it: ONVIF prefixes declared on the Envelope."""
    message_id = message_id or f"urn:uuid:{uuid.uuid4()}"
    relates = f"<a:RelatesTo>{relates_to}</a:RelatesTo>" if relates_to is not None else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>{prolog}'
        f'<s:Envelope xmlns:s="{soap}" xmlns:a="{wsa}" xmlns:d="{wsd}" {ONVIF_NS}>'
        f"<s:Header><a:MessageID>{message_id}</a:MessageID>{relates}"
        f"<a:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>"
        f"<a:Action>{wsd}/{action}</a:Action></s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def target_fields(
    epr: str,
    xaddrs: Sequence[str] = ("http://192.0.2.10/onvif/device_service",),
    types: str = BOTH,
    scopes: Sequence[str] = SCOPES,
    metadata_version: int | str = 1,
) -> str:
    return (
        f"<a:EndpointReference><a:Address>{epr}</a:Address></a:EndpointReference>"
        f"<d:Types>{types}</d:Types><d:Scopes>{' '.join(scopes)}</d:Scopes>"
        f"<d:XAddrs>{' '.join(xaddrs)}</d:XAddrs><d:MetadataVersion>{metadata_version}</d:MetadataVersion>"
    )


def match(epr: str, **fields: object) -> str:
    return f"<d:ProbeMatch>{target_fields(epr, **fields)}</d:ProbeMatch>"  # type: ignore[arg-type]


def probe_matches(relates_to: str | None, *matches: str, **kwargs: str) -> bytes:
    return envelope(
        "ProbeMatches",
        f"<d:ProbeMatches>{''.join(matches)}</d:ProbeMatches>",
        relates_to=relates_to,
        **kwargs,
    )


def hello(epr: str, message_id: str, **fields: object) -> bytes:
    return envelope("Hello", f"<d:Hello>{target_fields(epr, **fields)}</d:Hello>", message_id=message_id)  # type: ignore[arg-type]


def bye(epr: str, message_id: str) -> bytes:
    body = f"<d:Bye><a:EndpointReference><a:Address>{epr}</a:Address></a:EndpointReference></d:Bye>"
    return envelope("Bye", body, message_id=message_id)


def read_probe(data: bytes) -> tuple[str, str]:
    """(MessageID, expanded type) of a well-formed ONVIF Probe for exactly one type; AssertionError for
    anything else. This is the responders' check that the client only ever sends well-formed Probes."""
    prefixes: dict[str, str] = {}
    pull: XMLPullParser[Element] = XMLPullParser(events=("start-ns",))
    pull.feed(data)
    for event in pull.read_events():
        prefix, uri = cast(tuple[str, tuple[str, str]], event)[1]
        assert prefixes.setdefault(prefix, uri) == uri, "a prefix bound twice"
    root = defused.fromstring(data, forbid_dtd=True)
    assert root.tag == f"{{{SOAP12}}}Envelope"
    assert [c.tag for c in root] == [f"{{{SOAP12}}}Header", f"{{{SOAP12}}}Body"]
    header, body = root
    assert header.findtext(f"{{{WSA}}}Action") == f"{WSD}/Probe"
    assert header.findtext(f"{{{WSA}}}To") == "urn:schemas-xmlsoap-org:ws:2005:04:discovery"
    assert header.findtext(f"{{{WSA}}}ReplyTo/{{{WSA}}}Address") == f"{WSA}/role/anonymous"
    message_id = header.findtext(f"{{{WSA}}}MessageID") or ""
    assert re.fullmatch(
        r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", message_id
    )
    assert [c.tag for c in body] == [f"{{{WSD}}}Probe"]
    assert [c.tag for c in body[0]] == [f"{{{WSD}}}Types"]
    qnames = (body[0][0].text or "").split()
    assert len(qnames) == 1, qnames
    prefix, local = qnames[0].split(":")
    return message_id, f"{{{prefixes[prefix]}}}{local}"


def billion_laughs(relates_to: str) -> bytes:
    dtd = '<!DOCTYPE s:Envelope [<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    )
    return probe_matches(relates_to, match("urn:uuid:bomb-&lol9;"), prolog=dtd + "]>")


def hostile_replies(relates_to: str) -> dict[str, bytes]:
    """Replies to the probe ``relates_to`` that must yield no device. Each would be accepted if the defence
    it tests were missing (the huge one is a valid message, only its size is wrong)."""
    rng = random.Random(3702)
    valid = probe_matches(relates_to, match("urn:uuid:truncated"))
    quadratic = '<!DOCTYPE s:Envelope [<!ENTITY a "' + "a" * 5000 + '">]>'
    return {
        "garbage": bytes(rng.randrange(256) for _ in range(1200)),
        "empty": b"",
        "not_xml": b"HTTP/1.1 200 OK\r\n\r\nhello",
        "billion_laughs": billion_laughs(relates_to),
        "quadratic_blowup": probe_matches(relates_to, match("urn:uuid:q" + "&a;" * 5000), prolog=quadratic),
        "external_entity": probe_matches(
            relates_to,
            match("urn:uuid:&xxe;"),
            prolog='<!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>',
        ),
        "parameter_entity": probe_matches(
            relates_to,
            match("urn:uuid:pe"),
            prolog='<!DOCTYPE s:Envelope [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>',
        ),
        "external_dtd": probe_matches(
            relates_to, match("urn:uuid:dtd"), prolog='<!DOCTYPE s:Envelope SYSTEM "file:///nonexistent.dtd">'
        ),
        "huge": valid.replace(b"<s:Body>", b"<!--" + b"x" * 60_000 + b"--><s:Body>").replace(
            b"truncated", b"huge"
        ),
        "truncated": valid[: len(valid) // 2],
        "wrong_discovery_ns": probe_matches(
            relates_to, match("urn:uuid:wrong-ns"), wsd="http://example.invalid/d"
        ),
        "soap11": probe_matches(
            relates_to, match("urn:uuid:soap11"), soap="http://schemas.xmlsoap.org/soap/envelope/"
        ),
        "not_a_reply": probe_matches(relates_to, match("urn:uuid:probe")).replace(b"ProbeMatches", b"Probe"),
        "no_epr": probe_matches(
            relates_to,
            "<d:ProbeMatch><d:XAddrs>http://192.0.2.66/onvif/device_service</d:XAddrs></d:ProbeMatch>",
        ),
        "empty_epr": probe_matches(relates_to, match("  ")),
        "absurd_epr": probe_matches(relates_to, match("urn:uuid:" + "e" * 20_000)),
        "absurd_xaddr": probe_matches(
            relates_to, match("urn:uuid:absurd", xaddrs=("http://x/" + "a" * 20_000,))
        ),
        "too_many_scopes": probe_matches(relates_to, match("urn:uuid:scopes", scopes=["s:x"] * 500)),
        "too_many_matches": probe_matches(
            relates_to, *(match(f"urn:uuid:m{i}", scopes=()) for i in range(40))
        ),
        "bad_metadata_version": probe_matches(relates_to, match("urn:uuid:mv", metadata_version="-1")),
        "huge_metadata_version": probe_matches(relates_to, match("urn:uuid:mv2", metadata_version=2**40)),
    }


# ------------------------------------------------------------------------------------ parse(): pure tests


def test_parse_probe_matches() -> None:
    data = probe_matches(
        "urn:uuid:ours",
        match("urn:uuid:cam-1", xaddrs=("http://192.0.2.10/onvif/device_service", "http://[fe80::1]/onvif")),
        message_id="urn:uuid:reply-1",
    )
    msg = parse(data, source_ip="192.0.2.10")
    assert msg == ProbeMatches(
        relates_to="urn:uuid:ours",
        message_id="urn:uuid:reply-1",
        devices=(
            Device(
                epr="urn:uuid:cam-1",
                xaddrs=("http://192.0.2.10/onvif/device_service", "http://[fe80::1]/onvif"),
                types=(NVT, DEVICE),
                scopes=SCOPES,
                metadata_version=1,
                source_ip="192.0.2.10",
            ),
        ),
    )
    device = msg.devices[0]
    assert device.name == "Shop Front Café"
    assert device.hardware == "DS-2CD2143G2-I"
    assert device.location == "city/Leeds"
    assert device.device_url == "http://192.0.2.10/onvif/device_service"


def test_types_resolve_against_the_namespaces_in_scope_where_they_are_written() -> None:
    # Inner declarations override the Envelope's; a default namespace applies to unprefixed QNames; a type
    # with an undeclared prefix is dropped and the device kept.
    types_elem = (
        '<d:Types xmlns:dn="urn:other" xmlns:x="http://www.onvif.org/ver10/network/wsdl" xmlns="urn:default">'
        "x:NetworkVideoTransmitter dn:NetworkVideoTransmitter Thing nope:Lost tds:Device</d:Types>"
    )
    body = match("urn:uuid:ns").replace(f"<d:Types>{BOTH}</d:Types>", types_elem)
    msg = parse(probe_matches("urn:uuid:p", body))
    assert isinstance(msg, ProbeMatches)
    assert msg.devices[0].types == (NVT, "{urn:other}NetworkVideoTransmitter", "{urn:default}Thing", DEVICE)


def test_parse_hello_and_bye() -> None:
    msg = parse(hello("urn:uuid:cam-2", "urn:uuid:h1", metadata_version=7), source_ip="192.0.2.11")
    assert isinstance(msg, Hello)
    assert msg.message_id == "urn:uuid:h1"
    assert (msg.device.epr, msg.device.metadata_version, msg.device.source_ip) == (
        "urn:uuid:cam-2",
        7,
        "192.0.2.11",
    )
    assert parse(bye("urn:uuid:cam-2", "urn:uuid:b1")) == Bye(epr="urn:uuid:cam-2", message_id="urn:uuid:b1")


def test_parse_accepts_ws_discovery_1_1_namespaces() -> None:
    data = probe_matches("urn:uuid:p", match("urn:uuid:v11"), wsd=WSD_2009, wsa=WSA_2005)
    msg = parse(data)
    assert isinstance(msg, ProbeMatches) and msg.relates_to == "urn:uuid:p"
    assert [d.epr for d in msg.devices] == ["urn:uuid:v11"]


def test_missing_metadata_version_is_zero() -> None:
    body = match("urn:uuid:nomv").replace("<d:MetadataVersion>1</d:MetadataVersion>", "")
    msg = parse(probe_matches("urn:uuid:p", body))
    assert isinstance(msg, ProbeMatches) and msg.devices[0].metadata_version == 0


# A reply whose defect is in one ProbeMatch still parses; only that match is dropped.
PER_MATCH = {
    "no_epr",
    "empty_epr",
    "absurd_epr",
    "absurd_xaddr",
    "too_many_scopes",
    "bad_metadata_version",
    "huge_metadata_version",
}


@pytest.mark.parametrize("name", sorted(hostile_replies("urn:uuid:p")))
def test_hostile_payload_is_refused_fast(name: str) -> None:
    data = hostile_replies("urn:uuid:p")[name]
    started = time.perf_counter()
    msg = parse(data)
    elapsed = time.perf_counter() - started
    if name in PER_MATCH:
        assert msg == ProbeMatches(relates_to="urn:uuid:p", message_id=msg.message_id, devices=())  # type: ignore[union-attr]
    else:
        assert msg is None
    assert elapsed < 0.5, f"{name} took {elapsed:.3f} s: expanded?"


def test_entity_bombs_are_refused_before_expansion() -> None:
    # Without the DTD refusal the billion laughs expands to 10**9 "lol"s (3 GB); expat's own amplification
    # limit would raise too, but later. 1000 parses in well under a second means nothing expanded.
    data = billion_laughs("urn:uuid:p")
    started = time.perf_counter()
    assert all(parse(data) is None for _ in range(1000))
    assert time.perf_counter() - started < 1.0


def test_one_bad_match_does_not_cost_the_others() -> None:
    data = probe_matches(
        "urn:uuid:p",
        match("urn:uuid:good-1"),
        match("urn:uuid:bad", xaddrs=("http://x/" + "a" * 5000,)),
        match("urn:uuid:good-2"),
    )
    msg = parse(data)
    assert isinstance(msg, ProbeMatches)
    assert [d.epr for d in msg.devices] == ["urn:uuid:good-1", "urn:uuid:good-2"]


def test_every_truncation_is_refused() -> None:
    data = probe_matches("urn:uuid:p", match("urn:uuid:t"))
    assert parse(data) is not None
    assert [n for n in range(len(data)) if parse(data[:n]) is not None] == []


def test_size_cap_is_exact() -> None:
    data = probe_matches("urn:uuid:p", match("urn:uuid:size"))
    pad = MAX_DATAGRAM_BYTES - len(data) - len(b"<!---->")
    at_cap = data.replace(b"<s:Body>", b"<!--" + b"x" * pad + b"--><s:Body>")
    assert len(at_cap) == MAX_DATAGRAM_BYTES
    assert isinstance(parse(at_cap), ProbeMatches)
    assert parse(at_cap.replace(b"<!--", b"<!-- ")) is None


def test_deep_nesting_is_harmless() -> None:
    deep = "<x>" * 3000 + "</x>" * 3000
    body = match("urn:uuid:deep").replace("</d:Scopes>", deep + "</d:Scopes>")
    msg = parse(probe_matches("urn:uuid:p", body))
    assert isinstance(msg, ProbeMatches) and [d.epr for d in msg.devices] == ["urn:uuid:deep"]


def test_our_own_probe_is_not_a_reply() -> None:
    assert parse(build_probe(NVT, f"urn:uuid:{uuid.uuid4()}")) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_parse_never_raises_on_random_bytes(data: bytes) -> None:
    assert parse(data) is None


_GOOD = probe_matches("urn:uuid:p", match("urn:uuid:fuzz"), message_id="urn:uuid:m")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_GOOD)), st.integers(0, 3), st.binary(max_size=8)), max_size=6))
def test_parse_never_raises_on_mutated_replies(edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(_GOOD)
    for pos, cut, insert in edits:
        data[pos : pos + cut] = insert
    msg = parse(bytes(data))
    assert msg is None or isinstance(msg, ProbeMatches | Hello | Bye)


def test_device_properties() -> None:
    def device(scopes: Sequence[str] = (), xaddrs: Sequence[str] = (), source_ip: str = "") -> Device:
        return Device("urn:uuid:d", tuple(xaddrs), (), tuple(scopes), 0, source_ip)

    assert device().name is None and device().device_url is None
    # Control characters (a newline in a log line, a bidi override in the UI) are removed.
    assert device(["onvif://www.onvif.org/name/Back%0Adoor%E2%80%AE"]).name == "Backdoor"
    assert device(["ONVIF://www.onvif.org/Name/upper", "onvif://www.onvif.org/name/second"]).name == "upper"
    assert device(["onvif://www.onvif.org/name/"]).name is None
    two = [
        "rtsp://10.0.0.5/",
        "https://10.0.0.5/onvif/device_service",
        "http://192.0.2.7/onvif/device_service",
    ]
    assert device(xaddrs=two, source_ip="192.0.2.7").device_url == two[2]
    assert device(xaddrs=two, source_ip="192.0.2.99").device_url == two[1]
    assert device(xaddrs=["http://[bad/onvif"], source_ip="x").device_url == "http://[bad/onvif"


def test_build_probe() -> None:
    message_id = f"urn:uuid:{uuid.uuid4()}"
    assert read_probe(build_probe(NVT, message_id)) == (message_id, NVT)
    assert read_probe(build_probe(DEVICE, message_id)) == (message_id, DEVICE)
    for bad_id in ("urn:uuid:<x>", "a b", "", "urn:&amp;", 'x"y'):
        with pytest.raises(ValueError, match="MessageID"):
            build_probe(NVT, bad_id)
    for bad_types in ("", "dn:NetworkVideoTransmitter", "{urn:x}", "{urn:<x>}Y", "{urn:x}1bad"):
        with pytest.raises(ValueError, match="type"):
            build_probe(bad_types, message_id)


# -------------------------------------------------------------------- probe(): unicast on 127.0.0.1


Answer = Callable[[str, str], list[bytes]]  # (probe MessageID, expanded type) -> replies


class Responder(asyncio.DatagramProtocol):
    """Answers each Probe with ``answer(...)``, ``gap_s`` apart; records every datagram and checks it is a
    well-formed Probe."""

    def __init__(self, answer: Answer, gap_s: float = 0.0) -> None:
        self.answer = answer
        self.gap_s = gap_s
        self.probes: list[tuple[float, str, str]] = []  # (arrival, MessageID, type)
        self.bad: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass of it on 3.11

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message_id, kind = read_probe(data)
        except Exception as e:  # anything: the test asserts self.bad is empty
            self.bad.append(f"{e!r}: {data[:200]!r}")
            return
        self.probes.append((time.monotonic(), message_id, kind))
        loop = asyncio.get_running_loop()
        for i, reply in enumerate(self.answer(message_id, kind)):
            loop.call_later(i * self.gap_s, self._send, reply, addr)

    def _send(self, reply: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


@contextlib.asynccontextmanager
async def responding(answer: Answer, gap_s: float = 0.0) -> AsyncIterator[tuple[Responder, str]]:
    loop = asyncio.get_running_loop()
    responder = Responder(answer, gap_s)
    transport, _ = await loop.create_datagram_endpoint(lambda: responder, local_addr=("127.0.0.1", 0))
    try:
        yield responder, f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    finally:
        transport.close()
    assert responder.bad == []


XADDR = "http://127.0.0.1:8000/onvif/device_service"


async def test_probe_sends_each_type_twice_and_reports_each_device_once() -> None:
    found: list[Device] = []
    answer: Answer = lambda mid, kind: [probe_matches(mid, match("urn:uuid:cam-a", xaddrs=(XADDR,)))]  # noqa: E731
    async with responding(answer) as (responder, target):
        devices = await probe(0.6, interfaces=[], unicast=[target], on_found=found.append)
    assert devices == found == [Device("urn:uuid:cam-a", (XADDR,), (NVT, DEVICE), SCOPES, 1, "127.0.0.1")]
    assert devices[0].device_url == XADDR
    # Two Probes, one per type, each sent twice with its MessageID, 50-250 ms apart (SOAP-over-UDP repeat).
    assert Counter(kind for _, _, kind in responder.probes) == {NVT: 2, DEVICE: 2}
    by_id: dict[str, list[tuple[float, str]]] = {}
    for at, mid, kind in responder.probes:
        by_id.setdefault(mid, []).append((at, kind))
    assert len(by_id) == 2
    for sends in by_id.values():
        (first, kind1), (second, kind2) = sends
        assert kind1 == kind2
        assert 0.045 <= second - first <= 0.4


async def test_only_answers_to_our_probes_are_kept() -> None:
    def answer(mid: str, kind: str) -> list[bytes]:
        return [
            probe_matches(f"urn:uuid:{uuid.uuid4()}", match("urn:uuid:someone-elses")),
            probe_matches(None, match("urn:uuid:no-relates-to")),
            probe_matches(mid, match("urn:uuid:ours")),
        ]

    async with responding(answer) as (_, target):
        devices = await probe(0.6, interfaces=[], unicast=[target])
    assert [d.epr for d in devices] == ["urn:uuid:ours"]


async def test_answers_for_one_epr_are_merged() -> None:
    old, new = "http://127.0.0.1:1/old", "http://127.0.0.1:2/new"

    def answer(mid: str, kind: str) -> list[bytes]:
        # The newer metadata (NVT's answer) arrives first; the older one after it must not win.
        if kind == NVT:
            cam = match(
                "urn:uuid:cam", xaddrs=(new,), scopes=("onvif://www.onvif.org/name/new",), metadata_version=2
            )
        else:
            cam = match(
                "urn:uuid:cam", xaddrs=(old,), scopes=("onvif://www.onvif.org/name/old",), metadata_version=1
            )
        return [probe_matches(mid, cam), probe_matches(mid, match("urn:uuid:other"))]

    found: list[str] = []
    async with responding(answer) as (_, target):
        devices = await probe(0.6, interfaces=[], unicast=[target], on_found=lambda d: found.append(d.epr))
    assert found == [d.epr for d in devices] == ["urn:uuid:cam", "urn:uuid:other"]
    cam = devices[0]
    assert (cam.xaddrs, cam.metadata_version, cam.name) == ((new, old), 2, "new")


async def test_a_camera_answering_only_nvt_probes_is_found() -> None:
    def answer(mid: str, kind: str) -> list[bytes]:
        return (
            [probe_matches(mid, match("urn:uuid:nvt-only", types="dn:NetworkVideoTransmitter"))]
            if kind == NVT
            else []
        )

    async with responding(answer) as (responder, target):
        port = target.rpartition(":")[2]
        devices = await probe(0.6, interfaces=[], unicast=[f"localhost:{port}"])
    assert [(d.epr, d.types) for d in devices] == [("urn:uuid:nvt-only", (NVT,))]
    assert {kind for _, _, kind in responder.probes} == {NVT, DEVICE}


async def test_hostile_replies_do_not_hide_good_devices() -> None:
    def hostile(mid: str, kind: str) -> list[bytes]:
        mixed = probe_matches(
            mid, match("urn:uuid:bad", xaddrs=("http://x/" + "a" * 5000,)), match("urn:uuid:mixed")
        )
        return [*hostile_replies(mid).values(), mixed]

    def good(mid: str, kind: str) -> list[bytes]:
        return [probe_matches(mid, match("urn:uuid:good", xaddrs=(XADDR,)))]

    found: list[Device] = []
    async with responding(hostile) as (bad_responder, bad), responding(good) as (_, fine):
        started = time.monotonic()
        devices = await probe(0.6, interfaces=[], unicast=[bad, fine], on_found=found.append)
        elapsed = time.monotonic() - started
    assert sorted(d.epr for d in devices) == ["urn:uuid:good", "urn:uuid:mixed"]
    assert next(d for d in devices if d.epr == "urn:uuid:good").xaddrs == (XADDR,)
    assert found == devices
    assert len(bad_responder.probes) == 4  # it did get our probes and answer them
    assert elapsed < 1.5


async def test_number_of_devices_is_bounded() -> None:
    per_datagram, datagrams = 25, 45  # 1125 distinct devices offered

    def flood(mid: str, kind: str) -> list[bytes]:
        if kind != NVT:
            return []
        return [
            probe_matches(mid, *(match(f"urn:uuid:f-{n}-{i}", scopes=()) for i in range(per_datagram)))
            for n in range(datagrams)
        ]

    found: list[Device] = []
    async with responding(flood, gap_s=0.003) as (_, target):
        devices = await probe(1.0, interfaces=[], unicast=[target], on_found=found.append)
    assert len(devices) == len(found) == MAX_DEVICES
    assert devices[0].epr == "urn:uuid:f-0-0"


async def test_on_found_errors_propagate() -> None:
    def boom(device: Device) -> None:
        raise RuntimeError(f"callback failed on {device.epr}")

    answer: Answer = lambda mid, kind: [probe_matches(mid, match("urn:uuid:x"))]  # noqa: E731
    async with responding(answer) as (_, target):
        with pytest.raises(RuntimeError, match=r"callback failed on urn:uuid:x"):
            await probe(2.0, interfaces=[], unicast=[target], on_found=boom)


async def test_bad_targets_and_nothing_to_probe() -> None:
    for bad in ("", "host:", "host:0", "host:70000", "host:http", "::1", "[::1]:3702", "a b:1"):
        with pytest.raises(Malformed):
            await probe(1.0, interfaces=[], unicast=[bad])
    with pytest.raises(ValueError, match="timeout"):
        await probe(0, interfaces=[])
    started = time.monotonic()
    assert await probe(5.0, interfaces=[], unicast=()) == []
    assert time.monotonic() - started < 0.5


async def test_an_interface_that_cannot_be_used_is_skipped() -> None:
    answer: Answer = lambda mid, kind: [probe_matches(mid, match("urn:uuid:still-found"))]  # noqa: E731
    gone = Interface("gone0", "192.0.2.254")  # not an address of this host: bind fails, nothing is sent
    async with responding(answer) as (_, target):
        devices = await probe(0.5, interfaces=[gone], unicast=[target])
    assert [d.epr for d in devices] == ["urn:uuid:still-found"]


# -------------------------------------------------------------------- multicast in the test namespaces

RESPONDER = r"""
import json, socket, sys, time
from tests.test_wsdiscovery import match, probe_matches, read_probe
group_if, cams = sys.argv[1], sys.argv[2:]
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.bind(("239.255.255.250", 3702))
rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
              socket.inet_aton("239.255.255.250") + socket.inet_aton(group_if))
tx = {}
for ip in cams:  # each camera answers from its own address, as real ones do
    tx[ip] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx[ip].bind((ip, 3702))
print("READY", flush=True)
rx.settimeout(0.5)
end = time.monotonic() + 20  # never outlive a test that forgot us
while time.monotonic() < end:
    try:
        data, addr = rx.recvfrom(65535)
    except TimeoutError:
        continue
    mid, kind = read_probe(data)
    print(json.dumps({"from": addr[0], "kind": kind}), flush=True)
    for n, ip in enumerate(cams):
        reply = match(f"urn:uuid:cam-{n}", xaddrs=(f"http://{ip}/onvif/device_service",))
        tx[ip].sendto(probe_matches(mid, reply), addr)
"""

PROBE = r"""
import asyncio, json, sys
from edge.discovery.wsdiscovery import lan_interfaces, probe
devices = asyncio.run(probe(float(sys.argv[1])))
print(json.dumps({
    "interfaces": [[i.name, i.ip] for i in lan_interfaces()],
    "devices": [[d.epr, d.source_ip, d.device_url] for d in devices],
}))
"""

LISTENER = r"""
import asyncio, json, sys
from edge.discovery.wsdiscovery import Announcements

def reporter(who):
    def on_hello(d):
        print(json.dumps([who, "hello", d.epr, d.source_ip, list(d.xaddrs)]), flush=True)
    def on_bye(epr):
        print(json.dumps([who, "bye", epr]), flush=True)
    return on_hello, on_bye

async def main():
    listeners = [Announcements(*reporter("a")), Announcements(*reporter("b"))]  # two coexist on :3702
    for listener in listeners:
        await listener.start()
    print("READY", flush=True)
    # Until the test closes our stdin (or 20 s at most).
    await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, sys.stdin.read), 20)
    for listener in listeners:
        await listener.close()

asyncio.run(main())
"""

ANNOUNCER = r"""
import socket, sys, time
from tests.test_wsdiscovery import billion_laughs, bye, hello
cam = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((cam, 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(cam))
for data in [
    b"\x00garbage",
    billion_laughs("urn:uuid:x").replace(b"ProbeMatches", b"Hello"),
    hello("urn:uuid:pc", "urn:uuid:h0", types="pub:Computer"),  # a Windows PC: not ONVIF, not reported
    hello("urn:uuid:cam-10", "urn:uuid:h1", xaddrs=(f"http://{cam}/onvif/device_service",)),
    hello("urn:uuid:cam-10", "urn:uuid:h1", xaddrs=(f"http://{cam}/onvif/device_service",)),  # the repeat
    bye("urn:uuid:cam-10", "urn:uuid:b1"),
    bye("urn:uuid:cam-10", "urn:uuid:b1"),
]:
    s.sendto(data, ("239.255.255.250", 3702))
    time.sleep(0.02)
"""


def _run(lan_cmd: list[str], timeout: float = 20) -> str:
    proc = subprocess.run(lan_cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _start(lan_cmd: list[str], stdin: int | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        lan_cmd, cwd=REPO, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "READY\n":
        proc.kill()
        raise AssertionError(f"peer did not start: {line!r} {proc.communicate(timeout=5)[1]}")
    return proc


def test_lan_interfaces_in_the_namespaces(lan: Lan) -> None:
    code = (
        "import json; from edge.discovery.wsdiscovery import lan_interfaces as f; "
        "print(json.dumps([[i.name, i.ip] for i in f()]))"
    )
    # lan.box: lan0 only; its lo is up but has no MULTICAST flag.
    assert json.loads(_run(lan.cmd(lan.box, [sys.executable, "-c", code]))) == [["lan0", BOX_IP]]
    # lan.cams: one entry per address of eth0.
    cams = json.loads(_run(lan.cmd(lan.cams, [sys.executable, "-c", code])))
    assert cams == [["eth0", ip] for ip in [CAMS_IP, *lan.camera_ips]]


def test_host_namespace_lan_interfaces_are_up_and_multicast() -> None:
    # Only reads flags here: no traffic in the host namespace.
    for iface in lan_interfaces():
        flags = int(Path(f"/sys/class/net/{iface.name.split(':')[0]}/flags").read_text(), 16)
        assert flags & 0x1 and flags & 0x1000, iface


def test_multicast_probe_finds_cameras_via_lan0(lan: Lan) -> None:
    cams = lan.camera_ips[:2]
    responder = _start(lan.cmd(lan.cams, [sys.executable, "-c", RESPONDER, CAMS_IP, *cams]))
    try:
        result = json.loads(_run(lan.cmd(lan.box, [sys.executable, "-c", PROBE, "1.0"])))
    finally:
        responder.terminate()
        seen, errors = responder.communicate(timeout=5)
    assert result["interfaces"] == [["lan0", BOX_IP]]
    assert sorted(result["devices"]) == [
        [f"urn:uuid:cam-{n}", ip, f"http://{ip}/onvif/device_service"] for n, ip in enumerate(cams)
    ]
    # The group heard our four Probes, all from lan0's address.
    probes = [json.loads(line) for line in seen.splitlines()]
    assert sorted(p["kind"] for p in probes) == sorted([NVT, NVT, DEVICE, DEVICE]), errors
    assert {p["from"] for p in probes} == {BOX_IP}


def test_announcements_report_hello_and_bye(lan: Lan) -> None:
    cam = lan.camera_ips[0]
    listener = _start(lan.cmd(lan.box, [sys.executable, "-c", LISTENER]), stdin=subprocess.PIPE)
    assert listener.stdout is not None
    first: list[str] = []
    try:
        _run(lan.cmd(lan.cams, [sys.executable, "-c", ANNOUNCER, cam]))
        # Two listeners x (Hello, Bye): wait for those four, then see whether anything else came.
        first = [listener.stdout.readline() for _ in range(4)]
        time.sleep(0.1)
    finally:
        rest, errors = listener.communicate(input="", timeout=10)
    assert listener.returncode == 0, errors
    events = [json.loads(line) for line in "".join(first).splitlines() + rest.splitlines()]
    for who in ("a", "b"):
        assert [e[1:] for e in events if e[0] == who] == [
            ["hello", "urn:uuid:cam-10", cam, [f"http://{cam}/onvif/device_service"]],
            ["bye", "urn:uuid:cam-10"],
        ], errors
