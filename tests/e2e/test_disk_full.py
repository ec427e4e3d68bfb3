"""A full disk: writes are refused with a clear error, nothing acknowledged is
lost, and the node carries on once space returns. Root only (tmpfs mount)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import NodeProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def resize(mount_point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


def test_full_disk_refuses_writes_then_recovers(tmp_path: Path, small_disk: Path) -> None:
    data_dir = small_disk / "node"
    node = NodeProcess(tmp_path, ["--data-dir", str(data_dir)])
    acknowledged: list[str] = []
    try:
        body = {"name": "Soup", "ingredients": "water " * 200, "instructions": "boil " * 600}
        refusal = None
        for _ in range(2000):
            response = node.post("/api/v0/recipes", body)
            if response.status_code == 201:
                acknowledged.append(response.json()["id"])
                continue
            refusal = response
            break
        assert refusal is not None, "the 1.2 MB disk never filled up"
        assert refusal.status_code == 503
        message = refusal.json()["error"]
        assert "full" in message and "\n" not in message
        # Refused, not crashed: reads still work, and nothing acknowledged is gone.
        assert {r["id"] for r in node.get("/api/v0/recipes")} >= set(acknowledged)

        resize(small_disk, "16m")
        after = node.post(
            "/api/v0/recipes", {"name": "After", "ingredients": "i", "instructions": "s"}
        )
        assert after.status_code == 201, after.text
        acknowledged.append(after.json()["id"])
        status = node.get("/api/v0/status")
        assert status["entries"] == len(acknowledged)
    finally:
        node.stop(signal.SIGKILL)  # no goodbye: acknowledged ops must survive kill -9

    restarted = NodeProcess(tmp_path, ["--data-dir", str(data_dir)])
    try:
        ids = {r["id"] for r in restarted.get("/api/v0/recipes")}
        assert ids == set(acknowledged)
        sync = restarted.get("/api/v0/sync")["self"]
        assert sum(o["held"] for o in sync.values()) == restarted.get("/api/v0/status")["entries"]
        metrics = httpx.get(f"{restarted.api}/metrics", timeout=10).text
        assert "p2psync_entries_total" in metrics
    finally:
        assert restarted.stop() == 0
