"""A deterministic in-memory network of sync engines.

Each node is a SyncEngine over a MemoryStore; the "network" is a list of
in-flight messages that the simulator delivers in an order chosen by a seeded
random generator, optionally dropping or duplicating them. Time is a number
the simulator advances. Everything is reproducible from the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from p2psync.core import protocol
from p2psync.core.actions import Action
from p2psync.core.engine import EngineConfig, SyncEngine
from p2psync.core.hlc import MAX_FORWARD_MS
from p2psync.core.ids import make_recipe_id, peer_id_from_public_key
from p2psync.core.ops import Op, RecipeFields
from p2psync.core.progress import Progress
from p2psync.core.protocol import Live
from p2psync.core.query import QueryReply
from p2psync.node.executor import Executor
from p2psync.node.observer import NullObserver
from p2psync.store.memory import MemoryStore
from tests.sim.driver import FakeTime, TimedEngine

__all__ = ["FakeTime", "SimNode", "Simulator"]


class SimObserver(NullObserver):
    """Counts what the executor reports about one simulated node."""

    def __init__(self) -> None:
        self.rejected: dict[str, int] = {}
        self.dropped_reasons: dict[str, int] = {}
        self.rounds_ok = 0
        self.rounds_failed = 0

    def entries_rejected(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n

    def dropped(self, reason: str, n: int = 1) -> None:
        self.dropped_reasons[reason] = self.dropped_reasons.get(reason, 0) + n

    def sync_round(self, ok: bool, seconds: float) -> None:
        if ok:
            self.rounds_ok += 1
        else:
            self.rounds_failed += 1


class SimEffects:
    """The executor's view of the simulated network, for one node."""

    def __init__(self, sim: Simulator, at: str) -> None:
        self.sim = sim
        self.at = at
        self.penalties: list[tuple[str, str]] = []
        self.restarts: list[str] = []

    def send(self, peer: str, data: bytes) -> bool:
        if frozenset((self.at, peer)) not in self.sim.links:
            return False
        self.sim._send(self.at, peer, data, live=False)
        return True

    def publish_live(self, data: bytes) -> bool:
        neighbours = self.sim.neighbours(self.at)
        for b in neighbours:
            self.sim._send(self.at, b, data, live=True)
        return bool(neighbours)

    def penalize(self, peer: str, reason: str) -> None:
        self.penalties.append((peer, reason))

    def round_finished(self, peer: str, ok: bool, seconds: float) -> None:
        pass

    def query_received(self, peer: str, query_id: int) -> None:
        pass

    def query_answered(self, peer: str, reply: QueryReply) -> None:
        pass

    def restart_session(self, peer: str) -> None:
        self.restarts.append(peer)


@dataclass
class SimNode:
    name: str
    key: SigningKey
    store: MemoryStore
    engine: TimedEngine
    peer_id: str
    observer: SimObserver
    effects: SimEffects
    executor: Executor
    own_recipes: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> dict[str, int]:
        return self.observer.rejected

    @property
    def rounds_ok(self) -> int:
        return self.observer.rounds_ok

    @property
    def rounds_failed(self) -> int:
        return self.observer.rounds_failed


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
        store_factory: Callable[[], MemoryStore] = MemoryStore,
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
        self.largest_message = 0
        for i in range(n_nodes):
            key = SigningKey(bytes([i + 1]) * 32)
            store = store_factory()
            peer_id = peer_id_from_public_key(bytes(key.verify_key))
            engine = self.make_engine(key, store)
            observer = SimObserver()
            effects = SimEffects(self, peer_id)
            executor = Executor(engine.inner, store, observer, effects)
            self.nodes[peer_id] = SimNode(
                f"n{i}", key, store, engine, peer_id, observer, effects, executor
            )

    def make_engine(
        self, key: SigningKey, store: MemoryStore, time: FakeTime | None = None
    ) -> TimedEngine:
        time = time or self.time
        engine = SyncEngine(
            key,
            Progress(store.load_progress()),
            store,
            time.instant(),
            self.config,
            last_hlc=store.last_hlc(time.wall_ms() + MAX_FORWARD_MS),
            forks=store.load_forks(),
        )
        return TimedEngine(engine, time)

    def replace_engine(self, at: str, engine: TimedEngine) -> None:
        node = self.nodes[at]
        node.engine = engine
        node.executor.engine = engine.inner

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
        self.replace_engine(a, self.make_engine(node.key, node.store))

    # ---------------------------------------------------------------- workload

    def create(self, a: str, name: str) -> str:
        node = self.nodes[a]

        def make(seq: int) -> Op:
            rid = make_recipe_id(node.engine.me, seq)
            return Op("create", rid, None, RecipeFields(name, "flour", "bake"))

        _, op, actions = node.engine.append_one(make)
        node.own_recipes.append(op.recipe_id)
        self._run(a, actions)
        return op.recipe_id

    def modify(self, a: str, kind: str, recipe_id: str, create_seq: int) -> None:
        node = self.nodes[a]
        fields = RecipeFields("renamed", "x", "y") if kind == "update" else None
        op = Op(kind, recipe_id, create_seq, fields)  # type: ignore[arg-type]
        _, _, actions = node.engine.append_one(lambda seq: op)
        self._run(a, actions)

    # ---------------------------------------------------------------- running

    def _run(self, at: str, actions: list[Action]) -> None:
        self.nodes[at].executor.run(actions, self.time.instant())

    def _send(self, src: str, dst: str, data: bytes, *, live: bool) -> None:
        self.largest_message = max(self.largest_message, len(data))
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
        """Nothing in flight, and every node shows the same recipes, forks and holdings.

        Holdings are compared below each forked origin's fork: past it, each
        node may keep the branch it saw first, which counts for nothing.
        """
        digests = {node.store.digest() for node in self.nodes.values()}
        forks = {frozenset(node.engine.forked_origins().items()) for node in self.nodes.values()}
        holdings = {self.counted_holdings(node) for node in self.nodes.values()}
        return len(digests) == len(forks) == len(holdings) == 1 and not self.in_flight

    @staticmethod
    def counted_holdings(node: SimNode) -> frozenset[tuple[bytes, int]]:
        forked = node.engine.forked_origins()
        counts = set()
        for origin, count in node.engine.held_counts().items():
            if origin in forked:
                count = sum(1 for seq in range(forked[origin]) if node.engine.holds(origin, seq))
            counts.add((origin, count))
        return frozenset(counts)

    def inject(self, at: str, raws: list[bytes], via: str = "stranger") -> None:
        """Hand `at` entries live, as if gossip brought them from a peer it has no link to."""
        for raw in raws:
            self._run(at, self.nodes[at].engine.live_received(via, protocol.encode(Live((raw,)))))

    def inject_backfill(self, at: str, raws: list[bytes], via: str = "stranger") -> None:
        """Hand `at` entries in one backfill batch: runs are authenticated by hash links
        and the signatures of their checkpoints and last entry, not each one's."""
        self._run(at, self.nodes[at].engine.backfill_received(via, raws))

    def total_created(self) -> int:
        return sum(node.engine.own_entry_count() for node in self.nodes.values())
