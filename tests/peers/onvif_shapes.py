"""The farm's vocabulary: XML namespaces and protocol constants, and how each maker's firmware shapes its
messages (:data:`SHAPES`, :data:`MANUFACTURERS`), modelled on captures of real cameras. Every shape is valid;
only prefixes, header order, scopes, realms, time zones and snapshot paths differ. Also the billion-laughs
DTD the hostile cameras send."""

from __future__ import annotations

from dataclasses import dataclass

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
ANONYMOUS = f"{WSA}/role/anonymous"
DISCOVERY_URN = "urn:schemas-xmlsoap-org:ws:2005:04:discovery"
MULTICAST_GROUP = "239.255.255.250"
WSD_PORT = 3702
RFC3986 = f"{WSD}/rfc3986"
STRCMP0 = f"{WSD}/strcmp0"
ONVIF_SCOPE = "onvif://www.onvif.org"

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

MANUFACTURERS = {
    "hikvision": "HIKVISION", "dahua": "Dahua", "axis": "AXIS", "reolink": "Reolink", "uniview": "UNIVIEW",
    "generic": "IPCAM",
}  # fmt: skip
