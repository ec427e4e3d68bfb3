"""The rooms of p2psync and the arrows between them (docs/ARCHITECTURE.md).

- core/ imports only core/;
- store/ and net/ never import node/ (nor the faces);
- nothing imports the faces (api/, cli/) but the faces themselves and the
  outer wiring module, p2psync/app.py;
- node/ never imports store/ or api/ or cli/: it gets a Store and an
  Observer handed in;
- no module is longer than ~450 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2psync

PACKAGE = Path(p2psync.__file__).parent
MAX_LINES = 460
FACES = ("api", "cli")
WIRING = "app"


def _room(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _p2psync_imports(path: Path) -> list[tuple[str, int]]:
    """Rooms this file imports from (p2psync.<room>...), with line numbers."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "p2psync" and len(parts) > 1:
                found.append((parts[1], node.lineno))
    return found


ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "store": {"core", "store"},
    "net": {"core", "net"},
    "node": {"core", "net", "node"},
    "api": {"core", "node", "net", "api"},
    "cli": {"core", "node", "net", "cli", WIRING},
    WIRING: {"core", "node", "net", "store", "api", "cli"},
    "__main__": {"cli"},
    "__init__": set(),
    "web": set(),  # the dashboard's assets: package data, no code to import
}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _offences() -> list[str]:
    offences = []
    for path in _sources():
        room = _room(path)
        allowed = ALLOWED.get(room)
        assert allowed is not None, f"{path} is in a room the architecture does not know"
        for imported, line in _p2psync_imports(path):
            if imported not in allowed:
                offences.append(f"{path.relative_to(PACKAGE)}:{line} ({room}) imports {imported}")
    return offences


def test_imports_follow_the_arrows() -> None:
    assert not _offences()


def test_only_the_wiring_and_the_faces_import_the_faces() -> None:
    for room, allowed in ALLOWED.items():
        if room in (*FACES, WIRING, "__main__"):
            continue
        assert not (allowed & set(FACES)), room


def test_the_check_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import p2psync.api.http\nfrom p2psync.cli import repl\nimport os\n")
    assert _p2psync_imports(sample) == [("api", 1), ("cli", 2)]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines: split it by concern"
