"""LIVE carries a run of one origin's entries (protocol v4): ops written
together travel as one gossipsub message, and a run is refused whole unless it
is one origin's chain of consecutive, individually signed entries."""

from __future__ import annotations

import struct

import pytest
from nacl.signing import SigningKey

from p2psync.core import protocol
from p2psync.core.actions import BudgetExceeded, Persist, PublishLive
from p2psync.core.budgets import BudgetKind, BudgetRate
from p2psync.core.engine import EngineConfig
from p2psync.core.entry import MAX_ENTRY_BYTES, ZERO_HASH, entry_hash, sign_entry
from p2psync.core.errors import RemoteError
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import MAX_OP_BYTES, Op, RecipeFields
from p2psync.core.reasons import Reason
from p2psync.node.validation import TopicChecks
from tests.unit.test_core_engine import (
    PEER,
    Node,
    X,
    _finish_connect_round,
    chain,
    kinds,
    rejected,
    sent,
    signed_chain,
)

Y = SigningKey(b"\x43" * 32)


def _live(raws: list[bytes]) -> bytes:
    return protocol.encode(protocol.Live(tuple(raws)))


def _refused(data: bytes) -> str:
    with pytest.raises(RemoteError) as info:
        protocol.decode(data)
    return info.value.reason


def test_ops_written_together_are_published_as_one_live_run() -> None:
    node = Node(1)
    me = bytes(node.key.verify_key)
    ops = [
        Op("create", make_recipe_id(me, seq), None, RecipeFields(f"soup {seq}", "a,b", "stir"))
        for seq in range(25)
    ]
    actions = node.run(node.engine.append_local(node.time.instant(), ops))
    (publish,) = kinds(actions, PublishLive)  # was one PublishLive per op
    message = protocol.decode(publish.data)
    assert isinstance(message, protocol.Live)
    assert [struct.unpack_from(">Q", raw, 33)[0] for raw in message.entries] == list(range(25))
    (persist,) = kinds(actions, Persist)
    assert [a.entry.raw for a in persist.entries] == list(message.entries)


