"""The sync core is pure: no I/O, threads, clocks or network libraries (SPEC §6)."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import p2psync.core

FORBIDDEN = frozenset(
    {
        "trio",
        "sqlite3",
        "libp2p",
        "zeroconf",
        "socket",
        "asyncio",
        "threading",
        "time",
        "hypercorn",
    }
)
CORE_DIR = Path(p2psync.core.__file__).parent


def _core_modules() -> list[str]:
    names = [f"p2psync.core.{info.name}" for info in pkgutil.iter_modules([str(CORE_DIR)])]
    return ["p2psync.core", *sorted(names)]


def test_core_modules_are_discovered() -> None:
    modules = _core_modules()
    for expected in (
        "ids",
        "hlc",
        "ops",
        "entry",
        "progress",
        "recipes",
        "protocol",
        "engine",
        "errors",
    ):
        assert f"p2psync.core.{expected}" in modules


def test_importing_core_loads_no_forbidden_module() -> None:
    modules = _core_modules()
    # Record what the interpreter loaded at start-up (it preloads `time` itself),
    # then import every core module and see what new top-level names appeared.
    script = (
        "import importlib, json, sys\n"
        "before = {m.split('.')[0] for m in sys.modules}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "after = {m.split('.')[0] for m in sys.modules}\n"
        "print(json.dumps(sorted(after - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=str(CORE_DIR.parent.parent),
    )
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "p2psync" in loaded  # the import really happened
    assert not (loaded & FORBIDDEN), f"core pulls in {sorted(loaded & FORBIDDEN)}"
    # The allowed third-party libraries are the only heavy ones it needs.
    assert not any(name.startswith(("libp2p", "multiaddr", "prometheus")) for name in loaded)


def _imported_names(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (getattr(node.func, "id", None) or getattr(node.func, "attr", None))
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno))
    return found


def test_core_sources_import_no_forbidden_module() -> None:
    sources = sorted(CORE_DIR.glob("*.py"))
    assert len(sources) >= 10
    offences = []
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in _imported_names(tree):
            if name.split(".")[0] in FORBIDDEN:
                offences.append(f"{path.name}:{line} imports {name}")
    assert not offences, offences


def test_ast_scan_would_catch_a_forbidden_import() -> None:
    tree = ast.parse(
        "import time\nfrom trio import sleep\nimport os.path\nimportlib.import_module('sqlite3')\n"
    )
    names = {name.split(".")[0] for name, _ in _imported_names(tree)}
    assert {"time", "trio", "sqlite3"} <= names
