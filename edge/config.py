"""The installer's settings: ``/etc/edge/edge.toml`` → frozen dataclasses, strictly validated.

Camera inventory, consent and pairing live in the database, not here. Every key is optional; the defaults are
the dataclass defaults, and :data:`EXAMPLE_TOML` spells them all out (a test keeps the two equal).

Strict: an unknown section or key, a wrong type (a boolean is not an integer) or a value out of range raises
:class:`~edge.errors.ConfigError` with one line naming the key, e.g.::

    edge.toml: unknown key 'storage.budgit'
    edge.toml: recording.segment_s: expected an integer, got a string ("60")
    edge.toml: line 3: Invalid value (column 12)

Validation is a table (:data:`_SECTIONS`): for each section, its dataclass and one parser per key. A parser
takes the TOML value and returns the typed one or raises :class:`_Invalid` with the detail after the key name.

Sizes are an integer number of bytes or a string with a unit: decimal ``B kB MB GB TB`` (powers of 1000) or
binary ``KiB MiB GiB TiB`` (powers of 1024), case-insensitive, e.g. ``"20 GB"``, ``"500MiB"``, ``"1.5 GiB"``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class StorageBudget:
    """How much of the partition recordings may use: an absolute ``bytes`` or a ``share`` in (0, 1]."""

    bytes: int | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        if (self.bytes is None) == (self.share is None):
            raise ValueError("StorageBudget needs exactly one of bytes and share")
        if self.bytes is not None and self.bytes < 1:
            raise ValueError(f"StorageBudget.bytes must be positive, got {self.bytes}")
        if self.share is not None and not 0.0 < self.share <= 1.0:
            raise ValueError(f"StorageBudget.share must be in (0, 1], got {self.share}")

    def resolve(self, partition_bytes: int) -> int:
        """The budget in bytes on a partition of ``partition_bytes`` (a share is rounded down)."""
        if self.bytes is not None:
            return self.bytes
        assert self.share is not None
        return int(Decimal(repr(self.share)) * partition_bytes)


@dataclass(frozen=True)
class ListenAddress:
    """One ``host:port`` for the web page; ``host`` is an IP literal (IPv6 without brackets) or a name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = Path("/var/lib/edge")
    budget: StorageBudget = StorageBudget(share=0.9)
    min_free_bytes: int = 256 * MiB
    max_age_s: int | None = None


@dataclass(frozen=True)
class RecordingConfig:
    segment_s: int = 60
    fragment_ms: int = 500
    flush_interval_ms: int = 500
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    gop_cache_max_bytes: int = 16 * MiB


@dataclass(frozen=True)
class WebConfig:
    listen: tuple[ListenAddress, ...] = (ListenAddress("0.0.0.0", 8080),)  # noqa: S104 -- LAN page
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiscoveryConfig:
    timeout_s: float = 3.0  # how long `edge discover` collects WS-Discovery and mDNS answers
    listen: bool = True  # the daemon notes cameras announcing themselves (WS-Discovery Hello/Bye)
    interfaces: tuple[str, ...] = ()  # names to search on; empty: every IPv4 multicast interface