def test_a_long_write_is_cut_into_runs_at_the_count_and_byte_limits() -> None:
    small = [e.raw for e in chain(X, 100)]
    runs = protocol.live_runs(small)
    most = protocol.MAX_LIVE_ENTRIES
    assert [len(r.entries) for r in runs] == [most, 100 - most]
    big = [e.raw for e in signed_chain(X, [b"x" * (MAX_OP_BYTES // 2)] * 5)]
    runs = protocol.live_runs(big)
    assert all(sum(map(len, r.entries)) <= protocol.MAX_LIVE_BYTES for r in runs)
    assert [len(r.entries) for r in runs] == [1, 1, 1, 1, 1]  # two would pass the limit
    largest = [e.raw for e in signed_chain(X, [b"x" * MAX_OP_BYTES])]
    assert len(largest[0]) == MAX_ENTRY_BYTES
    for raws in (small, big, largest):
        decoded = [protocol.decode(protocol.encode(r)) for r in protocol.live_runs(raws)]
        assert [raw for m in decoded if isinstance(m, protocol.Live) for raw in m.entries] == raws


def test_a_run_that_is_not_one_origins_chain_is_refused_whole() -> None:
    xs = [e.raw for e in chain(X, 4)]
    ys = [e.raw for e in chain(Y, 4)]
    relinked = chain(X, 2, start=5, prev=chain(X, 5)[-1].hash())  # 5, 6: a chain after a gap
    assert _refused(_live(xs[:2] + ys[2:])) == Reason.MALFORMED  # two origins
    assert _refused(_live([xs[0], xs[2]])) == Reason.MALFORMED  # a gap in the seqs
    assert _refused(_live([xs[1], xs[0]])) == Reason.MALFORMED  # out of order
    assert _refused(_live([xs[0], xs[0]])) == Reason.MALFORMED  # a repeat
    other = chain(X, 2, name="other")  # seq 1 of another history: its prev is not xs[0]'s hash
    assert _refused(_live([xs[0], other[1].raw])) == Reason.MALFORMED
    assert _refused(_live([xs[3], relinked[0].raw])) == Reason.MALFORMED  # 3 then 5
    assert _refused(_live([xs[0], b"x" * 100])) == Reason.MALFORMED  # too short for a header
    head = bytes([protocol.PROTOCOL_VERSION, protocol.LIVE])
    assert _refused(head + struct.pack(">H", 0)) == Reason.MALFORMED
    too_many = [e.raw for e in chain(X, protocol.MAX_LIVE_ENTRIES + 1)]
    assert _refused(_live(too_many)) == Reason.MALFORMED
    assert _refused(_live(xs) + b"\x00") == Reason.MALFORMED  # trailing bytes
    assert _refused(_live(xs)[:-1]) == Reason.MALFORMED  # truncated
    halves = [e.raw for e in signed_chain(X, [b"x" * (MAX_OP_BYTES // 2 + 100)] * 2)]
    assert _refused(_live(halves)) == Reason.OVERSIZED  # over MAX_LIVE_BYTES together
    assert isinstance(protocol.decode(_live(xs)), protocol.Live)


def test_the_validator_refuses_a_run_with_one_forged_entry() -> None:
    entries = chain(X, 5)
    raws = [e.raw for e in entries]
    assert TopicChecks().live(_live(raws)) is None
    forged = raws[4][:-1] + bytes([raws[4][-1] ^ 1])  # the last: the links still hold
    assert TopicChecks().live(_live([*raws[:4], forged])) is Reason.SIGNATURE
    # Its origin can link a garbage signature into a chain it signs on: a
    # BATCH would take that inner entry on a checkpoint's word, a LIVE not.
    assert TopicChecks().live(_live(_garbage_inside(X))) is Reason.SIGNATURE


def _garbage_inside(key: SigningKey) -> list[bytes]:
    """seq 0 signed, seq 1 with a garbage signature, seq 2 signed and linking to it."""
    first = sign_entry(key, 0, ZERO_HASH, 0, b"{}")
    inner = sign_entry(key, 1, first.hash(), 1, b"{}").raw[:-64] + bytes(64)
    last = sign_entry(key, 2, entry_hash(inner), 2, b"{}")
    return [first.raw, inner, last.raw]


def test_a_run_is_applied_in_one_persist_and_a_gap_before_it_starts_a_round() -> None:
    node = Node(1)
    _finish_connect_round(node)
    entries = chain(X, 30)
    actions = node.run(node.engine.live_received(PEER, _live([e.raw for e in entries[:10]])))
    (persist,) = kinds(actions, Persist)
    assert [a.entry.seq for a in persist.entries] == list(range(10))
    assert not sent(actions, "recon")  # it starts at 0: nothing missed
    actions = node.run(node.engine.live_received(PEER, _live([e.raw for e in entries[20:]])))
    assert len(kinds(actions, Persist)[0].entries) == 10
    assert sent(actions, "recon")  # 10..19 are missing: ask
    assert node.store.entry_count() == 20


def test_the_engine_refuses_a_run_with_a_forged_entry_whole() -> None:
    node = Node(1)
    raws = [e.raw for e in chain(X, 5)]
    forged = raws[2][:-1] + bytes([raws[2][-1] ^ 1])  # the links before it still hold
    actions = node.run(node.engine.live_received(PEER, _live([*raws[:2], forged])))
    assert rejected(actions) == {Reason.SIGNATURE}
    assert node.store.entry_count() == 0
    node.run(node.engine.live_received(PEER, _live(raws)))  # the true run still goes in
    assert node.store.entry_count() == 5
    other = Node(2)
    actions = other.run(other.engine.live_received(PEER, _live(_garbage_inside(Y))))
    assert rejected(actions) == {Reason.SIGNATURE} and other.store.entry_count() == 0


def _node_with_live_budget(tokens: int) -> Node:
    """A node whose peers may publish `tokens` live entries, barely refilled."""
    budgets = {BudgetKind.LIVE: BudgetRate(burst=tokens, per_second=0.001)}
    config = EngineConfig(
        batch_size=3, window=2, sync_interval=60, round_timeout=5, budgets=budgets
    )
    return Node(1, config)


def test_a_run_costs_its_publisher_one_live_token_per_entry() -> None:
    node = _node_with_live_budget(30)
    entries = chain(X, 40)
    first = node.run(node.engine.live_received(PEER, _live([e.raw for e in entries[:25]])))
    assert len(kinds(first, Persist)[0].entries) == 25
    second = node.run(node.engine.live_received(PEER, _live([e.raw for e in entries[25:35]])))
    assert kinds(second, BudgetExceeded) and not kinds(second, Persist)  # 25 + 10 > 30
    assert node.store.entry_count() == 25


def test_each_rule_of_a_run_refuses_on_its_own() -> None:
    """Runs that break one rule only, the hash links intact: each would pass
    with that rule's check removed."""
    x0 = chain(X, 1)[0]
    other_origin = sign_entry(Y, 1, x0.hash(), 1, b"{}")  # Y may sign any prev
    assert _refused(_live([x0.raw, other_origin.raw])) == Reason.MALFORMED
    skipped_seqs = sign_entry(X, 5, x0.hash(), 1, b"{}")  # links to 0, claims 5
    assert _refused(_live([x0.raw, skipped_seqs.raw])) == Reason.MALFORMED
    assert _refused(_live([b"x" * 50, x0.raw])) == Reason.MALFORMED  # no header to read
    assert TopicChecks().live(_live([b"x" * 50, x0.raw])) is Reason.MALFORMED


def test_a_refused_run_leaves_no_verdict_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The validator notes a run's entries as checked only once all of them
    verified, and checks the last first: a forgery appended to genuine
    entries costs one check."""
    from p2psync.core import entry as entry_module
    from p2psync.core.entry import CheckedSignatures

    checks: list[int] = []
    real = entry_module.verify_signature

    def counted(entry, key_cache=None):  # type: ignore[no-untyped-def]
        checks.append(entry.seq)
        return real(entry, key_cache)

    monkeypatch.setattr(entry_module, "verify_signature", counted)
    checked = CheckedSignatures()
    garbage = _garbage_inside(X)  # seq 2 verifies, then seq 1 fails
    assert TopicChecks(checked).live(_live(garbage)) is Reason.SIGNATURE
    assert checks == [2, 1] and len(checked) == 0  # seq 2 verified, yet not noted
    raws = [e.raw for e in chain(X, 4)]
    forged = raws[3][:-1] + bytes([raws[3][-1] ^ 1])
    checks.clear()
    assert TopicChecks(checked).live(_live([*raws[:3], forged])) is Reason.SIGNATURE
    assert checks == [3] and len(checked) == 0
    assert TopicChecks(checked).live(_live(raws)) is None
    assert all(entry_hash(raw) in checked for raw in raws)


def test_entries_claimed_reads_a_lives_count_without_decoding() -> None:
    raws = [e.raw for e in chain(X, 7)]
    assert protocol.entries_claimed(_live(raws)) == 7
    assert protocol.entries_claimed(protocol.encode(protocol.Ack(1, 2))) == 1
    assert protocol.entries_claimed(b"") == 1


def test_replaying_runs_we_hold_spends_no_ones_budget() -> None:
    """Anyone can replay a publisher's old LIVEs once the seen cache forgot
    them; a run of 64 held entries used to cost that publisher 64 tokens and,
    past its budget, a penalty."""
    node = _node_with_live_budget(30)
    raws = [e.raw for e in chain(X, 25)]
    first = node.run(node.engine.live_received(PEER, _live(raws)))
    assert len(kinds(first, Persist)[0].entries) == 25
    for _ in range(5):  # 125 entries replayed against 5 tokens left
        assert not kinds(node.run(node.engine.live_received(PEER, _live(raws))), BudgetExceeded)
    fresh = [e.raw for e in chain(X, 31)[25:]]  # 6 new ones: 25 + 6 > 30
    assert kinds(node.run(node.engine.live_received(PEER, _live(fresh))), BudgetExceeded)
