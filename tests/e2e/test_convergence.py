"""Several real nodes on loopback (--no-mdns): they connect, converge and catch up."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import NodeProcess, listen_addr, start_node, wait_until

pytestmark = pytest.mark.e2e


def same_book(nodes: list[NodeProcess], entries: int) -> Callable[[], bool]:
    def check() -> bool:
        statuses = [n.get("/api/v0/status") for n in nodes]
        return (
            all(s["entries"] == entries for s in statuses)
            and len({s["digest"] for s in statuses}) == 1
        )

    return check


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.stop(signal.SIGTERM)


def test_three_nodes_on_one_host_find_each_other_and_converge(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # One data root, no flags but the API: same-host discovery must connect them.
    a = start_node(nodes, tmp_path, "--initial-ops", "200", "--seed", "1")
    b = start_node(nodes, tmp_path, "--initial-ops", "100", "--seed", "2")
    c = start_node(nodes, tmp_path)
    wait_until(same_book([a, b, c], 300), 60, "three nodes to converge")
    created = a.post(
        "/api/v0/recipes", {"name": "Live one", "ingredients": "i", "instructions": "s"}
    )
    assert created.status_code == 201
    recipe_id = created.json()["id"]
    wait_until(
        lambda: all(any(r["id"] == recipe_id for r in n.get("/api/v0/recipes")) for n in (b, c)),
        10,
        "a live op to reach the others",
    )
    others = {a.get("/api/v0/status")["peer_id"], b.get("/api/v0/status")["peer_id"]}
    wait_until(
        lambda: {p["peer_id"] for p in c.get("/api/v0/peers") if p["connected"]} == others,
        15,
        "c to connect to both a and b",
    )
    # A round with each: the one with the last peer to connect may still be running.
    wait_until(
        lambda: all(p["syncs_ok"] >= 1 for p in c.get("/api/v0/peers") if p["connected"]),
        15,
        "a finished sync round with each peer",
    )
    assert all(p["source"] in ("local", "inbound") for p in c.get("/api/v0/peers"))


def test_chain_relays_to_nodes_that_never_meet(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    # Separate data roots: no same-host discovery, only the static chain A-B-C.
    a = start_node(nodes, tmp_path / "a", "--initial-ops", "300", "--seed", "3")
    b = start_node(nodes, tmp_path / "b", "--peer", listen_addr(a))
    c = start_node(
        nodes, tmp_path / "c", "--peer", listen_addr(b), "--initial-ops", "50", "--seed", "4"
    )
    wait_until(same_book([a, b, c], 350), 60, "the chain to converge")
    a_id = a.get("/api/v0/status")["peer_id"]
    assert a_id not in {p["peer_id"] for p in c.get("/api/v0/peers") if p["connected"]}
    assert c.get("/api/v0/sync")["self"][a_id]["held"] == 300


def test_killed_node_restarts_as_itself_and_backfills_what_it_missed(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = start_node(nodes, tmp_path / "a", "--initial-ops", "100", "--seed", "5")
    b_dir = tmp_path / "b" / "data"
    b = start_node(nodes, tmp_path / "b", "--data-dir", str(b_dir), "--peer", listen_addr(a))
    wait_until(same_book([a, b], 100), 60, "first sync")
    b_id = b.get("/api/v0/status")["peer_id"]
    b.stop(signal.SIGKILL)
    nodes.remove(b)

    # 5 000 entries are written while b is down.
    a.stop(signal.SIGTERM)
    nodes.remove(a)
    a = start_node(
        nodes, tmp_path / "a", "--profile", "node1", "--initial-ops", "5000", "--seed", "6"
    )
    wait_until(lambda: a.get("/api/v0/status")["entries"] == 5100, 120, "a to write 5 000 more")

    b = start_node(nodes, tmp_path / "b", "--data-dir", str(b_dir), "--peer", listen_addr(a))
    assert b.get("/api/v0/status")["peer_id"] == b_id
    wait_until(same_book([a, b], 5100), 120, "b to backfill 5 000 entries")


def test_closed_network_refuses_unlisted_peers(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    friend = start_node(nodes, tmp_path / "f", "--initial-ops", "10", "--seed", "8")
    friend_id = friend.get("/api/v0/status")["peer_id"]
    closed = start_node(
        nodes, tmp_path / "c", "--allow-peer", friend_id, "--peer", listen_addr(friend)
    )
    wait_until(lambda: closed.get("/api/v0/status")["entries"] == 10, 30, "the friend's entries")
    # A stranger dials in; the closed node must refuse it and count the refusal.
    stranger = start_node(
        nodes, tmp_path / "s", "--initial-ops", "20", "--seed", "7", "--peer", listen_addr(closed)
    )
    import httpx

    def refused() -> float:
        metrics = httpx.get(f"{closed.api}/metrics", timeout=10).text
        lines = [line for line in metrics.splitlines() if 'reason="peer_refused"' in line]
        return float(lines[0].split()[-1]) if lines else 0.0

    wait_until(lambda: refused() >= 1, 30, "the stranger to be refused")
    status = closed.get("/api/v0/status")
    assert status["entries"] == 10 and status["peers"] == 1
    assert stranger.get("/api/v0/status")["entries"] == 20
