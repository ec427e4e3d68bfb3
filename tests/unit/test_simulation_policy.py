"""The simulator drives the peer policy: a hostile node is banned, the honest converge."""

from __future__ import annotations

import pytest

from p2psync.core.peer_policy import Ban
from tests.sim.policy import PolicySimulator

HONEST = 4


def hostile_network(seed: int) -> PolicySimulator:
    """Honest nodes 0-3 dial each other in a ring; node 4 dials all of them and sends garbage."""
    sim = PolicySimulator(HONEST + 1, seed, hostile=(HONEST,))
    ids = sim.ids
    for i in range(HONEST):
        sim.create(ids[i], f"dish {i}")
        sim.add_static(ids[i], ids[(i + 1) % HONEST])
        sim.add_static(ids[HONEST], ids[i])
    return sim


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_honest_nodes_ban_a_garbage_sender_and_still_converge(seed: int) -> None:
    sim = hostile_network(seed)
    bad = sim.ids[HONEST]
    honest = sim.honest()
    sim.run_for(30)

    # Every honest node banned it once, for a garbage message, within seconds.
    first_bans = {at: ban for _, at, ban in sim.bans}
    assert set(first_bans) == set(honest), sim.bans
    assert all(b.peer_id == bad and b.reason == "version" for b in first_bans.values())
    assert all(t < 10 for t, _, _ in sim.bans)
    assert all(b.seconds == 120 for b in first_bans.values())
    # ... and no honest node was ever blamed for anything.
    blamed = {peer for p in honest for peer, _ in sim.nodes[p].effects.penalties}
    assert blamed == {bad}
    # It is cut off: no connection, no session, and its re-dials are refused.
    assert not any(bad in link for link in sim.connections)
    assert all(bad not in sim.sessions[p] for p in honest)
    refused = [r for r in sim.refusals if r[2] == bad]
    assert refused and {at for _, at, _ in refused} <= set(honest)
    assert len(refused) < 8 * HONEST, "its backoff must slow it down"
    # The honest nodes still sync with each other.
    assert sim.honest_converged()
    for p in honest:
        assert sim.nodes[p].engine.entry_count() == HONEST


def test_a_repeat_offender_gets_a_longer_ban() -> None:
    sim = hostile_network(4)
    bad = sim.ids[HONEST]
    sim.run_for(400)
    per_node: dict[str, list[Ban]] = {}
    for _, at, ban in sim.bans:
        per_node.setdefault(at, []).append(ban)
    for bans in per_node.values():
        assert [b.seconds for b in bans[:2]] == [120, 240]
        assert all(b.peer_id == bad for b in bans)
    # Banned for 360 of the first ~370 s: every session it got was short.
    assert sim.honest_converged()


def test_the_simulated_policies_are_reproducible() -> None:
    def run(seed: int) -> list[tuple[float, str, str]]:
        sim = hostile_network(seed)
        sim.run_for(60)
        return sim.dials

    assert run(5) == run(5)
