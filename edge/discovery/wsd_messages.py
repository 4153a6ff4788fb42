"""WS-Discovery messages, bytes in and bytes out, no I/O: the Probe we send and the ProbeMatches, Hello
and Bye we read.

ONVIF devices speak WS-Discovery (the 2005/04 draft; 1.1's 2009/01 namespaces are accepted too) over
SOAP-over-UDP. :func:`build_probe` writes a 2005/04 Probe; :func:`parse` reads one datagram into a
:class:`ProbeMatches`, :class:`Hello` or :class:`Bye`. The sockets that carry them are
:mod:`edge.discovery.wsdiscovery`'s.

Everything that arrives is hostile until parsed: :func:`parse` is pure, never raises and returns ``None``
(with a debug log saying why) for anything but a well-formed ProbeMatches, Hello or Bye. Parsing uses
defusedxml with DTDs forbidden, sizes are capped, and a ProbeMatch that is bad on its own costs only itself:
the other devices in the same message are kept.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

import defusedxml.ElementTree as _defused

_log = logging.getLogger(__name__)

NVT = "{http://www.onvif.org/ver10/network/wsdl}NetworkVideoTransmitter"
DEVICE = "{http://www.onvif.org/ver10/device/wsdl}Device"

_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
_WSD_2005 = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
_WSD_2009 = "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01"
_WSA_2004 = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
_WSA_2005 = "http://www.w3.org/2005/08/addressing"
_DISCOVERY_NS = (_WSD_2005, _WSD_2009)
_ADDRESSING_NS = (_WSA_2004, _WSA_2005)
_PREFIXES = {
    "http://www.onvif.org/ver10/network/wsdl": "dn",
    "http://www.onvif.org/ver10/device/wsdl": "tds",
}

# A camera's ProbeMatch is 1-3 KB. UDP allows 64 KiB, but anyone on the LAN can send us unauthenticated
# datagrams, so we refuse to spend parse time and memory on more than ten times anything genuine.
MAX_DATAGRAM_BYTES = 32 * 1024
_MAX_MATCHES = 32  # ProbeMatch elements in one message
_MAX_URI_CHARS = 2048  # EPR, each XAddr, scope, MessageID, RelatesTo
_MAX_XADDRS = 16
_MAX_SCOPES = 64
_MAX_TYPES = 16
_MAX_METADATA_VERSION = 2**32 - 1  # xs:unsignedInt

# What we put in a Probe: printable ASCII without whitespace or XML-special characters, so the XML we send
# is well-formed whatever a caller passes (anything else is refused, not escaped).
_SAFE_TOKEN = re.compile(r"[!#-%(-;=?-~]+")
_NCNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_EXPANDED = re.compile(r"\{(?P<ns>[!#-%(-;=?-z|~]+)\}(?P<local>[A-Za-z_][A-Za-z0-9_.\-]*)")


@dataclass(frozen=True)
class Device:
    """One WS-Discovery target service, as announced in a ProbeMatch or Hello."""

    epr: str  # EndpointReference Address, e.g. urn:uuid:...; the device's stable identity
    xaddrs: tuple[str, ...]  # transport addresses of its device service
    types: tuple[str, ...]  # expanded "{namespace}local"
    scopes: tuple[str, ...]
    metadata_version: int
    source_ip: str  # where the datagram came from

    @property
    def name(self) -> str | None:
        return self._scope("name")

    @property
    def hardware(self) -> str | None:
        return self._scope("hardware")

    @property
    def location(self) -> str | None:
        return self._scope("location")

    @property
    def device_url(self) -> str | None:
        """The first http(s) XAddr, preferring one on the address the reply came from (a camera with two
        networks lists both, and only the one we heard it on is known to reach us)."""
        urls = [u for u in self.xaddrs if _scheme(u) in ("http", "https")]
        for url in urls:
            if _host(url) == self.source_ip:
                return url
        return urls[0] if urls else None

    def _scope(self, kind: str) -> str | None:
        prefix = f"onvif://www.onvif.org/{kind}/"
        for scope in self.scopes:
            if scope[: len(prefix)].lower() == prefix:
                value = _printable(unquote(scope[len(prefix) :], errors="replace")).strip()
                if value:
                    return value
        return None


@dataclass(frozen=True)
class ProbeMatches:
    relates_to: str  # the MessageID of the Probe this answers
    message_id: str | None
    devices: tuple[Device, ...]


@dataclass(frozen=True)
class Hello:
    device: Device
    message_id: str | None


@dataclass(frozen=True)
class Bye:
    epr: str
    message_id: str | None


Message = ProbeMatches | Hello | Bye


# --------------------------------------------------------------------------------------------------- probe


def build_probe(types: str, message_id: str) -> bytes:
    """A WS-Discovery 2005/04 Probe for ``types`` (one or more whitespace-separated expanded names,
    ``{namespace}local``, e.g. :data:`NVT`). Raises ValueError for anything that would not make well-formed
    XML."""
    decls: dict[str, str] = {}
    qnames: list[str] = []
    for expanded in types.split():
        m = _EXPANDED.fullmatch(expanded)
        if m is None:
            raise ValueError(f"not an expanded type name {{namespace}}local: {expanded!r}")
        prefix = decls.setdefault(m["ns"], _PREFIXES.get(m["ns"], f"t{len(decls)}"))
        qnames.append(f"{prefix}:{m['local']}")
    if not qnames:
        raise ValueError("a Probe needs at least one type")
    if not _SAFE_TOKEN.fullmatch(message_id) or len(message_id) > _MAX_URI_CHARS:
        raise ValueError(f"unsafe MessageID: {message_id!r}")
    xmlns = "".join(f' xmlns:{p}="{ns}"' for ns, p in decls.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{_SOAP12}" xmlns:a="{_WSA_2004}" xmlns:d="{_WSD_2005}"{xmlns}>'
        "<s:Header>"
        f'<a:Action s:mustUnderstand="1">{_WSD_2005}/Probe</a:Action>'
        f"<a:MessageID>{message_id}</a:MessageID>"
        f"<a:ReplyTo><a:Address>{_WSA_2004}/role/anonymous</a:Address></a:ReplyTo>"
        '<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>'
        "</s:Header>"
        f"<s:Body><d:Probe><d:Types>{' '.join(qnames)}</d:Types></d:Probe></s:Body>"
        "</s:Envelope>"
    ).encode()


def merge(old: Device, new: Device) -> Device:
    """Two answers from one EPR as one: both answers' XAddrs; the other fields from the newer metadata (on a
    tie, the later answer)."""
    newer, older = (new, old) if new.metadata_version >= old.metadata_version else (old, new)
    xaddrs = tuple(dict.fromkeys(newer.xaddrs + older.xaddrs))[:_MAX_XADDRS]
    return Device(newer.epr, xaddrs, newer.types, newer.scopes, newer.metadata_version, newer.source_ip)


# ---------------------------------------------------------------------------------------------- parsing


class _Reject(Exception):
    """Why a message (or one ProbeMatch in it) is ignored; internal to parsing."""


@dataclass
class _Scope:
    """Namespace declarations made on one element, chained to the enclosing element's."""

    parent: _Scope | None
    decls: dict[str, str] = field(default_factory=dict)

    def lookup(self, prefix: str) -> str | None:
        scope: _Scope | None = self
        while scope is not None:
            if prefix in scope.decls:
                return scope.decls[prefix]
            scope = scope.parent
        return None


