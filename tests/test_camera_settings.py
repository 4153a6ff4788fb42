"""Camera management beyond add/remove: consent level, location, `edge cameras set`, schema upgrade."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from edge.store import MIGRATIONS, Store
from tests.harness import edge_cli, write_config

SYNTH = "synthetic:?w=320&h=240&fps=10&gop=1"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path / "edge.toml", tmp_path / "data")


def _cams(cfg: Path) -> list[dict[str, object]]:
    return list(json.loads(edge_cli(cfg, "cameras", "list", "--json").stdout))


def test_new_camera_is_private_with_no_location(cfg: Path) -> None:
    edge_cli(cfg, "cameras", "add", SYNTH, "--name", "till")
    (cam,) = _cams(cfg)
    assert cam["consent"] == "private"
    assert cam["location"] is None and cam["lat"] is None and cam["lon"] is None


def test_set_name_location_position_and_consent(cfg: Path) -> None:
    edge_cli(cfg, "cameras", "add", SYNTH, "--name", "till")
    out = edge_cli(
        cfg, "cameras", "set", "1", "--name", "Back door", "--location", "above the bins",
        "--lat", "51.50135", "--lon", "-0.14189",
    ).stdout  # fmt: skip
    assert "name till -> Back door" in out
    out = edge_cli(cfg, "consent", "set", "1", "--level", "integrated").stdout
    assert "consent private -> integrated" in out
    (cam,) = _cams(cfg)
    assert cam["name"] == "Back door"
    assert cam["location"] == "above the bins"
    assert (cam["lat"], cam["lon"]) == (51.50135, -0.14189)
    assert cam["consent"] == "integrated"
    table = edge_cli(cfg, "cameras", "list").stdout
    assert "integrated" in table and "above the bins (51.50135, -0.14189)" in table


def test_integrated_needs_a_position(cfg: Path) -> None:
    """Police access is promised only for emergencies near the camera: no position, no integration."""
    edge_cli(cfg, "cameras", "add", SYNTH)
    proc = edge_cli(cfg, "consent", "set", "1", "--level", "integrated", check=False)
    assert proc.returncode == 1
    assert "needs --lat/--lon" in proc.stderr and "Traceback" not in proc.stderr
    assert _cams(cfg)[0]["consent"] == "private"
    # Once integrated, the position cannot be dropped while the camera stays integrated.
    edge_cli(cfg, "cameras", "set", "1", "--lat", "40.0", "--lon", "-3.7")
    edge_cli(cfg, "consent", "set", "1", "--level", "integrated")
    proc = edge_cli(cfg, "cameras", "set", "1", "--no-position", check=False)
    assert proc.returncode == 1 and "needs --lat/--lon" in proc.stderr
    edge_cli(cfg, "consent", "set", "1", "--level", "registered")
    edge_cli(cfg, "cameras", "set", "1", "--no-position")
    cam = _cams(cfg)[0]
    assert (cam["consent"], cam["lat"], cam["lon"]) == ("registered", None, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lat", "91", "--lon", "0"], "invalid value"),
        (["--lat", "10"], "both --lat and --lon"),
        (["--name", "  "], "--name cannot be empty"),
        ([], "nothing to change"),
    ],
)
def test_bad_settings_are_refused_and_change_nothing(cfg: Path, args: list[str], message: str) -> None:
    edge_cli(cfg, "cameras", "add", SYNTH, "--name", "till")
    before = _cams(cfg)
    proc = edge_cli(cfg, "cameras", "set", "1", *args, check=False)
    assert proc.returncode in (1, 2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert _cams(cfg) == before


def test_bad_consent_value_is_a_usage_error(cfg: Path) -> None:
    edge_cli(cfg, "cameras", "add", SYNTH)
    proc = edge_cli(cfg, "consent", "set", "1", "--level", "public", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_set_on_removed_or_unknown_camera(cfg: Path) -> None:
    edge_cli(cfg, "cameras", "add", SYNTH)
    edge_cli(cfg, "cameras", "remove", "1")
    for cam_id in ("1", "7"):
        proc = edge_cli(cfg, "cameras", "set", cam_id, "--name", "x", check=False)
        assert proc.returncode == 1 and "camera with id" in proc.stderr


def test_same_stream_twice_is_allowed_with_a_note(cfg: Path) -> None:
    url = "rtsp://192.0.2.10:554/stream1"  # never contacted: adding only writes the database
    edge_cli(cfg, "cameras", "add", url, "--name", "a")
    proc = edge_cli(cfg, "cameras", "add", url, "--name", "b")
    assert "camera 1 (a) records the same stream already" in proc.stderr
    assert [c["name"] for c in _cams(cfg)] == ["a", "b"]


def test_upgrade_from_schema_1_keeps_cameras_private(tmp_path: Path) -> None:
    """A box recording under the first schema upgrades in place; its cameras come out private."""
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "edge.db", isolation_level=None)
    MIGRATIONS[0](sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO cameras (name, url, created_utc_ns) VALUES ('old', 'rtsp://192.0.2.1/s', 1)")
    conn.close()
    store = Store.open(data)
    try:
        assert store.schema_version == len(MIGRATIONS)
        (cam,) = store.cameras()
        assert (cam.name, cam.consent, cam.location, cam.onvif_url) == ("old", "private", None, None)
    finally:
        store.close()


def _limits(cfg: Path) -> tuple[object, ...]:
    cam = _cams(cfg)[0]
    return tuple(
        cam[k] for k in ("radius_m", "allow_live", "max_session_s", "max_lookback_s", "hourly_quota")
    )


def test_owner_limits_on_police_access_are_set_and_logged_as_consent(cfg: Path) -> None:
    edge_cli(cfg, "cameras", "add", SYNTH)
    assert _limits(cfg) == (300, True, 900, 7 * 86400, 4)
    edge_cli(
        cfg, "consent", "set", "1", "--radius", "500", "--recorded-only", "--max-dur", "10m",
        "--lookback", "2d", "--quota", "2",
    )  # fmt: skip
    assert _limits(cfg) == (500, False, 600, 2 * 86400, 2)
    (entry,) = [
        json.loads(x)
        for x in edge_cli(cfg, "audit", "show", "--json", "--type", "consent").stdout.splitlines()
    ]
    assert entry["details"] == {
        "radius_m": [300, 500], "allow_live": [True, False], "max_session_s": [900, 600],
        "max_lookback_s": [604800, 172800], "hourly_quota": [4, 2],
    }  # fmt: skip
    proc = edge_cli(cfg, "consent", "set", "1", "--max-dur", "2h", check=False)
    assert proc.returncode == 1 and "invalid value" in proc.stderr  # over the 60 min hard cap
    assert _cams(cfg)[0]["max_session_s"] == 600


def test_consent_set_and_withdraw_from_the_command_line(cfg: Path) -> None:
    edge_cli(cfg, "cameras", "add", SYNTH, "--name", "door")
    edge_cli(cfg, "cameras", "add", SYNTH, "--name", "yard")
    proc = edge_cli(cfg, "consent", "set", "1", "--level", "integrated", check=False)
    assert proc.returncode == 1 and "needs --lat/--lon" in proc.stderr
    edge_cli(cfg, "cameras", "set", "1", "--lat", "51.5", "--lon", "-0.14")
    out = edge_cli(
        cfg, "consent", "set", "1", "--level", "integrated", "--recorded-only", "--max-dur", "5m"
    ).stdout
    assert "integrated: recordings only, within 300 m" in out and "sessions up to 5 min" in out
    edge_cli(cfg, "consent", "set", "2", "--level", "registered")
    out = edge_cli(cfg, "consent", "withdraw", "--all").stdout
    assert "integrated -> private" in out and "registered -> private" in out
    assert {c["consent"] for c in json.loads(edge_cli(cfg, "consent", "show", "--json").stdout)} == {
        "private"
    }
    kinds = [
        json.loads(x)["details"]
        for x in edge_cli(cfg, "audit", "show", "--json", "--type", "consent").stdout.splitlines()
    ]
    assert kinds[-2:] == [{"from": "integrated", "to": "private"}, {"from": "registered", "to": "private"}]


def test_kill_switch_and_owner_contact_from_the_command_line(cfg: Path) -> None:
    out = edge_cli(cfg, "killswitch").stdout
    assert "kill switch engaged" in out
    assert "already engaged" in edge_cli(cfg, "killswitch").stdout
    assert json.loads(edge_cli(cfg, "owner", "show").stdout)["killswitch_utc_ns"] is not None
    assert "released" in edge_cli(cfg, "killswitch", "--release").stdout
    edge_cli(cfg, "owner", "set", "--email", "shop@example.org", "--phone", "+44 20 7946 0000")
    proc = edge_cli(cfg, "owner", "set", "--email", "not-an-address", check=False)
    assert proc.returncode == 1 and "not an e-mail address" in proc.stderr
    info = json.loads(edge_cli(cfg, "owner", "show").stdout)
    assert info == {"email": "shop@example.org", "phone": "+44 20 7946 0000", "killswitch_utc_ns": None}
    kinds = [json.loads(x)["type"] for x in edge_cli(cfg, "audit", "show", "--json").stdout.splitlines()]
    assert kinds == ["killswitch", "killswitch", "owner.changed"]