@dataclass(frozen=True)
class UplinkConfig:
    enabled: bool = True  # run the control channel once the box is paired (the owner pairs; this can veto)
    recorded_rate_mbit: float = 8.0  # cap on a recorded range's upload, to spare the owner's upstream
    camera_idle_s: float = 10.0  # a live session ends (camera_lost) after this long without a packet


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    web: WebConfig = field(default_factory=WebConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    log: LogConfig = field(default_factory=LogConfig)


EXAMPLE_TOML = """\
# /etc/edge/edge.toml: every key, at its default. Cameras are added with `edge cameras add`, not here.

[storage]
data_dir = "/var/lib/edge"
budget = "90%"              # bytes (integer), a size ("20 GB", "500MiB") or a share of the partition
min_free_bytes = "256 MiB"  # the free-space guard deletes the oldest segments before free space drops below
# max_age_s = 2592000       # default max age for cameras without their own; unset: keep until the budget

[recording]
segment_s = 60              # 1..3600, cut at the next keyframe
fragment_ms = 500           # 100..1000: kill -9 loses at most about one fragment
flush_interval_ms = 500     # 10..1000: fsync batch; a power cut loses at most this plus a fragment
reconnect_min_s = 1.0
reconnect_max_s = 30.0
open_timeout_s = 10.0
read_timeout_s = 10.0
gop_cache_max_bytes = "16 MiB"

[web]
listen = ["0.0.0.0:8080"]   # host:port, IPv6 as "[::]:8080"
allowed_hosts = []          # extra Host header values accepted besides the box's own names

[discovery]
timeout_s = 3.0             # 0.5..60: how long `edge discover` listens for cameras' answers
listen = true               # note cameras that announce themselves (WS-Discovery Hello/Bye) while running
interfaces = []             # e.g. ["eth1"] on a box with a separate camera LAN; empty: every interface

[uplink]
enabled = true              # talk to the paired hub (nothing happens until the owner pairs the box)
recorded_rate_mbit = 8.0    # 0.1..1000: upload cap for a recorded range sent to the hub
camera_idle_s = 10.0        # 1..120: a live session ends when its camera sends nothing this long

[log]
level = "info"              # debug, info, warning, error
"""


class _Invalid(Exception):
    """A value is wrong. ``detail`` follows ``<key><where>: `` in the ConfigError; ``where`` is an index."""

    def __init__(self, detail: str, where: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.where = where


_Parser = Callable[[object], Any]


def _quote(text: str, limit: int = 40) -> str:
    if len(text) > limit:
        text = text[:limit] + "…"
    return json.dumps(text, ensure_ascii=False)


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({_quote(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, dt.date | dt.time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def _check_range(value: float, lo: float | None, hi: float | None, unit: str = "") -> None:
    if (lo is None or value >= lo) and (hi is None or value <= hi):
        return
    if lo is not None and hi is not None:
        raise _Invalid(f"must be between {lo} and {hi}{unit}, got {value}")
    if lo is not None:
        raise _Invalid(f"must be at least {lo}{unit}, got {value}")
    raise _Invalid(f"must be at most {hi}{unit}, got {value}")


def _int(lo: int | None = None, hi: int | None = None) -> _Parser:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_describe(value)}")
        _check_range(value, lo, hi)
        return value

    return parse


def _float(lo: float | None = None, hi: float | None = None) -> _Parser:
    def parse(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"expected a number, got {_describe(value)}")
        _check_range(value, lo, hi)
        return float(value)

    return parse


_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024 * GiB,
}
_UNIT_NAMES = "B, kB, MB, GB, TB, KiB, MiB, GiB, TiB"
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_SHARE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


def _size_text(text: str) -> int:
    match = _SIZE.fullmatch(text)
    if match is None:
        raise _Invalid(f'not a size: {_quote(text)} (write e.g. "20 GB" or "500MiB")')
    number, unit = match.groups()
    if not unit:
        raise _Invalid(f"no unit in {_quote(text)} (use {_UNIT_NAMES}, or an integer for bytes)")
    if unit.lower() not in _UNITS:
        raise _Invalid(f"unknown unit '{unit}' in {_quote(text)} (use {_UNIT_NAMES})")
    return int(Decimal(number) * _UNITS[unit.lower()])


def _size(lo: int | None = None, hi: int | None = None) -> _Parser:
    def parse(value: object) -> int:
        if isinstance(value, str):
            size = _size_text(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            size = value
        else:
            raise _Invalid(f'expected bytes (an integer) or a size like "20 GB", got {_describe(value)}')
        _check_range(size, lo, hi, " bytes")
        return size

    return parse


def _budget(value: object) -> StorageBudget:
    if isinstance(value, str) and "%" in value:
        match = _SHARE.fullmatch(value)
        if match is None:
            raise _Invalid(f'not a share: {_quote(value)} (write e.g. "80%")')
        percent = Decimal(match.group(1))
        if not 0 < percent <= 100:
            raise _Invalid(f"share must be more than 0% and at most 100%, got {percent}%")
        return StorageBudget(share=float(percent / 100))
    if isinstance(value, str | int) and not isinstance(value, bool):
        return StorageBudget(bytes=_size(lo=1)(value))
    raise _Invalid(
        f'expected bytes (an integer), a size like "20 GB" or a share like "80%", got {_describe(value)}'
    )


def _absolute_path(value: object) -> Path:
    if not isinstance(value, str):
        raise _Invalid(f"expected a path (a string), got {_describe(value)}")
    if not value.startswith("/") or "\0" in value:
        raise _Invalid(f"expected an absolute path, got {_quote(value)}")
    return Path(value)


def _choice(*choices: str) -> _Parser:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}, got {_describe(value)}")
        return value

    return parse


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")


def _listen_address(value: object) -> ListenAddress:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_describe(value)}")
    host, sep, port = value.rpartition(":")
    bad = _Invalid(f'expected host:port like "0.0.0.0:8080" or "[::]:8080", got {_quote(value)}')
    if not sep or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        try:
            return ListenAddress(str(ipaddress.IPv6Address(host[1:-1])), int(port))
        except ValueError:
            raise bad from None
    try:
        return ListenAddress(str(ipaddress.IPv4Address(host)), int(port))
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(host) is None:
        raise bad
    return ListenAddress(host, int(port))


def _host(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_describe(value)}")
    if not value or any(c.isspace() for c in value):
        raise _Invalid(f"expected a host name, got {_quote(value)}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_describe(value)}")
    return value


def _interface_name(value: object) -> str:
    # Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no slash or whitespace.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", value):
        raise _Invalid(f'expected an interface name like "eth0", got {_describe(value)}')
    return value


def _array(item: _Parser, *, min_items: int = 0) -> _Parser:
    def parse(value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"expected an array, got {_describe(value)}")
        if len(value) < min_items:
            raise _Invalid(f"needs at least {min_items} {'entry' if min_items == 1 else 'entries'}")
        items = []
        for index, entry in enumerate(value):
            try:
                items.append(item(entry))
            except _Invalid as e:
                raise _Invalid(e.detail, f"[{index}]{e.where}") from None
        return tuple(items)

    return parse


# The table: section → (dataclass, key → parser). Defaults come from the dataclasses.
_SECTIONS: Mapping[str, tuple[type[Any], Mapping[str, _Parser]]] = {
    "storage": (
        StorageConfig,
        {
            "data_dir": _absolute_path,
            "budget": _budget,
            "min_free_bytes": _size(lo=0),
            "max_age_s": _int(lo=1),
        },
    ),
    "recording": (
        RecordingConfig,
        {
            "segment_s": _int(1, 3600),
            "fragment_ms": _int(100, 1000),
            "flush_interval_ms": _int(10, 1000),
            "reconnect_min_s": _float(0.1, 3600),
            "reconnect_max_s": _float(0.1, 3600),
            "open_timeout_s": _float(0.1, 600),
            "read_timeout_s": _float(0.1, 600),
            "gop_cache_max_bytes": _size(lo=64 * KiB, hi=GiB),
        },
    ),
    "web": (
        WebConfig,
        {
            "listen": _array(_listen_address, min_items=1),
            "allowed_hosts": _array(_host),
        },
    ),
    "discovery": (
        DiscoveryConfig,
        {"timeout_s": _float(0.5, 60), "listen": _bool, "interfaces": _array(_interface_name)},
    ),
    "uplink": (
        UplinkConfig,
        {"enabled": _bool, "recorded_rate_mbit": _float(0.1, 1000), "camera_idle_s": _float(1, 120)},
    ),
    "log": (LogConfig, {"level": _choice(*LOG_LEVELS)}),
}


def _name(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _cross_checks(config: Config) -> None:
    """Rules between keys; each names the key to change."""
    rec = config.recording
    if rec.reconnect_max_s < rec.reconnect_min_s:
        raise _Invalid(
            f"recording.reconnect_max_s: must be at least recording.reconnect_min_s ({rec.reconnect_min_s}), "
            f"got {rec.reconnect_max_s}"
        )


def _syntax_error(error: tomllib.TOMLDecodeError, text: str, source: str) -> ConfigError:
    message = str(error)
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL)
    if match is not None:
        return ConfigError(f"{source}: line {match[2]}: {match[1]} (column {match[3]})")
    match = re.fullmatch(r"(.*) \(at end of document\)", message, re.DOTALL)
    if match is not None:
        return ConfigError(f"{source}: line {text.count(chr(10)) + 1}: {match[1]} (at end of file)")
    return ConfigError(f"{source}: {message}")


def parse_config(text: str, source: str) -> Config:
    """Parse TOML settings; ``source`` names the file in error messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(e, text, source) from None
    sections: dict[str, Any] = {}
    for section, table in document.items():
        if section not in _SECTIONS:
            kind = "section" if isinstance(table, dict) else "key"
            raise ConfigError(f"{source}: unknown {kind} '{_name(section)}'")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {section}: expected a table, got {_describe(table)}")
        cls, parsers = _SECTIONS[section]
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in parsers:
                raise ConfigError(f"{source}: unknown key '{section}.{_name(key)}'")
            try:
                values[key] = parsers[key](value)
            except _Invalid as e:
                raise ConfigError(f"{source}: {section}.{key}{e.where}: {e.detail}") from None
        sections[section] = cls(**values)
    config = Config(**sections)
    try:
        _cross_checks(config)
    except _Invalid as e:
        raise ConfigError(f"{source}: {e.detail}") from None
    return config


def load_config(path: Path | None) -> Config:
    """Read the settings file; ``None`` gives the defaults (no file at all)."""
    if path is None:
        return Config()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_config(text, str(path))
