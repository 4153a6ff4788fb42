"""Libraries below, wiring above: only edge/daemon.py (and the CLI that runs it) may know everyone."""

from __future__ import annotations

import ast
from pathlib import Path

EDGE = Path(__file__).resolve().parent.parent / "edge"
WIRING = {"edge.daemon", "edge.cli", "edge.__main__", "edge.demo"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_libraries_never_import_the_wiring() -> None:
    offenders = []
    for path in EDGE.rglob("*.py"):
        module = ".".join(path.relative_to(EDGE.parent).with_suffix("").parts)
        if module in WIRING:
            continue
        bad = {i for i in _imports(path) if i in WIRING or any(i.startswith(w + ".") for w in WIRING)}
        if bad:
            offenders.append(f"{module} imports {sorted(bad)}")
    assert offenders == []


def test_recorder_does_not_import_the_other_subsystems() -> None:
    for path in (EDGE / "recorder").rglob("*.py"):
        bad = {
            i
            for i in _imports(path)
            if i.startswith(("edge.discovery", "edge.uplink", "edge.web", "edge.hub"))
        }
        assert not bad, f"{path.name} imports {bad}"


def test_discovery_is_a_library_of_its_own() -> None:
    """Discovery talks to the LAN and reports; storing and deciding is the callers' (cameras, CLI, daemon)."""
    for path in (EDGE / "discovery").rglob("*.py"):
        bad = {
            i
            for i in _imports(path)
            if i.startswith(
                ("edge.store", "edge.cameras", "edge.uplink", "edge.web", "edge.hub", "edge.credentials")
            )
        }
        assert not bad, f"{path.name} imports {bad}"


def test_the_box_never_imports_the_police_hub() -> None:
    """edge/hub is the police side. Only the command line that registers `edge hub …` (edge/paircli.py,
    lazily) and the demo (both parties in one process, edge/demo.py) may name it; and the hub uses the box's
    protocol libraries, never the box's own state."""
    offenders = []
    for path in EDGE.rglob("*.py"):
        module = ".".join(path.relative_to(EDGE.parent).with_suffix("").parts)
        in_hub = module == "edge.hub" or module.startswith("edge.hub.")
        if in_hub:
            box_state = ("edge.store", "edge.audit", "edge.daemon", "edge.uplink.pairing", "edge.uplink.gate",
                         "edge.recorder", "edge.discovery", "edge.cameras", "edge.credentials")  # fmt: skip
            bad = {
                i for i in _imports(path) if i in box_state or i.startswith(tuple(w + "." for w in box_state))
            }
        elif module in ("edge.paircli", "edge.demo"):
            continue
        else:
            bad = {i for i in _imports(path) if i == "edge.hub" or i.startswith("edge.hub.")}
        if bad:
            offenders.append(f"{module} imports {sorted(bad)}")
    assert offenders == []
