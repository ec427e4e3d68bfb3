"""A hostile peer costs the engine a small, bounded amount (issue 12).

Keys and peer ids cost an attacker nothing, so each test invents many.
"""

from __future__ import annotations

import secrets

from nacl.signing import SigningKey

from p2psync.core import protocol
from p2psync.core.actions import Action, BudgetExceeded, Dropped, Persist, Rejected, SendTo
from p2psync.core.budgets import DEFAULT_BUDGETS, BudgetKind, BudgetRate, PeerBudgets
from p2psync.core.engine import EngineConfig
from p2psync.core.entry import ZERO_HASH, sign_entry
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, RecipeFields
from p2psync.core.query import Query
from p2psync.core.reasons import Reason
from tests.unit.test_core_engine import PEER, Node, chain

ONE_HOUR = 3600.0


def _forged_live(seq: int) -> bytes:
    """A LIVE entry of a random origin whose signature is garbage (no key needed)."""
    key = SigningKey(secrets.token_bytes(32))
    entry = sign_entry(key, seq, ZERO_HASH if seq == 0 else b"\x01" * 32, 1, b"{}")
    return entry.signed_part + secrets.token_bytes(64)


def _budget_hits(actions: list[Action]) -> list[BudgetKind]:
    return [a.kind for a in actions if isinstance(a, BudgetExceeded)]


def test_forged_live_entries_leave_no_state_behind() -> None:
    node = Node(1)
    node.session(PEER)
    for i in range(300):
        node.live(_forged_live(i % 7))
    inner = node.engine.inner
    assert inner.held_counts() == {}
    assert not list(inner._progress.origins())
    assert inner._verify_keys == {}  # keys are cached only once they verified something


def test_a_forged_live_entry_starts_no_round() -> None:
    """A gap check on a refused entry let one 212-byte forgery make every node that
    got it start a full round with `reply_wanted`."""
    node = Node(1)
    node.session(PEER)
    actions = node.live(_forged_live(5))
    assert {a.reason for a in actions if isinstance(a, Rejected)} == {"signature"}
    assert not [a for a in actions if isinstance(a, SendTo)]


def test_peer_state_is_freed_on_disconnect() -> None:
    node = Node(1)
    engine = node.engine
    for i in range(40):
        peer = f"stranger-{i}"
        engine.peer_connected(peer)
        question = protocol.Recon(7, protocol.ROUND_START, ())
        engine.message_received(peer, protocol.encode(question))
        engine.peer_disconnected(peer)
    assert engine.inner._peers == {}
    late = engine.message_received("stranger-3", protocol.encode(protocol.Ack(7, 0)))
    assert [a.reason for a in late if isinstance(a, Dropped)] == [Reason.UNEXPECTED]
    assert engine.inner._peers == {}  # a late message recreates nothing


def test_live_flood_past_the_budget_is_dropped_and_scored_down() -> None:
    node = Node(1)
    burst = int(DEFAULT_BUDGETS[BudgetKind.LIVE].burst)
    entries = chain(SigningKey(b"\x51" * 32), burst + 10)
    hits: list[BudgetKind] = []
    for entry in entries:
        hits += _budget_hits(node.live(entry))
    assert hits == [BudgetKind.LIVE] * 10
    assert node.store.entry_count() == burst
    # The refill is per second: a second later the peer may go on.
    node.time.now += 1.0
    assert not _budget_hits(node.live(entries[-1]))


def test_new_origins_budget_refuses_the_excess_and_refills() -> None:
    rates = {BudgetKind.NEW_ORIGINS: BudgetRate(burst=5, per_second=5 / ONE_HOUR)}
    node = Node(1, _config(rates))
    strangers = [SigningKey(bytes([0x60 + i]) * 32) for i in range(8)]
    first = [chain(key, 2) for key in strangers]
    actions = node.batch([e.raw for entries in first for e in entries], peer="sybil")
    assert _budget_hits(actions) == [BudgetKind.NEW_ORIGINS]
    refused = [a for a in actions if isinstance(a, Rejected) and a.reason is Reason.BUDGET]
    assert sum(a.count for a in refused) == 3 * 2  # three origins over, both entries each
    assert len(node.engine.held_counts()) == 5
    # An origin already held is no new origin: its next entries still come in.
    held_origin = next(iter(node.engine.held_counts()))
    key = next(k for k in strangers if bytes(k.verify_key) == held_origin)
    more = chain(key, 4)
    assert not _budget_hits(node.batch([e.raw for e in more[2:]], peer="sybil"))
    # Another peer has a budget of its own; the first one's refills within the hour.
    assert not _budget_hits(node.batch([e.raw for e in first[5]], peer="honest"))
    node.time.now += ONE_HOUR
    rest = [e.raw for entries in first[6:] for e in entries]
    assert not _budget_hits(node.batch(rest, peer="sybil"))
    assert len(node.engine.held_counts()) == 8


def test_query_and_recon_floods_are_budgeted() -> None:
    rates = {
        BudgetKind.QUERY: BudgetRate(burst=3, per_second=0.1),
        BudgetKind.RECON: BudgetRate(burst=4, per_second=0.1),
    }
    node = Node(1, _config(rates))
    node.session("flood")
    hits: list[BudgetKind] = []
    for i in range(6):
        hits += _budget_hits(node.engine.message_received("flood", protocol.encode(Query(i))))
        question = protocol.Recon(100 + i, protocol.ROUND_START, ())
        hits += _budget_hits(node.engine.message_received("flood", protocol.encode(question)))
    assert sorted(hits) == sorted([BudgetKind.QUERY] * 3 + [BudgetKind.RECON] * 2)


