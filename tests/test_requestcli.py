"""`edge requests` and `edge share` from the command line, without a hub (the end-to-end cases are in
tests/test_uplink_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import edge_cli, write_config


def test_no_requests_yet_and_a_jti_that_starts_with_a_dash(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "edge.toml", tmp_path / "data")
    assert edge_cli(cfg, "requests").stdout.strip() == "no requests"
    assert edge_cli(cfg, "requests", "--notices").stdout.strip() == "no notices"
    assert json.loads(edge_cli(cfg, "requests", "--json").stdout) == []
    # A jti is base64url and may start with "-": as --request=JTI it reaches the daemon (none runs here).
    share = edge_cli(
        cfg, "share", "--request=-Xy_0a", "--camera", "1", "--from", "-4s", "--to", "-1s", check=False
    )
    assert share.returncode == 1 and "no edge daemon is running" in share.stderr, share.stderr
    backwards = edge_cli(
        cfg, "share", "--request=x", "--camera", "1", "--from", "-1s", "--to", "-4s", check=False
    )
    assert backwards.returncode != 0 and "--to must be after --from" in backwards.stderr