class _Builder:
    """An ElementTree target that also remembers the namespaces in scope on each Types element, whose
    QName values (``dn:NetworkVideoTransmitter``) resolve against them; ElementTree forgets them."""

    def __init__(self) -> None:
        self._tree = TreeBuilder()
        self._pending: dict[str, str] = {}
        self._stack: list[_Scope] = [_Scope(None)]
        self.types_scopes: dict[Element, _Scope] = {}

    def start_ns(self, prefix: str, uri: str) -> None:
        self._pending[prefix] = uri

    def start(self, tag: str, attrs: dict[str, str]) -> Element:
        scope = self._stack[-1]
        if self._pending:
            scope, self._pending = _Scope(scope, self._pending), {}
        self._stack.append(scope)
        elem = self._tree.start(tag, attrs)
        if tag.endswith("}Types"):
            self.types_scopes[elem] = scope
        return elem

    def end(self, tag: str) -> Element:
        self._stack.pop()
        return self._tree.end(tag)

    def data(self, data: str) -> None:
        self._tree.data(data)

    def close(self) -> Element:
        return self._tree.close()


def parse(data: bytes, *, source_ip: str = "") -> Message | None:
    """A ProbeMatches, Hello or Bye from one datagram, or None (debug log with the reason) for anything
    else: garbage, truncated or oversized XML, DTDs (refused before any entity expands: a DTD in a
    discovery message is never legitimate), other namespaces, a missing EPR, absurd field sizes. A
    ProbeMatch that is bad on its own is dropped and the others kept. Pure; never raises."""
    if len(data) > MAX_DATAGRAM_BYTES:
        _log.debug("WS-Discovery: ignored a %d-byte datagram from %s (too big)", len(data), source_ip)
        return None
    builder = _Builder()
    try:
        parser: Any = _defused.DefusedXMLParser(
            target=builder, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        parser.feed(data)
        root: Element = parser.close()
    except (ParseError, ValueError, LookupError) as e:  # ValueError: defusedxml's refusals; Lookup: encoding
        _log.debug("WS-Discovery: ignored a datagram from %s: not acceptable XML (%s)", source_ip, _short(e))
        return None
    try:
        return _message(root, builder.types_scopes, source_ip)
    except _Reject as e:
        _log.debug("WS-Discovery: ignored a datagram from %s: %s", source_ip, e)
        return None


def _message(root: Element, scopes: dict[Element, _Scope], source_ip: str) -> Message:
    if root.tag != f"{{{_SOAP12}}}Envelope":
        raise _Reject("not a SOAP 1.2 envelope")
    body = root.find(f"{{{_SOAP12}}}Body")
    item = body[0] if body is not None and len(body) else None
    if item is None:
        raise _Reject("empty SOAP body")
    ns, _, kind = item.tag[1:].partition("}")
    if ns not in _DISCOVERY_NS:
        raise _Reject("not a WS-Discovery message")
    header = root.find(f"{{{_SOAP12}}}Header")
    message_id = _header(header, "MessageID")
    if kind == "Hello":
        return Hello(_device(item, ns, scopes, source_ip), message_id)
    if kind == "Bye":
        return Bye(_epr(item), message_id)
    if kind != "ProbeMatches":
        raise _Reject(f"a {kind[:40]!r}, not ProbeMatches/Hello/Bye")
    relates_to = _header(header, "RelatesTo")
    if relates_to is None:
        raise _Reject("ProbeMatches without RelatesTo")
    matches = item.findall(f"{{{ns}}}ProbeMatch")
    if len(matches) > _MAX_MATCHES:
        raise _Reject(f"{len(matches)} ProbeMatch elements")
    devices = []
    for match in matches:
        try:
            devices.append(_device(match, ns, scopes, source_ip))
        except _Reject as e:
            _log.debug("WS-Discovery: dropped a ProbeMatch from %s: %s", source_ip, e)
    return ProbeMatches(relates_to, message_id, tuple(devices))


def _header(header: Element | None, name: str) -> str | None:
    if header is None:
        return None
    for wsa in _ADDRESSING_NS:
        elem = header.find(f"{{{wsa}}}{name}")
        if elem is not None:
            return _uri(elem.text or "", name)
    return None


def _device(elem: Element, ns: str, scopes: dict[Element, _Scope], source_ip: str) -> Device:
    return Device(
        epr=_epr(elem),
        xaddrs=_uri_list(elem.find(f"{{{ns}}}XAddrs"), _MAX_XADDRS, "XAddrs"),
        types=_types(elem.find(f"{{{ns}}}Types"), scopes),
        scopes=_uri_list(elem.find(f"{{{ns}}}Scopes"), _MAX_SCOPES, "Scopes"),
        metadata_version=_metadata_version(elem.find(f"{{{ns}}}MetadataVersion")),
        source_ip=source_ip,
    )


def _epr(elem: Element) -> str:
    for wsa in _ADDRESSING_NS:
        address = elem.find(f"{{{wsa}}}EndpointReference/{{{wsa}}}Address")
        if address is not None:
            return _uri(address.text or "", "EPR")
    raise _Reject("no EndpointReference Address")


def _uri(text: str, what: str) -> str:
    value = text.strip()
    if not value:
        raise _Reject(f"empty {what}")
    if len(value) > _MAX_URI_CHARS:
        raise _Reject(f"{what} of {len(value)} characters")
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in value):
        raise _Reject(f"{what} with whitespace or control characters")
    return value