def test_over_budget_penalises_the_deliverer_through_the_executor() -> None:
    rates = {BudgetKind.QUERY: BudgetRate(burst=1, per_second=0.0)}
    node = Node(1, _config(rates))
    node.session("flood")
    node.run(node.engine.message_received("flood", protocol.encode(Query(1))))
    penalised: list[tuple[str, str]] = []
    node.executor.effects.penalize = lambda peer, reason: penalised.append((peer, reason))  # type: ignore[method-assign]
    node.run(node.engine.message_received("flood", protocol.encode(Query(2))))
    assert penalised == [("flood", "budget_query")]


def test_the_budget_table_is_bounded_however_many_peer_ids() -> None:
    budgets = PeerBudgets(dict(DEFAULT_BUDGETS), max_peers=100)
    for i in range(1000):
        budgets.spend(f"peer-{i}", BudgetKind.LIVE, float(i))
    assert len(budgets) == 100


def test_a_full_store_refuses_other_origins_but_not_our_own_writes() -> None:
    node = Node(1)
    node.engine.inner.set_store_full(True)
    actions = node.batch([e.raw for e in chain(SigningKey(b"\x52" * 32), 3)])
    assert [(a.reason, a.count) for a in actions if isinstance(a, Rejected)] == [
        (Reason.STORE_FULL, 3)
    ]
    assert node.store.entry_count() == 0
    _, _, own = node.engine.append_one(
        lambda seq: Op("create", _own_recipe(node, seq), None, RecipeFields("mine", "", ""))
    )
    node.run(own)
    assert any(isinstance(a, Persist) for a in own)
    assert node.store.entry_count() == 1
    node.engine.inner.set_store_full(False)
    node.batch([e.raw for e in chain(SigningKey(b"\x52" * 32), 3)])
    assert node.store.entry_count() == 4


def _own_recipe(node: Node, seq: int) -> str:
    return make_recipe_id(bytes(node.key.verify_key), seq)


def _config(rates: dict[BudgetKind, BudgetRate]) -> EngineConfig:
    return EngineConfig(batch_size=3, window=2, sync_interval=60, round_timeout=5, budgets=rates)


def test_a_relayed_flood_is_charged_to_its_publisher_not_the_honest_relay() -> None:
    """Every honest node forwards what passed its validator; charging the relay let
    one flood of fresh-key entries get honest relays banned by their neighbours."""
    rates = {BudgetKind.NEW_ORIGINS: BudgetRate(burst=5, per_second=0.0)}
    node = Node(1, _config(rates))
    penalised: list[tuple[str, str]] = []
    node.executor.effects.penalize = lambda peer, reason: penalised.append((peer, reason))  # type: ignore[method-assign]
    for i in range(12):
        key = SigningKey(bytes([0x70 + i]) * 32)
        raw = chain(key, 1)[0].raw
        data = protocol.encode(protocol.Live((raw,)))
        node.run(
            node.engine.inner.live_received("relay", data, node.time.instant(), publisher="flooder")
        )
    assert penalised and {peer for peer, _ in penalised} == {"flooder"}
    assert len(node.engine.held_counts()) == 5


def test_a_sync_peer_past_the_new_origins_budget_is_not_scored_down() -> None:
    """Backfill serves what we asked for: a join of many authors waits, it bans nobody."""
    rates = {BudgetKind.NEW_ORIGINS: BudgetRate(burst=2, per_second=0.0)}
    node = Node(1, _config(rates))
    penalised: list[tuple[str, str]] = []
    node.executor.effects.penalize = lambda peer, reason: penalised.append((peer, reason))  # type: ignore[method-assign]
    for n in range(5):
        keys = [SigningKey(bytes([0x80 + 5 * n + i]) * 32) for i in range(5)]
        actions = node.batch([chain(k, 1)[0].raw for k in keys], peer="honest-sync-peer")
        assert actions
    assert not penalised
    assert len(node.engine.held_counts()) == 2


def test_an_op_kind_that_is_a_list_or_object_is_a_bad_op_not_a_crash() -> None:
    """`"k": []` made `kind in OP_KINDS` raise TypeError (unhashable) out of the
    engine: one signed entry, from a key made for it, took down every node it
    reached. It is a validly signed entry with an unusable op: kept, changing
    no recipe, refused as bad_op."""
    for kind in (b"[]", b'{"a": 1}', b"[1, 2]"):
        key = SigningKey(secrets.token_bytes(32))
        recipe_id = make_recipe_id(bytes(key.verify_key), 0).encode()
        entry = sign_entry(
            key, 0, ZERO_HASH, 1, b'{"k": ' + kind + b', "id": "' + recipe_id + b'"}'
        )
        node = Node(1)
        node.session(PEER)
        actions = node.live(entry)
        assert isinstance(actions[0], Persist) and actions[0].entries[0].op is None
        assert [a.reason for a in actions if isinstance(a, Rejected)] == [Reason.BAD_OP]
