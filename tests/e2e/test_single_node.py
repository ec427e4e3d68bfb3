"""One real node: the scripted REPL session of issue 3, restart, API agreement."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.e2e.helpers import NodeProcess, run_cli


def test_scripted_session_survives_restart(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = run_cli(
        ["run", "--no-mdns", "--data-dir", str(data)],
        tmp_path,
        stdin="create r Pancakes|flour,egg,milk|whisk\nls r\nquit\n",
    )
    assert first.returncode == 0, first.stderr
    assert "Pancakes" in first.stdout
    peer_id = run_cli(["id", "--data-dir", str(data)], tmp_path).stdout.strip()
    assert peer_id.startswith("12D3KooW")

    second = run_cli(
        ["run", "--no-mdns", "--data-dir", str(data)], tmp_path, stdin="ls r\nstatus\nquit\n"
    )
    assert second.returncode == 0, second.stderr
    assert "Pancakes" in second.stdout
    assert peer_id in second.stdout
    assert run_cli(["id", "--data-dir", str(data)], tmp_path).stdout.strip() == peer_id

    node = NodeProcess(tmp_path, ["--data-dir", str(data)])
    try:
        recipes = node.get("/api/v0/recipes")
        assert [r["name"] for r in recipes] == ["Pancakes"]
        assert recipes[0]["author"] == peer_id and recipes[0]["published"] is False
        status = node.get("/api/v0/status")
        assert status["peer_id"] == peer_id and status["recipes"] == 1 and status["entries"] == 1
        digest_line = [line for line in second.stdout.splitlines() if status["digest"] in line]
        assert digest_line, "REPL status and API show different digests"
    finally:
        assert node.stop(signal.SIGTERM) == 0


def test_api_create_publish_delete_and_metrics(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, ["--data-dir", str(tmp_path / "d")])
    try:
        created = node.post(
            "/api/v0/recipes", {"name": "Soup", "ingredients": "water", "instructions": "boil"}
        )
        assert created.status_code == 201
        recipe_id = created.json()["id"]
        published = node.post(f"/api/v0/recipes/{recipe_id}/publish")
        assert published.status_code == 200 and published.json()["published"] is True
        assert published.json()["id"] == recipe_id
        bad = node.post("/api/v0/recipes", {"name": ""})
        assert bad.status_code == 400 and "error" in bad.json()
        import httpx

        assert httpx.delete(f"{node.api}/api/v0/recipes/{recipe_id}", timeout=10).status_code == 204
        assert httpx.delete(f"{node.api}/api/v0/recipes/{recipe_id}", timeout=10).status_code == 404
        assert node.get("/api/v0/recipes") == []
        metrics = httpx.get(f"{node.api}/metrics", timeout=10).text
        assert 'p2psync_entries_total{origin_kind="own"} 3.0' in metrics
        assert node.get("/api/v0/sync")["self"]
        # The daemon checkpoints its WAL in a worker thread (about a second after commits).
        deadline = time.monotonic() + 10
        while "p2psync_wal_checkpoint_seconds_count 0.0" in metrics:
            assert time.monotonic() < deadline, "no WAL checkpoint after 10 s"
            time.sleep(0.2)
            metrics = httpx.get(f"{node.api}/metrics", timeout=10).text
        assert "p2psync_wal_checkpoint_seconds_count" in metrics
    finally:
        assert node.stop(signal.SIGINT) == 0


def test_generator_is_deterministic(tmp_path: Path) -> None:
    digests = []
    for name in ("a", "b"):
        node = NodeProcess(
            tmp_path, ["--data-dir", str(tmp_path / name), "--initial-ops", "300", "--seed", "5"]
        )
        try:
            import time

            deadline = time.monotonic() + 30
            while node.get("/api/v0/status")["entries"] < 300 and time.monotonic() < deadline:
                time.sleep(0.1)
            status = node.get("/api/v0/status")
            assert status["entries"] == 300
            digests.append(sorted((r["name"], r["published"]) for r in node.get("/api/v0/recipes")))
        finally:
            assert node.stop() == 0
    assert digests[0] == digests[1] and len(digests[0]) > 100
