"""edge.config: TOML in, frozen dataclasses out, one-line errors naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge import config as cfg
from edge.config import (
    EXAMPLE_TOML,
    GiB,
    KiB,
    ListenAddress,
    MiB,
    StorageBudget,
    load_config,
    parse_config,
)
from edge.errors import ConfigError


def load_config_text(text: str) -> cfg.Config:
    return parse_config(text, "edge.toml")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "edge.toml")
    message = str(info.value)
    assert "\n" not in message
    assert info.value.__cause__ is None  # no chained traceback from tomllib or our parsers
    assert info.value.__context__ is None or info.value.__suppress_context__
    return message


# --- defaults ---------------------------------------------------------------------------------------------


def test_no_file_gives_the_documented_defaults() -> None:
    config = load_config(None)
    assert config.storage.data_dir == Path("/var/lib/edge")
    assert config.storage.budget == StorageBudget(share=0.9)
    assert config.storage.min_free_bytes == 256 * MiB
    assert config.storage.max_age_s is None
    rec = config.recording
    assert (rec.segment_s, rec.fragment_ms, rec.flush_interval_ms) == (60, 500, 500)
    assert (rec.reconnect_min_s, rec.reconnect_max_s) == (1.0, 30.0)
    assert (rec.open_timeout_s, rec.read_timeout_s) == (10.0, 10.0)
    assert rec.gop_cache_max_bytes == 16 * MiB
    assert config.web.listen == (ListenAddress("0.0.0.0", 8080),)
    assert config.web.allowed_hosts == ()
    assert config.log.level == "info"


def test_empty_file_is_the_defaults() -> None:
    assert parse_config("", "edge.toml") == load_config(None)


def test_example_file_spells_out_exactly_the_defaults() -> None:
    assert parse_config(EXAMPLE_TOML, "example") == load_config(None)


def test_every_dataclass_field_has_a_parser_and_back() -> None:
    for section, (cls, parsers) in cfg._SECTIONS.items():
        assert {f.name for f in dataclasses.fields(cls)} == set(parsers), section
    assert set(cfg._SECTIONS) == {f.name for f in dataclasses.fields(cfg.Config)}


def test_config_is_frozen() -> None:
    config = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.recording.segment_s = 5  # type: ignore[misc]


# --- every key --------------------------------------------------------------------------------------------

FULL = """
[storage]
data_dir = "/srv/edge"
budget = "20 GB"
min_free_bytes = 1073741824
max_age_s = 604800

[recording]
segment_s = 120
fragment_ms = 500
flush_interval_ms = 250
reconnect_min_s = 0.5
reconnect_max_s = 60
open_timeout_s = 5
read_timeout_s = 7.5
gop_cache_max_bytes = "32MiB"

[web]
listen = ["192.168.1.2:80", "[::]:8443", "edge-1a2b.local:8080"]
allowed_hosts = ["edge-1a2b.local", "camera-box.lan:8080"]

