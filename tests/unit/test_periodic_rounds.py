"""Periodic rounds: flat in the number of peers (issue 13)."""

from __future__ import annotations

from p2psync.core import protocol
from p2psync.core.rounds import (
    MAX_PERIODIC_STRETCH,
    PERIODIC_ROUNDS_PER_INTERVAL,
    periodic_interval,
)
from tests.unit.test_core_engine import Node, _finish_connect_round, sent


def _rounds_started(node: Node) -> set[str]:
    questions = sent(node.run(node.engine.tick()), "recon")
    for question in questions:
        message = protocol.decode(question.data)
        assert isinstance(message, protocol.Recon) and message.flags & protocol.ROUND_START
    return {q.peer for q in questions}


def _connected(peers: int) -> tuple[Node, list[str]]:
    node = Node(1)  # sync_interval 60
    names = [f"peer-{i:02}" for i in range(peers)]
    for name in names:
        _finish_connect_round(node, name)
    return node, names


def test_up_to_eight_peers_each_gets_a_round_every_sync_interval() -> None:
    node, names = _connected(PERIODIC_ROUNDS_PER_INTERVAL)
    node.time.now += 59
    assert _rounds_started(node) == set()
    node.time.now += 1
    assert _rounds_started(node) == set(names)


def test_with_more_peers_a_node_still_starts_eight_periodic_rounds_per_interval() -> None:
    """16 peers: each pair's period is 2 x 60 s, so a node starts 8 periodic
    rounds a minute, as with 8 peers, not 16 (idle cost flat in N)."""
    node, names = _connected(2 * PERIODIC_ROUNDS_PER_INTERVAL)
    assert periodic_interval(60, 16) == 120
    node.time.now += 60
    assert _rounds_started(node) == set()
    node.time.now += 59
    assert _rounds_started(node) == set()
    node.time.now += 1
    assert _rounds_started(node) == set(names)


def test_a_gap_still_starts_a_round_at_once_with_many_peers() -> None:
    """Only the periodic timer stretches: news and gaps never wait for it."""
    node, names = _connected(2 * PERIODIC_ROUNDS_PER_INTERVAL)
    node.time.now += 5
    actions = node.engine.request_sync(names[3])
    assert [a.peer for a in sent(actions, "recon")] == [names[3]]


def test_a_crowd_of_strangers_stretches_the_period_at_most_four_times() -> None:
    """Peer ids are free: 1 000 Sybil connections must not delay the periodic
    round with an honest peer by hours."""
    assert periodic_interval(30, 31) == 30 * 31 / 8
    assert periodic_interval(30, 1_000) == 30 * MAX_PERIODIC_STRETCH == 120
    node, names = _connected(40)  # 40 / 8 = 5: capped at 4
    node.time.now += 60 * MAX_PERIODIC_STRETCH - 1
    assert _rounds_started(node) == set()
    node.time.now += 1
    assert _rounds_started(node) == set(names)