def _uri_list(elem: Element | None, limit: int, what: str) -> tuple[str, ...]:
    if elem is None:
        return ()
    items = (elem.text or "").split()
    if len(items) > limit:
        raise _Reject(f"{len(items)} {what}")
    return tuple(_uri(item, what) for item in items)


def _types(elem: Element | None, scopes: dict[Element, _Scope]) -> tuple[str, ...]:
    if elem is None:
        return ()
    qnames = (elem.text or "").split()
    if len(qnames) > _MAX_TYPES:
        raise _Reject(f"{len(qnames)} Types")
    scope = scopes.get(elem)
    out = []
    for qname in qnames:
        prefix, _, local = qname.rpartition(":")
        uri = scope.lookup(prefix) if scope is not None else None
        if uri and _NCNAME.fullmatch(local) and len(uri) <= _MAX_URI_CHARS:
            out.append(f"{{{uri}}}{local}")
        else:  # an undeclared prefix: that type is unknowable, the device may still be fine
            _log.debug("WS-Discovery: unresolvable type %r", qname[:80])
    return tuple(dict.fromkeys(out))


def _metadata_version(elem: Element | None) -> int:
    if elem is None:
        return 0  # required by the spec, omitted by some firmwares
    text = (elem.text or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > _MAX_METADATA_VERSION:
        raise _Reject("MetadataVersion is not an unsigned int")
    return int(text)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:120]}"


def _printable(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf"))


def _scheme(url: str) -> str:
    return url.partition(":")[0].lower()


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None
