"""Property tests of the sync core over the simulator (SPEC invariants 1, 3, 5)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2psync.core import protocol
from p2psync.core.actions import Persist
from p2psync.core.engine import EngineConfig
from p2psync.core.entry import ZERO_HASH, decode_entry, sign_entry
from p2psync.core.forks import MAX_CHAIN, is_checkpoint
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, RecipeFields, encode_op
from p2psync.core.recipes import digest
from p2psync.core.store import StoreError
from p2psync.store.memory import MemoryStore
from tests.sim.driver import FakeTime
from tests.sim.simulator import InFlight, Simulator


def _connected_edges(n: int, extra: list[tuple[int, int]], chain: bool) -> list[tuple[int, int]]:
    # A spanning path guarantees connectivity; extra edges vary the topology.
    edges = [(i, i + 1) for i in range(n - 1)] if chain else [(0, i) for i in range(1, n)]
    return edges + [(a % n, b % n) for a, b in extra if a % n != b % n]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 6),
    seed=st.integers(0, 2**32),
    ops=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=40),
    extra=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=4),
    chain=st.booleans(),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    duplicate=st.sampled_from([0.0, 0.2]),
    restarts=st.lists(st.integers(0, 5), max_size=2),
)
def test_any_order_loss_and_duplication_converge(
    n: int,
    seed: int,
    ops: list[tuple[int, int]],
    extra: list[tuple[int, int]],
    chain: bool,
    loss: float,
    duplicate: float,
    restarts: list[int],
) -> None:
    sim = Simulator(n, seed, loss=loss, duplicate=duplicate)
    ids = sim.ids
    # Some ops happen before anyone is connected, so catch-up is exercised.
    for node_index, action in ops[: len(ops) // 2]:
        sim.create(ids[node_index % n], f"early-{action}")
    for a, b in _connected_edges(n, extra, chain):
        sim.connect(ids[a], ids[b])
    for step, (node_index, action) in enumerate(ops[len(ops) // 2 :]):
        node = ids[node_index % n]
        own = sim.nodes[node].own_recipes
        if action == 0 or not own:
            sim.create(node, f"r{step}")
        else:
            rid = own[step % len(own)]
            kind = ["update", "publish", "delete"][action - 1]
            create_seq = _create_seq_of(sim, node, rid)
            sim.modify(node, kind, rid, create_seq)
        for _ in range(sim.rng.randrange(4)):
            sim.step()
    for index in restarts:
        node = ids[index % n]
        sim.restart(node)
        for a, b in _connected_edges(n, extra, chain):
            sim.connect(ids[a], ids[b])
    for _ in range(50):
        sim.step()
    sim.heal()
    sim.run_until_quiet()

    total = sim.total_created()
    for node in sim.nodes.values():
        assert node.store.entry_count() == total, (
            f"{node.name} holds {node.store.entry_count()}/{total}"
        )
    assert len({node.store.digest() for node in sim.nodes.values()}) == 1
    for node in sim.nodes.values():
        # The incrementally kept digest equals one computed from scratch.
        assert node.store.digest() == digest(node.store.visible_recipes())
        assert node.store.recipe_count() == len(node.store.visible_recipes())
    assert all(not node.rejected for node in sim.nodes.values())


def _create_seq_of(sim: Simulator, node: str, recipe_id: str) -> int:
    from p2psync.core.ids import make_recipe_id

    me = sim.nodes[node].engine.me
    for seq in range(sim.nodes[node].engine.next_own_seq()):
        if make_recipe_id(me, seq) == recipe_id:
            return seq
    raise AssertionError("recipe not created by this node")


def test_chain_relays_entries_between_nodes_that_never_meet() -> None:
    sim = Simulator(5, seed=7)
    ids = sim.ids
    for i in range(30):
        sim.create(ids[0], f"r{i}")
    for a, b in itertools.pairwise(ids):
        sim.connect(a, b)
    sim.run_until_quiet()
    far = sim.nodes[ids[-1]]
    assert far.store.entry_count() == 30
    assert len(far.store.visible_recipes()) == 30


def test_in_sync_round_sends_no_entries() -> None:
    sim = Simulator(2, seed=1)
    a, b = sim.ids
    for i in range(20):
        sim.create(a, f"r{i}")
    sim.connect(a, b)
    sim.run_until_quiet()
    before = sim.delivered
    rounds_before = sim.nodes[a].rounds_ok
    held_before = sim.nodes[b].store.entry_count()
    sim._run(a, sim.nodes[a].engine.request_sync(b))
    sim.run_until_quiet()
    # A round really ran: a's question, b's "all the same", and the reply round.
    assert sim.nodes[a].rounds_ok == rounds_before + 1
    assert sim.nodes[b].store.entry_count() == held_before == 20
    # Each way one RECON question and one whole-range DONE answer: one round trip.
    assert sim.delivered - before == 4


def test_news_crosses_a_chain_without_waiting_for_periodic_rounds() -> None:
    from p2psync.core.engine import EngineConfig

    config = EngineConfig(batch_size=7, window=2, sync_interval=1000.0, round_timeout=3.0)
    sim = Simulator(5, seed=11, config=config)
    ids = sim.ids
    for a, b in itertools.pairwise(ids):
        sim.connect(a, b)
    sim.run_until_quiet()
    sim.loss = 1.0  # every live broadcast is lost: only anti-entropy can carry them
    for i in range(40):
        sim.create(ids[0], f"r{i}")
    sim.heal()
    assert sim.nodes[ids[1]].store.entry_count() == 0
    rounds_before = sim.nodes[ids[0]].rounds_ok
    sim._run(ids[0], sim.nodes[ids[0]].engine.request_sync(ids[1]))
    started = sim.time.now
    sim.run_until_quiet(max_time=100)
    assert sim.nodes[ids[0]].rounds_ok > rounds_before
    assert sim.nodes[ids[-1]].store.entry_count() == 40
    assert sim.time.now - started < 20, "relay waited for periodic rounds"


class _SkewedTime(FakeTime):
    """Follows the simulator's clock, with a wall clock `offset_ms` off."""

    def __init__(self, base: FakeTime, offset_ms: int) -> None:
        super().__init__()
        self.base = base
        self.offset_ms = offset_ms

    def monotonic(self) -> float:
        return self.base.monotonic()

    def wall_ms(self) -> int:
        return self.base.wall_ms() + self.offset_ms


