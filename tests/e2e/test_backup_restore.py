"""`p2psync backup` of a running node, `p2psync restore` into a fresh data dir.

The restored node is the same peer with the same recipes. Loopback only,
--no-mdns (helpers.node_env).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.e2e.helpers import NodeProcess, run_cli, start_node

pytestmark = pytest.mark.e2e


def test_backup_while_running_then_restore_into_a_fresh_data_dir(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    root, first_dir, second_dir = tmp_path / "root", tmp_path / "first", tmp_path / "second"
    backup = tmp_path / "backup"
    node = start_node(nodes, root, "--data-dir", str(first_dir))
    for number in range(3):
        body = {"name": f"soup {number}", "ingredients": "water", "instructions": "boil"}
        assert node.post("/api/v0/recipes", body).status_code == 201
    peer_id = node.get("/api/v0/status")["peer_id"]
    recipes = node.get("/api/v0/recipes")
    assert len(recipes) == 3

    done = run_cli(["backup", str(backup), "--data-dir", str(first_dir)], root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote backup of {first_dir} to {backup}")
    assert node.proc.poll() is None  # the node ran on
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in backup.iterdir())
    assert node.stop() == 0

    done = run_cli(["restore", str(backup), "--data-dir", str(second_dir)], root)
    assert done.returncode == 0, done.stderr
    assert "catch up with its peers" in done.stderr

    restored = start_node(nodes, root, "--data-dir", str(second_dir))
    assert restored.get("/api/v0/status")["peer_id"] == peer_id
    assert restored.get("/api/v0/recipes") == recipes