[log]
level = "debug"
"""


def test_every_key_is_read() -> None:
    config = load_config_text(FULL)
    assert config.storage == cfg.StorageConfig(
        data_dir=Path("/srv/edge"),
        budget=StorageBudget(bytes=20_000_000_000),
        min_free_bytes=GiB,
        max_age_s=604800,
    )
    assert config.recording == cfg.RecordingConfig(
        segment_s=120,
        fragment_ms=500,
        flush_interval_ms=250,
        reconnect_min_s=0.5,
        reconnect_max_s=60.0,
        open_timeout_s=5.0,
        read_timeout_s=7.5,
        gop_cache_max_bytes=32 * MiB,
    )
    assert isinstance(config.recording.reconnect_max_s, float)
    assert config.web.listen == (
        ListenAddress("192.168.1.2", 80),
        ListenAddress("::", 8443),
        ListenAddress("edge-1a2b.local", 8080),
    )
    assert [str(a) for a in config.web.listen] == ["192.168.1.2:80", "[::]:8443", "edge-1a2b.local:8080"]
    assert config.web.allowed_hosts == ("edge-1a2b.local", "camera-box.lan:8080")
    assert config.log.level == "debug"


def test_a_section_may_set_only_some_keys() -> None:
    config = load_config_text("[recording]\nsegment_s = 30\n")
    assert config.recording.segment_s == 30
    assert config.recording.fragment_ms == 500
    assert config.storage == load_config(None).storage


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1234567, 1234567),
        ("20 GB", 20 * 1000**3),
        ("20GB", 20 * 1000**3),
        ("500MiB", 500 * MiB),
        ("500 mib", 500 * MiB),
        ("1.5 GiB", 3 * GiB // 2),
        ("64 KiB", 64 * KiB),
        ("2 TB", 2 * 1000**4),
        ("1 TiB", 1024 * GiB),
        ("4096 B", 4096),
        ("3 kB", 3000),
    ],
)
def test_sizes_take_bytes_or_units(text: object, expected: int) -> None:
    value = f'"{text}"' if isinstance(text, str) else str(text)
    config = load_config_text(f"[storage]\nbudget = {value}\nmin_free_bytes = {value}\n")
    assert config.storage.budget == StorageBudget(bytes=expected)
    assert config.storage.min_free_bytes == expected


@pytest.mark.parametrize(("text", "share"), [("80%", 0.8), ("100 %", 1.0), ("12.5%", 0.125), ("0.5%", 0.005)])
def test_budget_as_share_of_the_partition(text: str, share: float) -> None:
    budget = load_config_text(f'[storage]\nbudget = "{text}"\n').storage.budget
    assert budget == StorageBudget(share=share)


def test_budget_resolves_against_the_partition() -> None:
    assert StorageBudget(share=0.9).resolve(1000) == 900
    assert StorageBudget(share=0.29).resolve(100) == 29  # no float rounding down to 28
    assert StorageBudget(share=0.8).resolve(64 * GiB) == int(64 * GiB * 4 // 5)
    assert StorageBudget(share=1.0).resolve(123_456_789_012) == 123_456_789_012
    assert StorageBudget(bytes=20 * GiB).resolve(10 * GiB) == 20 * GiB  # absolute means absolute


@pytest.mark.parametrize(
    "kwargs", [{}, {"bytes": 1, "share": 0.5}, {"bytes": 0}, {"share": 0.0}, {"share": 1.5}]
)
def test_budget_refuses_an_impossible_value(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="StorageBudget"):
        StorageBudget(**kwargs)  # type: ignore[arg-type]


def test_file_is_read_with_its_path_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[log]\nlevel = "warning"\n')
    assert load_config(path).log.level == "warning"
    path.write_text("[log]\nlevle = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: unknown key 'log.levle'"
    assert info.value.kind == "config"


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file or directory$"):
        load_config(missing)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'[log]\nlevel = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(binary)
    assert str(info.value) == f"{binary}: not UTF-8 text (byte 15)"


# --- errors: exact one-line messages ----------------------------------------------------------------------

LISTEN_0 = 'edge.toml: web.listen[0]: expected host:port like "0.0.0.0:8080" or "[::]:8080", got '


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # unknown names
        ("[storage]\nbudgit = 1\n", "edge.toml: unknown key 'storage.budgit'"),
        ("[stroage]\nbudget = 1\n", "edge.toml: unknown section 'stroage'"),
        ("verbose = true\n", "edge.toml: unknown key 'verbose'"),
        ("[storage.extra]\nx = 1\n", "edge.toml: unknown key 'storage.extra'"),
        ('[storage]\n"a\\nb" = 1\n', "edge.toml: unknown key 'storage.\"a\\nb\"'"),
        ("storage = 5\n", "edge.toml: storage: expected a table, got an integer (5)"),
        # wrong types
        (
            '[recording]\nsegment_s = "60"\n',
            'edge.toml: recording.segment_s: expected an integer, got a string ("60")',
        ),
        (
            "[recording]\nsegment_s = true\n",
            "edge.toml: recording.segment_s: expected an integer, got a boolean (true)",
        ),
        (
            "[recording]\nsegment_s = 60.0\n",
            "edge.toml: recording.segment_s: expected an integer, got a float (60.0)",
        ),
        (
            "[recording]\nreconnect_min_s = false\n",
            "edge.toml: recording.reconnect_min_s: expected a number, got a boolean (false)",
        ),
        (
            "[recording]\nopen_timeout_s = [1]\n",
            "edge.toml: recording.open_timeout_s: expected a number, got an array",
        ),
        (
            "[storage]\nmin_free_bytes = true\n",
            'edge.toml: storage.min_free_bytes: expected bytes (an integer) or a size like "20 GB", '
            "got a boolean (true)",
        ),
        (
            "[storage]\nbudget = false\n",
            'edge.toml: storage.budget: expected bytes (an integer), a size like "20 GB" '
            'or a share like "80%", got a boolean (false)',
        ),
        (
            "[storage]\ndata_dir = 5\n",
            "edge.toml: storage.data_dir: expected a path (a string), got an integer (5)",
        ),
        (
            '[storage]\ndata_dir = "data"\n',
            'edge.toml: storage.data_dir: expected an absolute path, got "data"',
        ),
        (
            "[storage]\nmax_age_s = 1979-05-27\n",
            "edge.toml: storage.max_age_s: expected an integer, got a date/time (1979-05-27)",
        ),
        (
            '[web]\nlisten = "0.0.0.0:8080"\n',
            'edge.toml: web.listen: expected an array, got a string ("0.0.0.0:8080")',
        ),
        (
            '[web]\nallowed_hosts = ["a", 3]\n',
            "edge.toml: web.allowed_hosts[1]: expected a string, got an integer (3)",
        ),
        (
            '[web]\nallowed_hosts = ["a b"]\n',
            'edge.toml: web.allowed_hosts[0]: expected a host name, got "a b"',
        ),
        (
            '[log]\nlevel = "verbose"\n',
            'edge.toml: log.level: expected one of debug, info, warning, error, got a string ("verbose")',
        ),
        (
            '[log]\nlevel = "INFO"\n',
            'edge.toml: log.level: expected one of debug, info, warning, error, got a string ("INFO")',
        ),
        # sizes and shares
        (
            '[storage]\nbudget = "20 GX"\n',
            "edge.toml: storage.budget: unknown unit 'GX' in \"20 GX\" "
            "(use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)",
        ),
        (
            '[storage]\nmin_free_bytes = "256"\n',
            'edge.toml: storage.min_free_bytes: no unit in "256" (use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, '
            "or an integer for bytes)",
        ),
        (
            '[storage]\nmin_free_bytes = "lots"\n',
            'edge.toml: storage.min_free_bytes: not a size: "lots" (write e.g. "20 GB" or "500MiB")',
        ),
        (
            '[storage]\nbudget = "150%"\n',
            "edge.toml: storage.budget: share must be more than 0% and at most 100%, got 150%",
        ),
        (
            '[storage]\nbudget = "0%"\n',
            "edge.toml: storage.budget: share must be more than 0% and at most 100%, got 0%",
        ),
        ('[storage]\nbudget = "80%%"\n', 'edge.toml: storage.budget: not a share: "80%%" (write e.g. "80%")'),
        ("[storage]\nbudget = 0\n", "edge.toml: storage.budget: must be at least 1 bytes, got 0"),
        # ranges
        ("[recording]\nsegment_s = 0\n", "edge.toml: recording.segment_s: must be between 1 and 3600, got 0"),
        (
            "[recording]\nsegment_s = 3601\n",
            "edge.toml: recording.segment_s: must be between 1 and 3600, got 3601",
        ),
        (
            "[recording]\nfragment_ms = 1001\n",
            "edge.toml: recording.fragment_ms: must be between 100 and 1000, got 1001",
        ),
        (
            "[recording]\nfragment_ms = 99\n",
            "edge.toml: recording.fragment_ms: must be between 100 and 1000, got 99",
        ),
        (
            "[recording]\nflush_interval_ms = 5000\n",
            "edge.toml: recording.flush_interval_ms: must be between 10 and 1000, got 5000",
        ),
        (
            "[recording]\nread_timeout_s = 0\n",
            "edge.toml: recording.read_timeout_s: must be between 0.1 and 600, got 0",
        ),
        (
            "[recording]\nread_timeout_s = nan\n",
            "edge.toml: recording.read_timeout_s: must be between 0.1 and 600, got nan",
        ),
        (
            '[recording]\ngop_cache_max_bytes = "2 GiB"\n',
            "edge.toml: recording.gop_cache_max_bytes: "
            "must be between 65536 and 1073741824 bytes, got 2147483648",
        ),
        ("[storage]\nmax_age_s = 0\n", "edge.toml: storage.max_age_s: must be at least 1, got 0"),
        (
            "[storage]\nmin_free_bytes = -1\n",
            "edge.toml: storage.min_free_bytes: must be at least 0 bytes, got -1",
        ),
        (
            "[recording]\nreconnect_min_s = 10\nreconnect_max_s = 5\n",
            "edge.toml: recording.reconnect_max_s: "
            "must be at least recording.reconnect_min_s (10.0), got 5.0",
        ),
        # listen addresses
        ("[web]\nlisten = []\n", "edge.toml: web.listen: needs at least 1 entry"),
        (
            '[web]\nlisten = ["0.0.0.0:8080", "::1:80"]\n',
            'edge.toml: web.listen[1]: expected host:port like "0.0.0.0:8080" or "[::]:8080", got "::1:80"',
        ),
        (
            '[web]\nlisten = ["0.0.0.0"]\n',
            LISTEN_0 + '"0.0.0.0"',
        ),
        (
            '[web]\nlisten = ["0.0.0.0:70000"]\n',
            LISTEN_0 + '"0.0.0.0:70000"',
        ),
        (
            '[web]\nlisten = ["[zz::1]:80"]\n',
            LISTEN_0 + '"[zz::1]:80"',
        ),
        (
            '[web]\nlisten = ["bad_host!:80"]\n',
            LISTEN_0 + '"bad_host!:80"',
        ),
        ("[web]\nlisten = [8080]\n", "edge.toml: web.listen[0]: expected a string, got an integer (8080)"),
        # TOML syntax
        ("[log]\nlevel = \n", "edge.toml: line 2: Invalid value (column 9)"),
        ("[log]\n\nlevel = @\n", "edge.toml: line 3: Invalid value (column 9)"),
        ("[log\n", "edge.toml: line 1: Expected ']' at the end of a table declaration (column 5)"),
        ('[log]\nlevel = "info', "edge.toml: line 2: Unterminated string (at end of file)"),
        ("[log]\nlevel = 'a'\nlevel = 'b'\n", "edge.toml: line 3: Cannot overwrite a value (column 12)"),
    ],
)
def test_error_messages(text: str, message: str) -> None:
    assert error(text) == message


def test_long_string_values_are_cut_in_errors() -> None:
    message = error(f'[log]\nlevel = "{"x" * 500}"\n')
    assert message == (
        'edge.toml: log.level: expected one of debug, info, warning, error, got a string ("'
        + "x" * 40
        + '…")'
    )


def test_newline_in_a_value_stays_on_one_line() -> None:
    assert error('[log]\nlevel = "a\\nb"\n') == (
        'edge.toml: log.level: expected one of debug, info, warning, error, got a string ("a\\nb")'
    )
