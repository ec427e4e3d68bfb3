"""The simulator with a peer policy per node: dials, refusals, sessions and bans.

`PolicySimulator` adds to `Simulator` what `node/network.py` and
`node/dialing.py` do in the daemon: each node has a `PeerPolicy`; its `Dial`
actions open simulated connections (both sides' policies hear `connected`
and may refuse), `StartSession` on both sides opens the sync link the engines
talk over, `Disconnect` closes the connection, and the executor's penalties
become `offence` events. Hostile nodes send garbage on every session they
have, which the engines blame on them (the deliverer); nothing in it is
faked past that point.
"""

from __future__ import annotations

import random
from typing import Any

from p2psync.core.peer_policy import (
    Ban,
    Dial,
    Disconnect,
    PeerPolicy,
    PolicyAction,
    PolicyConfig,
    StartSession,
    StopSession,
)
from tests.sim.simulator import SimEffects, Simulator

GARBAGE = b"\xff" + bytes(31)  # an unknown protocol version: Blame.DELIVERER


class PolicyEffects(SimEffects):
    sim: PolicySimulator

    def penalize(self, peer: str, reason: str) -> None:
        super().penalize(peer, reason)
        self.sim.policy_event(self.at, "offence", peer, reason)

    def round_finished(self, peer: str, ok: bool, seconds: float) -> None:
        self.sim.policy_event(self.at, "round_finished", peer, ok, seconds, self.sim.time.wall_ms())


class PolicySimulator(Simulator):
    def __init__(
        self,
        n_nodes: int,
        seed: int,
        *,
        hostile: tuple[int, ...] = (),
        garbage_per_second: int = 5,
        policy_config: PolicyConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(n_nodes, seed, **kwargs)
        self.policies: dict[str, PeerPolicy] = {}
        self.sessions: dict[str, set[str]] = {}
        for i, (peer_id, node) in enumerate(self.nodes.items()):
            self.policies[peer_id] = PeerPolicy(
                peer_id, random.Random(seed * 1000 + i), config=policy_config
            )
            self.sessions[peer_id] = set()
            node.effects = node.executor.effects = PolicyEffects(self, peer_id)  # type: ignore[assignment]
        self.hostile = {self.ids[i] for i in hostile}
        self.garbage_per_second = garbage_per_second
        self.connections: set[frozenset[str]] = set()  # transport level
        self.unreachable: set[str] = set()
        self.bans: list[tuple[float, str, Ban]] = []  # (time, banning node, ban)
        self.refusals: list[tuple[float, str, str]] = []  # (time, refusing node, peer)
        self.dials: list[tuple[float, str, str]] = []

    # ---------------------------------------------------------------- the policy's driver

    def add_static(self, at: str, peer: str) -> None:
        self.policy_event(at, "add_static", peer, f"/sim/{peer}")

    def policy_event(self, at: str, event: str, *args: Any) -> None:
        actions: list[PolicyAction] = getattr(self.policies[at], event)(*args, self.time.now)
        for action in actions:
            if isinstance(action, Dial):
                self._dial(at, action.peer_id)
            elif isinstance(action, Disconnect):
                if action.refused:
                    self.refusals.append((self.time.now, at, action.peer_id))
                self._close(at, action.peer_id)
            elif isinstance(action, Ban):
                self.bans.append((self.time.now, at, action))
            elif isinstance(action, StartSession):
                self._start_session(at, action.peer_id)
            elif isinstance(action, StopSession):
                self._end_session(at, action.peer_id)

    def _dial(self, at: str, peer: str) -> None:
        self.dials.append((self.time.now, at, peer))
        if peer in self.unreachable or peer not in self.nodes:
            self.policy_event(at, "dial_failed", peer)
            return
        self.connections.add(frozenset((at, peer)))
        self.policy_event(at, "dial_succeeded", peer)
        self.policy_event(at, "connected", peer, None)
        if frozenset((at, peer)) in self.connections:  # not refused by ourselves
            self.policy_event(peer, "connected", at, None)

    def _close(self, at: str, peer: str) -> None:
        link = frozenset((at, peer))
        if link not in self.connections:
            return
        self.connections.discard(link)
        self.policy_event(at, "disconnected", peer)
        self.policy_event(peer, "disconnected", at)

    def _start_session(self, at: str, peer: str) -> None:
        self.sessions[at].add(peer)
        link = frozenset((at, peer))
        if at in self.sessions[peer] and link not in self.links:
            self.links.add(link)
            self._run(at, self.nodes[at].engine.peer_connected(peer))
            self._run(peer, self.nodes[peer].engine.peer_connected(at))

    def _end_session(self, at: str, peer: str) -> None:
        if peer not in self.sessions[at]:
            return
        self.sessions[at].discard(peer)
        link = frozenset((at, peer))
        if link in self.links:
            self.links.discard(link)
            self.in_flight = [m for m in self.in_flight if frozenset((m.src, m.dst)) != link]
            self._run(at, self.nodes[at].engine.peer_disconnected(peer))
            self._run(peer, self.nodes[peer].engine.peer_disconnected(at))
        self.policy_event(at, "session_ended", peer)

    # ---------------------------------------------------------------- running

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        for bad in self.hostile:
            for peer in self.neighbours(bad):
                for _ in range(int(self.garbage_per_second * seconds)):
                    self._send(bad, peer, GARBAGE, live=False)
        for peer_id, policy in self.policies.items():
            self.policy_event(peer_id, "tick")
            del policy  # events go through policy_event, which runs the actions

    def honest(self) -> list[str]:
        return [p for p in self.ids if p not in self.hostile]

    def honest_converged(self) -> bool:
        honest = [self.nodes[p] for p in self.honest()]
        digests = {node.store.digest() for node in honest}
        holdings = {self.counted_holdings(node) for node in honest}
        return len(digests) == len(holdings) == 1

    def run_for(self, seconds: float, *, tick: float = 1.0) -> None:
        """Deliver everything in flight, then move time on by `tick`, until `seconds` passed."""
        end = self.time.now + seconds
        while self.time.now < end:
            steps = 0
            while self.step():
                steps += 1
                assert steps < 200_000, "simulation did not quiesce"
            self.advance(tick)
