"""The SOAP operations of the simulated cameras: device (tds), Media ver10 (trt) and Media2 ver20 (tr2).

Each operation turns the request's body element into the reply's body XML, in schema order (zeep-based
clients parse replies by sequence), or raises :class:`SoapFault` as an ONVIF device would. Which operations a
camera offers, and who may call them, is onvif_http.py's business.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Sequence
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape, quoteattr

from tests.peers.onvif_discovery import Camera
from tests.peers.onvif_shapes import MANUFACTURERS, TDS, TEV, TR2, TRT
from tests.peers.onvif_spec import Profile

ONVIF_VERSION = "<tt:Major>2</tt:Major><tt:Minor>60</tt:Minor>"


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
