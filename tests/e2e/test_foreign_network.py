"""A peer of another --network that connects anyway (here: a --peer across
networks, over loopback, no mDNS): both sides learn it from its gossipsub
subscriptions, cut it off as `foreign`, sync nothing, ban nobody, and the
static side does not re-dial it in a loop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import NodeProcess, listen_addr, start_node, wait_until

pytestmark = pytest.mark.e2e


def row(node: NodeProcess, peer_id: str) -> dict[str, Any] | None:
    return next((p for p in node.get("/api/v0/peers") if p["peer_id"] == peer_id), None)


def foreign(node: NodeProcess, peer_id: str) -> bool:
    r = row(node, peer_id)
    return r is not None and r["state"] == "foreign" and not r["connected"]


def test_a_peer_of_another_network_is_left_alone(
    nodes: list[NodeProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PSYNC_LOG_REPEAT_SECONDS", "0.1")  # every dial shows in the log
    home = start_node(
        nodes, tmp_path / "a", "--network", "home", "--initial-ops", "20", "--seed", "1",
        "--log-level", "INFO",
    )  # fmt: skip
    home_id = home.get("/api/v0/status")["peer_id"]
    work = start_node(
        nodes, tmp_path / "b", "--network", "work", "--peer", listen_addr(home),
        "--log-level", "INFO",
    )  # fmt: skip
    work_id = work.get("/api/v0/status")["peer_id"]

    wait_until(lambda: foreign(home, work_id) and foreign(work, home_id), 30, "both", home, work)
    # Long enough for a static peer's backoff (0.5-1 s, then 1-2 s, ...) to
    # have re-dialed a few times, were it not foreign.
    time.sleep(6)
    assert foreign(home, work_id) and foreign(work, home_id)
    assert work.stderr().count(f"dialing {home_id}") == 1, work.stderr()[-3000:]
    assert f"peer {work_id} is in network 'work', not ours" in home.stderr()
    assert f"peer {home_id} is in network 'home', not ours" in work.stderr()
    for node in (home, work):
        assert "banned" not in node.stderr() and "misbehaves" not in node.stderr()
        assert node.get("/api/v0/status")["peers"] == 0
    assert home.get("/api/v0/status")["entries"] == 20
    assert work.get("/api/v0/status")["entries"] == 0
