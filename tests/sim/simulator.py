"""A deterministic in-memory network of sync engines.

Each node is a SyncEngine over a MemoryStore; the "network" is a list of
in-flight messages that the simulator delivers in an order chosen by a seeded
random generator, optionally dropping or duplicating them. Time is a number
the simulator advances. Everything is reproducible from the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from p2psync.core.engine import (
    Action,
    EngineConfig,
    Persist,
    PublishLive,
    Rejected,
    RoundFinished,
    SendTo,
    SyncEngine,
)
from p2psync.core.ids import make_recipe_id, peer_id_from_public_key
from p2psync.core.ops import Op, RecipeFields
from p2psync.core.progress import Progress
from p2psync.store.memory import MemoryStore


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.wall_offset_ms = 1_800_000_000_000

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return self.wall_offset_ms + int(self.now * 1000)


@dataclass
class SimNode:
    name: str
    key: SigningKey
    store: MemoryStore
    engine: SyncEngine
    peer_id: str
    rejected: dict[str, int] = field(default_factory=dict)
    rounds_ok: int = 0
    rounds_failed: int = 0
    own_recipes: list[str] = field(default_factory=list)


@dataclass
class InFlight:
    src: str
    dst: str
    data: bytes
    live: bool


class Simulator:
    def __init__(
        self,
        n_nodes: int,
        seed: int,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        config: EngineConfig | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.time = FakeTime()
        self.loss = loss
        self.duplicate = duplicate
        self.config = config or EngineConfig(
            batch_size=7, window=2, sync_interval=5.0, round_timeout=3.0
        )
        self.nodes: dict[str, SimNode] = {}
        self.links: set[frozenset[str]] = set()
        self.in_flight: list[InFlight] = []
        self.delivered = 0
        for i in range(n_nodes):
            key = SigningKey(bytes([i + 1]) * 32)
            store = MemoryStore()
            peer_id = peer_id_from_public_key(bytes(key.verify_key))
            engine = self._make_engine(key, store)
            self.nodes[peer_id] = SimNode(f"n{i}", key, store, engine, peer_id)

    def _make_engine(self, key: SigningKey, store: MemoryStore) -> SyncEngine:
        return SyncEngine(
            key,
            Progress(store.load_progress()),
            store,
            self.time,
            self.config,
            last_hlc=store.last_hlc(),
        )

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    # ---------------------------------------------------------------- topology

    def connect(self, a: str, b: str) -> None:
        link = frozenset((a, b))
        if a == b or link in self.links:
            return
        self.links.add(link)
        self._run(a, self.nodes[a].engine.peer_connected(b))
        self._run(b, self.nodes[b].engine.peer_connected(a))

    def disconnect(self, a: str, b: str) -> None:
        link = frozenset((a, b))
        if link not in self.links:
            return
        self.links.discard(link)
        self.in_flight = [m for m in self.in_flight if frozenset((m.src, m.dst)) != link]
        self._run(a, self.nodes[a].engine.peer_disconnected(b))
        self._run(b, self.nodes[b].engine.peer_disconnected(a))

    def neighbours(self, a: str) -> list[str]:
        return [next(iter(link - {a})) for link in self.links if a in link]

    def restart(self, a: str) -> None:
        """Crash and restart a node: in-memory engine state is lost, the store is kept."""
        for b in self.neighbours(a):
            self.disconnect(a, b)
        node = self.nodes[a]
        node.engine = self._make_engine(node.key, node.store)

    # ---------------------------------------------------------------- workload

    def create(self, a: str, name: str) -> str:
        node = self.nodes[a]

        def make(seq: int) -> Op:
            rid = make_recipe_id(node.engine.me, seq)
            return Op("create", rid, None, RecipeFields(name, "flour", "bake"))

        _, op, actions = node.engine.append_local(make)
        node.own_recipes.append(op.recipe_id)
        self._run(a, actions)
        return op.recipe_id

    def modify(self, a: str, kind: str, recipe_id: str, create_seq: int) -> None:
        node = self.nodes[a]
        fields = RecipeFields("renamed", "x", "y") if kind == "update" else None
        op = Op(kind, recipe_id, create_seq, fields)  # type: ignore[arg-type]
        _, _, actions = node.engine.append_local(lambda seq: op)
        self._run(a, actions)

    # ---------------------------------------------------------------- running

    def _run(self, at: str, actions: list[Action]) -> None:
        node = self.nodes[at]
        for action in actions:
            if isinstance(action, Persist):
                node.store.commit(action)
            elif isinstance(action, SendTo):
                if frozenset((at, action.peer)) in self.links:
                    self._send(at, action.peer, action.data, live=False)
            elif isinstance(action, PublishLive):
                for b in self.neighbours(at):
                    self._send(at, b, action.data, live=True)
            elif isinstance(action, Rejected):
                node.rejected[action.reason] = node.rejected.get(action.reason, 0) + action.count
            elif isinstance(action, RoundFinished):
                if action.ok:
                    node.rounds_ok += 1
                else:
                    node.rounds_failed += 1

    def _send(self, src: str, dst: str, data: bytes, *, live: bool) -> None:
        if self.rng.random() < self.loss:
            return
        self.in_flight.append(InFlight(src, dst, data, live))
        if self.rng.random() < self.duplicate:
            self.in_flight.append(InFlight(src, dst, data, live))

    def step(self) -> bool:
        """Deliver one message chosen at random. False when none is in flight."""
        if not self.in_flight:
            return False
        message = self.in_flight.pop(self.rng.randrange(len(self.in_flight)))
        if frozenset((message.src, message.dst)) not in self.links:
            return True
        engine = self.nodes[message.dst].engine
        if message.live:
            actions = engine.live_received(message.src, message.data)
        else:
            actions = engine.message_received(message.src, message.data)
        self.delivered += 1
        self._run(message.dst, actions)
        return True

    def advance(self, seconds: float) -> None:
        self.time.now += seconds
        for peer_id, node in self.nodes.items():
            self._run(peer_id, node.engine.tick())

    def run_until_quiet(
        self, *, max_steps: int = 200_000, tick: float = 1.0, max_time: float = 600
    ) -> None:
        """Deliver everything, ticking the clock, until nothing moves and all agree."""
        deadline = self.time.now + max_time
        steps = 0
        while self.time.now < deadline:
            while self.step():
                steps += 1
                if steps > max_steps:
                    raise AssertionError("simulation did not quiesce")
            if self.converged():
                return
            self.advance(tick)

    def heal(self) -> None:
        self.loss = 0.0
        self.duplicate = 0.0

    # ---------------------------------------------------------------- checks

    def converged(self) -> bool:
        digests = {node.store.digest() for node in self.nodes.values()}
        counts = {node.store.entry_count() for node in self.nodes.values()}
        return len(digests) == 1 and len(counts) == 1 and not self.in_flight

    def total_created(self) -> int:
        return sum(node.engine.progress.count(node.engine.me) for node in self.nodes.values())