@pytest.mark.parametrize("skew_ms", [3_600_000, -3_600_000])
def test_clock_skew_of_an_hour_converges_and_hlc_stays_monotonic(skew_ms: int) -> None:
    sim = Simulator(3, seed=5)
    a, b, c = sim.ids
    skewed = sim.nodes[c]
    sim.replace_engine(c, sim.make_engine(skewed.key, skewed.store, _SkewedTime(sim.time, skew_ms)))
    sim.connect(a, b)
    sim.connect(b, c)
    rid = sim.create(a, "from a")
    sim.run_until_quiet()
    seen: list[int] = []
    for i in range(20):
        sim.create(c, f"from c {i}")
        seen.append(skewed.engine.last_hlc())
        sim.advance(0.5)
        sim.create(a, f"from a {i}")
    # An update by a's author after c's skewed ops must still win for a's recipe.
    sim.modify(a, "update", rid, 0)
    sim.run_until_quiet()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert len({n.store.digest() for n in sim.nodes.values()}) == 1
    renamed = sim.nodes[b].store.recipe(rid)
    assert renamed is not None and renamed.fields is not None and renamed.fields.name == "renamed"


class _FlakyStore(MemoryStore):
    """A store whose commits fail at random while `failing` (a full disk, say)."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng
        self.failing = True
        self.refused = 0

    def commit(self, persist: Persist) -> None:
        if self.failing and self.rng.random() < 0.3:
            self.refused += 1
            raise StoreError("disk is full")
        super().commit(persist)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(2, 5), creates=st.integers(5, 30))
def test_store_failures_are_repaired_by_anti_entropy(seed: int, n: int, creates: int) -> None:
    rng = random.Random(seed)
    stores: list[_FlakyStore] = []

    def make_store() -> _FlakyStore:
        stores.append(_FlakyStore(rng))
        return stores[-1]

    sim = Simulator(n, seed, store_factory=make_store)
    ids = sim.ids
    for a, b in itertools.pairwise(ids):
        sim.connect(a, b)
    refused_local = 0
    for i in range(creates):
        try:
            sim.create(ids[i % n], f"r{i}")
        except StoreError:
            refused_local += 1  # the user is told; the op does not exist
        for _ in range(rng.randrange(5)):
            sim.step()
    for store in stores:
        store.failing = False
    sim.run_until_quiet()
    assert sum(s.refused for s in stores) > 0 or creates < 10
    total = sim.total_created()
    assert total == creates - refused_local
    for node in sim.nodes.values():
        assert node.store.entry_count() == total
        assert node.store.digest() == digest(node.store.visible_recipes())
    assert len({node.store.digest() for node in sim.nodes.values()}) == 1


def test_penalties_go_to_the_deliverer_of_broken_bytes_only() -> None:
    sim = Simulator(3, seed=3)
    a, b, c = sim.ids
    sim.connect(a, b)
    sim.connect(b, c)
    sim.run_until_quiet()
    # Broken bytes on the pair topic: only the peer that sent them is to blame.
    sim.in_flight.append(InFlight(a, b, b"\x01", live=False))
    # A well-formed live entry whose signature fails: a relay may carry it.
    forged = bytearray(sign_entry(SigningKey(b"\x55" * 32), 0, ZERO_HASH, 1 << 16, b"{}").raw)
    forged[-1] ^= 1
    data = protocol.encode(protocol.Live((bytes(forged),)))
    sim.in_flight.append(InFlight(c, b, data, live=True))
    sim.run_until_quiet()
    assert sim.nodes[b].effects.penalties == [(a, "malformed")]
    assert sim.nodes[b].rejected == {"signature": 1}


def _branches(
    key: SigningKey, common: int, left: int, right: int, *, forge_left: bool = False
) -> tuple[list[bytes], list[bytes]]:
    """Two logs of one origin that agree on `common` entries, then fork.

    `forge_left`: the origin spoils the signature of every left entry but its
    last and its checkpoints, the most a backfill run lets it get away with.
    """
    origin = bytes(key.verify_key)

    def entries(start: int, count: int, prev: bytes, name: str, forge: bool) -> list[bytes]:
        raws = []
        for seq in range(start, start + count):
            op = Op(
                "create", make_recipe_id(origin, seq), None, RecipeFields(f"{name}{seq}", "", "")
            )
            entry = sign_entry(key, seq, prev, (1_800_000_000_000 << 16) + seq, encode_op(op))
            if forge and seq < start + count - 1 and not is_checkpoint(seq):
                entry = decode_entry(entry.signed_part + bytes(64))
            prev = entry.hash()
            raws.append(entry.raw)
        return raws

    shared = entries(0, common, ZERO_HASH, "shared", False)
    prev = decode_entry(shared[-1]).hash() if shared else ZERO_HASH
    return (
        shared + entries(common, left, prev, "left", forge_left),
        shared + entries(common, right, prev, "right", False),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 6),
    seed=st.integers(0, 2**32),
    forkers=st.integers(1, 3),
    common=st.integers(0, 5),
    left=st.integers(1, 4),
    right=st.integers(1, 4),
    loss=st.sampled_from([0.0, 0.2]),
    duplicate=st.sampled_from([0.0, 0.2]),
    chain=st.booleans(),
    restart=st.booleans(),
)
def test_equivocating_origins_are_proven_and_resolved_the_same_everywhere(
    n: int,
    seed: int,
    forkers: int,
    common: int,
    left: int,
    right: int,
    loss: float,
    duplicate: float,
    chain: bool,
    restart: bool,
) -> None:
    sim = Simulator(n, seed, loss=loss, duplicate=duplicate)
    ids = sim.ids
    half = max(1, n // 2)
    forked_origins = set()
    for f in range(forkers):
        key = SigningKey(bytes([0x60 + f]) * 32)
        forked_origins.add(bytes(key.verify_key))
        one, other = _branches(key, common, left, right)
        for index, at in enumerate(ids):
            sim.inject(at, one if index < half else other)  # each half sees one side
    for i in range(3):
        sim.create(ids[i % n], f"honest {i}")
    for a, b in _connected_edges(n, [], chain):
        sim.connect(ids[a], ids[b])
    for _ in range(30):
        sim.step()
    if restart:
        sim.restart(ids[-1])
        for a, b in _connected_edges(n, [], chain):
            sim.connect(ids[a], ids[b])
    sim.heal()
    sim.run_until_quiet()
    assert sim.converged()
    for node in sim.nodes.values():
        assert set(node.engine.forked_origins()) == forked_origins
        assert set(node.engine.forked_origins().values()) == {common}
        assert node.store.digest() == digest(node.store.visible_recipes())
        assert {f.origin for f in node.store.load_forks()} == forked_origins
    # Honest recipes all survive; the forked origins show their shared part only.
    visible = sim.nodes[ids[0]].store.visible_recipes()
    assert sum(1 for r in visible if r.author in forked_origins) == forkers * common
    assert sum(1 for r in visible if r.author not in forked_origins) == 3


def test_twenty_thousand_origins_reconcile() -> None:
    # No new-origins budget: 20,500 origins from one peer is this test's point.
    config = EngineConfig(
        batch_size=1000, window=4, sync_interval=5.0, round_timeout=3.0, budgets={}
    )
    sim = Simulator(3, seed=9, config=config)
    a, b, c = sim.ids
    raws = []
    for i in range(20_500):
        key = SigningKey(i.to_bytes(4, "big") * 8)
        origin = bytes(key.verify_key)
        op = Op("create", make_recipe_id(origin, 0), None, RecipeFields(f"r{i}", "", ""))
        raws.append(sign_entry(key, 0, ZERO_HASH, 1_800_000_000_000 << 16, encode_op(op)).raw)
    sim.inject(a, raws[:11_000])  # a and c share 1,500 origins; b starts empty
    sim.inject(c, raws[9_500:])
    sim.connect(a, b)
    sim.connect(b, c)
    sim.run_until_quiet(max_time=300)
    for node in sim.nodes.values():
        assert node.store.entry_count() == 20_500
    assert not any(node.rejected for node in sim.nodes.values())
    # No message anyone sent exceeded the protocol's limit.
    assert sim.largest_message <= protocol.MAX_MESSAGE_BYTES


def test_a_long_fork_is_proven_where_it_starts_without_waiting_for_periodic_rounds() -> None:
    config = EngineConfig(batch_size=7, window=2, sync_interval=1000.0, round_timeout=3.0)
    sim = Simulator(2, seed=4, config=config)
    a, b = sim.ids
    key = SigningKey(b"\x77" * 32)
    one, other = _branches(key, 2, 8, 8)  # agree on seqs 0-1, then 8 seqs each
    sim.inject(a, one)
    sim.inject(b, other)
    sim.connect(a, b)
    started = sim.time.now
    sim.run_until_quiet(max_time=200)
    origin = bytes(key.verify_key)
    for node in sim.nodes.values():
        assert node.engine.forked_origins() == {origin: 2}
    assert sim.time.now - started < 30, "the fork was walked down one periodic round a seq"


@pytest.mark.parametrize(("common", "left"), [(0, 3), (3, 20), (14, 2), (5, 40)])
def test_a_fork_against_entries_with_spoiled_signatures_is_still_proven(
    common: int, left: int
) -> None:
    """The origin spoils the inner signatures of one branch and hands it out by
    backfill (each run checked at its checkpoints and end); the other branch is
    validly signed. Before fork proofs carried chains, the spoiled side could not
    be proven: the nodes disagreed for good."""
    config = EngineConfig(batch_size=50, window=2, sync_interval=1000.0, round_timeout=3.0)
    sim = Simulator(4, seed=common + left, config=config)
    ids = sim.ids
    key = SigningKey(b"\x5a" * 32)
    spoiled, clean = _branches(key, common, left, 3, forge_left=True)
    assert any(decode_entry(raw).signature == bytes(64) for raw in spoiled)
    for at in ids[:2]:
        sim.inject_backfill(at, spoiled)
    for at in ids[2:]:
        sim.inject(at, clean)
    assert sim.nodes[ids[0]].engine.held_count(bytes(key.verify_key)) == common + left
    for a, b in _connected_edges(4, [], chain=True):
        sim.connect(ids[a], ids[b])
    sim.run_until_quiet(max_time=300)
    assert sim.converged()
    origin = bytes(key.verify_key)
    for node in sim.nodes.values():
        assert node.engine.forked_origins() == {origin: common}
        (proof,) = node.store.load_forks()
        assert max(len(proof.first), len(proof.second)) <= MAX_CHAIN
        assert node.store.digest() == digest(node.store.visible_recipes())


def test_a_chain_with_spoiled_inner_signatures_is_relayed_whole() -> None:
    """No fork at all: the origin spoils inner signatures, one node takes the chain
    by backfill and must pass it on. A batch that cut the chain at a spoiled entry
    would be refused (and taken only rounds later, once a successor vouches for
    it); batches end runs at checkpoints instead, so nothing is refused."""
    config = EngineConfig(batch_size=20, window=2, sync_interval=5.0, round_timeout=3.0)
    sim = Simulator(3, seed=7, config=config)
    a, b, c = sim.ids
    key = SigningKey(b"\x5b" * 32)
    spoiled, _ = _branches(key, 0, 45, 1, forge_left=True)
    sim.inject_backfill(a, spoiled)
    sim.connect(a, b)
    sim.connect(b, c)
    sim.run_until_quiet(max_time=120)
    origin = bytes(key.verify_key)
    for node in sim.nodes.values():
        assert node.engine.held_count(origin) == 45
        assert not node.engine.forked_origins()
        assert not node.rejected
    assert sim.converged()
