"""What a simulated ONVIF camera is: :class:`CameraSpec` and its :class:`Profile` list, validated, and the
guard that keeps the farm off real networks. Shared by the launcher (the tests' side) and the farm process."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MAKERS = ("hikvision", "dahua", "axis", "reolink", "uniview", "generic")
MEDIA = ("media1", "media2", "both")
AUTHS = ("none", "wsse", "http_digest", "either")
PROBE_TYPES = ("both", "nvt_only")
BEHAVIOURS = (
    "normal", "soap_fault", "hang", "not_onvif", "garbage_udp", "bomb_udp", "bomb_http", "huge_udp",
)  # fmt: skip


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
