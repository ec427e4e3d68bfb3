"""The sans-I/O sync engine against forgeries, forks, floods and stalls (SPEC §6.3-6.5)."""

from __future__ import annotations

import struct
import time as wallclock

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.actions import (
    Action,
    Dropped,
    Persist,
    RecordFork,
    Rejected,
    RestartSession,
    RoundFinished,
    SendTo,
)
from p2psync.core.engine import STALLED_ROUNDS, EngineConfig, SyncEngine
from p2psync.core.entry import ZERO_HASH, Entry, sign_entry
from p2psync.core.hlc import MAX_FORWARD_MS, wall_ms_of
from p2psync.core.ids import make_recipe_id
from p2psync.core.items import MAX_BOUND, MIN_BOUND, Item
from p2psync.core.ops import Op, RecipeFields, encode_op
from p2psync.core.progress import Progress
from p2psync.core.rounds import LIVE_SETTLE
from p2psync.node.executor import Executor
from p2psync.store.memory import MemoryStore
from tests.sim.driver import FakeTime, TimedEngine
from tests.sim.simulator import SimObserver

X = SigningKey(b"\x41" * 32)  # an author whose entries travel
ATTACKER = SigningKey(b"\x42" * 32)
X_ORIGIN = bytes(X.verify_key)
HLC0 = 1_800_000_000_000 << 16
PEER = "peer-b"
_HEADER = struct.Struct(">B32sQ32sQH")


class Node:
    """One engine over a memory store; actions run through the node's Executor."""

    def __init__(self, seed: int, config: EngineConfig | None = None) -> None:
        self.key = SigningKey(bytes([seed]) * 32)
        self.store = MemoryStore()
        self.time = FakeTime()
        self.engine = TimedEngine(
            SyncEngine(
                self.key,
                Progress(),
                self.store,
                self.time.instant(),
                config or EngineConfig(batch_size=3, window=2, sync_interval=60, round_timeout=5),
            ),
            self.time,
        )
        self.observer = SimObserver()
        self.executor = Executor(self.engine.inner, self.store, self.observer)

    def run(self, actions: list[Action]) -> list[Action]:
        self.executor.run(actions, self.time.instant())
        return actions

    def live(self, entry: Entry | bytes, peer: str = PEER) -> list[Action]:
        raw = entry.raw if isinstance(entry, Entry) else entry
        return self.run(self.engine.live_received(peer, protocol.encode(protocol.Live((raw,)))))

    def session(self, peer: str) -> None:
        """Open a session with `peer` (sync messages come within one); its first
        RECON is dropped, as if lost."""
        if peer not in self.engine.connected_peers():
            self.engine.peer_connected(peer)

    def batch(self, raws, peer: str = PEER, round_no: int = 1, batch_no: int = 0, last=True):
        self.session(peer)
        message = protocol.Batch(round_no, batch_no, last, tuple(raws))
        return self.run(self.engine.message_received(peer, protocol.encode(message)))


def _create(origin: bytes, seq: int, name: str = "r") -> bytes:
    rid = make_recipe_id(origin, seq)
    return encode_op(Op("create", rid, None, RecipeFields(f"{name}{seq}", "g", "i")))


def chain(key: SigningKey, n: int, *, start: int = 0, prev: bytes = ZERO_HASH, name="r"):
    origin = bytes(key.verify_key)
    entries = []
    for seq in range(start, start + n):
        entry = sign_entry(key, seq, prev, HLC0 + seq, _create(origin, seq, name))
        prev = entry.hash()
        entries.append(entry)
    return entries


def signed_chain(key: SigningKey, ops: list[bytes], start: int = 0) -> list[Entry]:
    """`ops` signed by `key` as consecutive, hash-linked entries from seq `start`."""
    entries: list[Entry] = []
    prev = ZERO_HASH
    for i, op in enumerate(ops):
        entries.append(sign_entry(key, start + i, prev, i, op))
        prev = entries[-1].hash()
    return entries


def kinds(actions: list[Action], cls: type) -> list:
    return [a for a in actions if isinstance(a, cls)]


def rejected(actions: list[Action]) -> set[str]:
    return {a.reason for a in actions if isinstance(a, Rejected)}


def sent(actions: list[Action], kind: str) -> list[SendTo]:
    return [a for a in actions if isinstance(a, SendTo) and a.kind == kind]


# ------------------------------------------------------------------ forgeries


def test_valid_live_entry_is_persisted() -> None:
    node = Node(1)
    entry = chain(X, 1)[0]
    actions = node.live(entry)
    (persist,) = kinds(actions, Persist)
    assert persist.source == "live" and persist.peer == PEER
    assert [a.entry.raw for a in persist.entries] == [entry.raw]
    assert node.store.entry_count() == 1 and node.engine.holds(X_ORIGIN, 0)
    assert not rejected(actions)


def test_forged_signature_in_live_is_rejected_and_not_persisted() -> None:
    node = Node(1)
    entry = chain(X, 1)[0]
    forged = bytearray(entry.raw)
    forged[-5] ^= 0x01
    actions = node.live(bytes(forged))
    assert rejected(actions) == {"signature"}
    assert not kinds(actions, Persist)
    assert node.store.entry_count() == 0
    assert not node.engine.holds(X_ORIGIN, 0)


def _signed_as(origin: bytes, signer: SigningKey, seq: int, prev: bytes, op: bytes) -> bytes:
    head = _HEADER.pack(1, origin, seq, prev, HLC0, len(op)) + op
    return head + signer.sign(head).signature


def test_entry_claiming_another_origin_is_rejected() -> None:
    node = Node(1)
    raw = _signed_as(X_ORIGIN, ATTACKER, 0, ZERO_HASH, _create(X_ORIGIN, 0, "evil"))
    for actions in (node.live(raw), node.batch([raw])):
        assert rejected(actions) == {"signature"}
        assert not kinds(actions, Persist)
    assert node.store.entry_count() == 0
    assert node.engine.held_count(X_ORIGIN) == 0


def test_replay_with_changed_field_is_rejected() -> None:
    node = Node(1)
    entries = chain(X, 2)
    node.live(entries[0])
    # Change the hlc of entry 1 (not held yet) and of entry 0 (held), keep signatures.
    for entry in entries:
        changed = bytearray(entry.raw)
        changed[80] ^= 0x01  # last byte of the hlc field
        for actions in (node.live(bytes(changed)), node.batch([bytes(changed)])):
            assert rejected(actions) and rejected(actions) <= {"signature", "fork"}
            assert not kinds(actions, Persist)
    assert node.store.entry_count() == 1
    assert node.store.log[(X_ORIGIN, 0)][0] == entries[0].raw


# ------------------------------------------------------------------ forks


def _fork_of(entry: Entry) -> Entry:
    """Same key, same seq and prev, a different op: a validly signed second entry."""
    origin = entry.origin
    op = _create(origin, entry.seq, "fork")
    assert op != entry.op
    return sign_entry(X, entry.seq, entry.prev, entry.hlc + 1, op)


def test_fork_is_rejected_and_proven_live_and_in_batch() -> None:
    node = Node(1)
    entries = chain(X, 3)
    node.batch([e.raw for e in entries])
    assert node.store.entry_count() == 3 and len(node.store.visible_recipes()) == 3
    # A second entry for seq 2, delivered live: refused, and proof of the fork.
    actions = node.live(_fork_of(entries[2]))
    assert rejected(actions) == {"fork"} and not kinds(actions, Persist)
    (recorded,) = kinds(actions, RecordFork)
    assert recorded.new_origin and (recorded.proof.origin, recorded.proof.seq) == (X_ORIGIN, 2)
    # The deterministic rule: X's entries from seq 2 on no longer count.
    assert node.engine.forked_origins() == {X_ORIGIN: 2}
    assert len(node.store.visible_recipes()) == 2
    # A fork at seq 1, in a batch, moves the hidden part down.
    actions = node.batch([_fork_of(entries[1]).raw])
    (recorded,) = kinds(actions, RecordFork)
    assert not recorded.new_origin and recorded.proof.seq == 1
    assert len(node.store.visible_recipes()) == 1
    # X's entries at or past its fork are refused as such, whichever version.
    for raw in (entries[2].raw, _fork_of(entries[2]).raw):
        assert rejected(node.live(raw)) == {"forked"}
    # The log keeps the first versions; nothing was overwritten.
    assert [node.store.log[(X_ORIGIN, s)][0] for s in range(3)] == [e.raw for e in entries]
    assert node.store.load_forks() == [recorded.proof]


def test_forgery_of_a_held_seq_is_a_bad_signature_not_a_fork() -> None:
    node = Node(1)
    entries = chain(X, 2)
    node.batch([e.raw for e in entries])
    forged = sign_entry(ATTACKER, 1, entries[0].hash(), HLC0 + 9, _create(X_ORIGIN, 1, "f"))
    as_x = forged.raw[:1] + X_ORIGIN + forged.raw[33:]  # X's origin, the attacker's signature
    actions = node.live(as_x)
    assert rejected(actions) == {"signature"}
    assert not kinds(actions, RecordFork) and not node.engine.forked_origins()


def test_forked_branch_extending_held_chain_is_rejected() -> None:
    node = Node(1)
    entries = chain(X, 2)
    node.batch([e.raw for e in entries])
    # X signs an alternative seq 1 and builds seq 2, 3 on it.
    branch = chain(X, 3, start=1, prev=entries[0].hash(), name="alt")
    assert branch[0].raw != entries[1].raw
    # Only the new seqs 2..3, linked to the forked seq 1: their neighbour check catches it.
    actions = node.batch([e.raw for e in branch[1:]])
    assert rejected(actions) == {"fork"}
    assert not kinds(actions, Persist)
    actions = node.live(branch[1])
    assert rejected(actions) == {"fork"}
    # The whole branch, overlapping the held seq 1.
    actions = node.batch([e.raw for e in branch])
    assert rejected(actions) == {"fork"}
    assert node.store.entry_count() == 2


def test_two_versions_of_one_seq_in_one_batch() -> None:
    node = Node(1)
    entry = chain(X, 1)[0]
    actions = node.batch([entry.raw, _fork_of(entry).raw])
    assert "fork" in rejected(actions)
    assert node.store.entry_count() <= 1


# ------------------------------------------------------------------ authorship


def test_op_on_another_authors_recipe_is_logged_but_not_applied() -> None:
    node = Node(1)
    created = chain(X, 1)[0]
    node.live(created)
    rid = make_recipe_id(X_ORIGIN, 0)
    before = node.store.recipe(rid)
    assert before is not None and before.fields is not None
    for kind, fields in (("update", RecipeFields("hijacked", "", "")), ("delete", None)):
        attacker_origin = bytes(ATTACKER.verify_key)
        seq = node.engine.held_count(attacker_origin)
        prev = ZERO_HASH if seq == 0 else node.store.log[(attacker_origin, seq - 1)][1]
        op = encode_op(Op(kind, rid, 0, fields))  # type: ignore[arg-type]
        entry = sign_entry(ATTACKER, seq, prev, HLC0 + 100 + seq, op)
        actions = node.live(entry)
        assert rejected(actions) == {"not_author"}
        (persist,) = kinds(actions, Persist)
        assert [(a.entry.raw, a.op) for a in persist.entries] == [(entry.raw, None)]
        assert node.engine.holds(attacker_origin, seq)  # the log keeps it
        assert node.store.recipe(rid) == before  # the recipe does not change
    assert node.store.entry_count() == 3
    assert len(node.store.visible_recipes()) == 1


# ------------------------------------------------------------------ duplicates, chains


def test_duplicates_are_idempotent() -> None:
    node = Node(1)
    raws = [e.raw for e in chain(X, 5)]
    first = node.batch(raws)
    assert len(kinds(first, Persist)[0].entries) == 5
    digest = node.store.digest()
    for again in (node.batch(raws), node.batch(raws[1:3]), node.live(raws[4])):
        assert not kinds(again, Persist)
        assert not rejected(again)
    # A batch mixing held and new entries persists only the new ones.
    more = chain(X, 2, start=5, prev=chain(X, 5)[-1].hash())
    actions = node.batch(raws[3:] + [e.raw for e in more])
    assert [a.entry.seq for a in kinds(actions, Persist)[0].entries] == [5, 6]
    assert node.store.entry_count() == 7
    assert node.store.digest() != digest


def test_batch_with_tampered_earlier_entry_is_rejected_as_chain() -> None:
    node = Node(1)
    raws = [e.raw for e in chain(X, 4)]
    for index, offset in ((1, 100), (0, 90), (2, -1), (1, 50), (1, 75)):
        tampered = list(raws)
        changed = bytearray(tampered[index])
        changed[offset] ^= 0x20
        tampered[index] = bytes(changed)
        actions = node.batch(tampered)
        assert rejected(actions) == {"chain"}, (index, offset)
        assert sum(a.count for a in kinds(actions, Rejected)) == 4
        assert not kinds(actions, Persist)
    assert node.store.entry_count() == 0
    assert node.engine.held_count(X_ORIGIN) == 0


# ------------------------------------------------------------------ rounds


def _finish_connect_round(node: Node, peer: str = PEER) -> int:
    """Connect `peer`, which holds nothing: it answers our question with "all the same"."""
    (question,) = sent(node.engine.peer_connected(peer), "recon")
    message = protocol.decode(question.data)
    assert isinstance(message, protocol.Recon) and not message.flags & protocol.FROM_RESPONDER
    (asked,) = message.ranges
    assert isinstance(asked, protocol.FingerprintRange)
    assert (asked.lower, asked.upper) == (MIN_BOUND, MAX_BOUND)
    same = protocol.Recon(message.round, protocol.FROM_RESPONDER, (protocol.DoneRange(*_ALL),))
    finished = node.run(node.engine.message_received(peer, protocol.encode(same)))
    assert [r.ok for r in kinds(finished, RoundFinished)] == [True]
    assert not node.engine.round_active(peer)
    return message.round


_ALL = (MIN_BOUND, MAX_BOUND)


def _item(entries: list[Entry], held: list[int]) -> Item:
    """The item of a peer holding `held` of `entries` (a contiguous prefix)."""
    prefix = len(held)
    return Item(entries[0].origin, prefix, entries[prefix - 1].hash(), BitMap64())


def test_gap_in_live_entries_triggers_a_round_with_the_sender() -> None:
    node = Node(1)
    _finish_connect_round(node)
    entries = chain(X, 6)
    for entry in entries[:3]:
        assert not sent(node.live(entry), "recon")
    actions = node.live(entries[5])
    assert kinds(actions, Persist)  # a validly signed later entry is kept
    (question,) = sent(actions, "recon")
    assert question.peer == PEER
    message = protocol.decode(question.data)
    assert isinstance(message, protocol.Recon)
    # The sender answers with its item for X: it holds all six.
    items = protocol.ItemsRange(*_ALL, (_item(entries, list(range(6))),))
    answer = protocol.Recon(message.round, protocol.FROM_RESPONDER, (items,))
    (want,) = sent(node.run(node.engine.message_received(PEER, protocol.encode(answer))), "want")
    wanted = protocol.decode(want.data)
    assert isinstance(wanted, protocol.Want) and wanted.final
    (claim,) = wanted.claims
    # We hold 0..2 and 5; the claim leaves out seq 2 so a fork there would show.
    assert (claim.origin, claim.prefix, list(claim.beyond)) == (X_ORIGIN, 2, [5])
    reply = node.batch([e.raw for e in entries[2:5]], round_no=message.round)
    assert [r.ok for r in kinds(reply, RoundFinished)] == [True]
    assert node.store.entry_count() == 6


def test_a_quiet_live_stream_is_followed_by_one_round_for_a_lost_tail() -> None:
    """The last live entries of a burst have no successor to show them missing:
    once the peer that handed us live entries is quiet for LIVE_SETTLE, one
    round checks, long before the periodic one (sync_interval 60 here)."""
    node = Node(1)
    _finish_connect_round(node)
    node.time.now += 1
    for entry in chain(X, 3):
        assert not sent(node.live(entry), "recon")  # no gap: no round
    node.time.now += LIVE_SETTLE / 2
    assert not sent(node.run(node.engine.tick()), "recon")  # the stream may go on
    node.time.now += LIVE_SETTLE
    (question,) = sent(node.run(node.engine.tick()), "recon")
    assert question.peer == PEER
    message = protocol.decode(question.data)
    assert isinstance(message, protocol.Recon) and message.flags & protocol.ROUND_START
    same = protocol.Recon(message.round, protocol.FROM_RESPONDER, (protocol.DoneRange(*_ALL),))
    node.run(node.engine.message_received(PEER, protocol.encode(same)))
    node.time.now += 10 * LIVE_SETTLE
    assert not sent(node.run(node.engine.tick()), "recon")  # one check per quiet spell


def _batch_entries(actions: list[Action]) -> list[protocol.Batch]:
    batches = []
    for action in sent(actions, "batch"):
        message = protocol.decode(action.data)
        assert isinstance(message, protocol.Batch)
        batches.append(message)
    return batches


def test_flow_control_window_between_two_engines() -> None:
    config = EngineConfig(batch_size=3, window=2, sync_interval=60, round_timeout=5)
    a, b = Node(1, config), Node(2, config)
    raws = [e.raw for e in chain(X, 30)]
    a.batch(raws, peer="someone")
    assert a.store.entry_count() == 30

    # b connects and asks; a may have at most `window` batches unacknowledged.
    a.session("b")
    queue: list[tuple[str, SendTo]] = [("b", s) for s in b.engine.peer_connected("a")]
    in_flight: set[int] = set()
    max_in_flight = 0
    batches_seen: list[protocol.Batch] = []
    steps = 0
    while queue:
        steps += 1
        assert steps < 200
        src, action = queue.pop(0)
        if src == "b":
            message = protocol.decode(action.data)
            if isinstance(message, protocol.Ack):
                in_flight.discard(message.batch_no)
            out = a.run(a.engine.message_received("b", action.data))
            for batch in _batch_entries(out):
                in_flight.add(batch.batch_no)
                batches_seen.append(batch)
            max_in_flight = max(max_in_flight, len(in_flight))
            assert len(in_flight) <= 2
            queue.extend(("a", s) for s in kinds(out, SendTo))
        else:
            out = b.run(b.engine.message_received("a", action.data))
            queue.extend(("b", s) for s in kinds(out, SendTo))
    assert max_in_flight == 2
    assert all(len(batch.entries) <= 3 for batch in batches_seen)
    assert len(batches_seen) == 10 and batches_seen[-1].last
    assert [batch.batch_no for batch in batches_seen] == list(range(10))
    assert b.store.entry_count() == 30
    assert b.store.digest() == a.store.digest()


def _ask_for_everything(node: Node, peer: str = "b", round_no: int = 1) -> list[Action]:
    """Play an initiator holding nothing: ask, then want all of X."""
    node.session(peer)
    question = protocol.Recon(round_no, 0, (protocol.FingerprintRange(*_ALL, 0, 0),))
    answered = node.engine.message_received(peer, protocol.encode(question))
    assert sent(answered, "recon") and not _batch_entries(answered)
    want = protocol.Want(round_no, True, (protocol.Claim(X_ORIGIN, 0, BitMap64()),))
    return node.engine.message_received(peer, protocol.encode(want))


def test_flow_control_stops_at_window_without_acks() -> None:
    a = Node(1)
    a.batch([e.raw for e in chain(X, 30)], peer="someone")
    actions = _ask_for_everything(a)
    assert len(_batch_entries(actions)) == 2
    # Acking an unknown round or an old batch twice does not open the window further.
    assert not a.engine.message_received("b", protocol.encode(protocol.Ack(99, 0)))
    one = _batch_entries(a.engine.message_received("b", protocol.encode(protocol.Ack(1, 0))))
    assert len(one) == 1 and one[0].batch_no == 2
    assert not _batch_entries(a.engine.message_received("b", protocol.encode(protocol.Ack(1, 0))))


def test_round_timeout_fails_the_round() -> None:
    node = Node(1)
    assert len(sent(node.engine.peer_connected(PEER), "recon")) == 1
    node.time.now += 4.0
    assert not kinds(node.engine.tick(), RoundFinished)
    node.time.now += 1.5  # past round_timeout=5 since the round started
    actions = node.engine.tick()
    (finished,) = kinds(actions, RoundFinished)
    assert finished.ok is False and finished.peer == PEER
    assert finished.seconds >= 5.0
    assert sent(actions, "recon")  # a new round repairs the loss
    assert node.engine.round_active(PEER)


def test_a_session_that_never_makes_progress_is_restarted() -> None:
    node = Node(1)
    node.engine.peer_connected(PEER)
    restarts = []
    for _ in range(STALLED_ROUNDS):
        node.time.now += 5.5  # past round_timeout: the round fails, another starts
        actions = node.run(node.engine.tick())
        restarts += kinds(actions, RestartSession)
    assert [r.peer for r in restarts] == [PEER]
    assert node.observer.dropped_reasons["stalled"] == 1
    # A round that ends well resets the count.
    round_no = _finish_connect_round(node)
    assert round_no > STALLED_ROUNDS


def test_outgoing_round_without_acks_is_dropped_after_timeout() -> None:
    node = Node(1)
    node.batch([e.raw for e in chain(X, 30)], peer="someone")
    _ask_for_everything(node)
    node.time.now += 6
    actions = node.engine.tick()
    assert [d.reason for d in kinds(actions, Dropped)] == ["ack_timeout"]
    late_ack = node.engine.message_received("b", protocol.encode(protocol.Ack(1, 0)))
    assert not _batch_entries(late_ack)


# ------------------------------------------------------------------ hostile input


def test_garbage_messages_are_dropped() -> None:
    node = Node(1)
    for data in (b"", b"\x00", b"\x07\x01xx", b"\x01\xff", b"\x01\x03\x00", b"\x01\x04\x00"):
        for actions in (
            node.engine.message_received(PEER, data),
            node.engine.live_received(PEER, data),
        ):
            assert len(actions) == 1 and isinstance(actions[0], Dropped)
    bad_recon = bytes([protocol.PROTOCOL_VERSION, protocol.RECON]) + b"\x00\x00\x00\x05junk"
    assert [type(a) for a in node.engine.message_received(PEER, bad_recon)] == [Dropped]
    old = b"\x01\x02" + bytes(9)  # a version 1 SUMMARY
    assert [a.reason for a in node.engine.message_received(PEER, old)] == ["version"]
    live_on_sync = protocol.encode(protocol.Live((chain(X, 1)[0].raw,)))
    assert [a.reason for a in node.engine.message_received(PEER, live_on_sync)] == ["unexpected"]
    assert node.store.entry_count() == 0


_GARBAGE_NODE = Node(3)
_GARBAGE_NODE.batch([e.raw for e in chain(X, 5)], peer="seed")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(1, 8), st.binary(max_size=300)).map(
            lambda t: bytes([protocol.PROTOCOL_VERSION, t[0]]) + t[1]
        ),
    )
)
def test_garbage_never_raises(data: bytes) -> None:
    engine = _GARBAGE_NODE.engine
    for handler in (engine.message_received, engine.live_received):
        actions = handler(PEER, data)
        assert isinstance(actions, list)
        try:
            protocol.decode(data)
        except Exception:
            assert [type(a) for a in actions] == [Dropped]
        assert not kinds(actions, Persist)  # nothing forged gets in


def test_want_bomb_sends_only_what_we_hold_and_returns_quickly() -> None:
    node = Node(1)
    held = [e.raw for e in chain(X, 5)]
    node.batch(held, peer="seed")
    other = chain(SigningKey(b"\x43" * 32), 3)
    node.batch([e.raw for e in other], peer="seed")
    bomb = BitMap64()
    bomb.add_range(2**47 + 1, 2**47 + 2**30)
    claims = (
        protocol.Claim(X_ORIGIN, 2**47, bomb),  # "I hold everything of X and more"
        protocol.Claim(b"\x99" * 32, 2**48, BitMap64()),  # an origin we never saw
        protocol.Claim(other[0].origin, 0, BitMap64([1, 2**40])),  # lacks 0 and 2
    )
    node.session("bomber")
    question = protocol.Recon(1, 0, (protocol.FingerprintRange(*_ALL, 12345, 2**31),))
    node.engine.message_received("bomber", protocol.encode(question))
    started = wallclock.perf_counter()
    actions = node.engine.message_received(
        "bomber", protocol.encode(protocol.Want(1, True, claims))
    )
    assert wallclock.perf_counter() - started < 1.0
    batches = _batch_entries(actions)
    assert len(batches) == 1 and batches[0].last
    assert set(batches[0].entries) == {other[0].raw, other[2].raw}


def test_far_future_entry_does_not_drag_our_clock() -> None:
    node = Node(1)
    wall = node.time.wall_ms()
    future = (wall + MAX_FORWARD_MS + 3_600_000) << 16
    op = _create(X_ORIGIN, 0)
    entry = sign_entry(X, 0, ZERO_HASH, future, op)
    node.live(entry)
    assert node.store.entry_count() == 1  # the entry itself is valid and kept
    mine, _, _ = node.engine.append_one(
        lambda seq: Op(
            "create", make_recipe_id(node.engine.me, seq), None, RecipeFields("a", "", "")
        )
    )
    assert wall_ms_of(mine.hlc) <= wall + 1


def _restart(node: Node, wall_shift_ms: int) -> None:
    """Rebuild the engine over the same store, as the node and simulator do."""
    node.time.wall_offset_ms += wall_shift_ms
    engine = SyncEngine(
        node.key,
        Progress(node.store.load_progress()),
        node.store,
        node.time.instant(),
        node.engine.config,
        last_hlc=node.store.last_hlc(node.time.wall_ms() + MAX_FORWARD_MS),
    )
    node.engine = TimedEngine(engine, node.time)
    node.executor = Executor(engine, node.store, node.observer)


def test_wild_peer_hlc_does_not_drag_our_clock_across_restart() -> None:
    node = Node(1)
    wild = sign_entry(X, 0, ZERO_HASH, (1 << 64) - 1, _create(X_ORIGIN, 0))
    node.live(wild)
    assert node.store.last_hlc(wall_ms_of((1 << 64) - 1)) == (1 << 64) - 1
    _restart(node, 0)
    mine, _, actions = node.engine.append_one(
        lambda seq: Op(
            "create", make_recipe_id(node.engine.me, seq), None, RecipeFields("a", "", "")
        )
    )
    node.run(actions)
    assert wall_ms_of(mine.hlc) <= node.time.wall_ms() + MAX_FORWARD_MS


def test_far_future_peer_hlc_is_not_our_floor_after_restart() -> None:
    # A peer's year-2100 entry is valid and kept, but observe() never followed
    # it; a restart must not start our clock from it (clamped, 24 h ahead).
    node = Node(1)
    year_2100_ms = 4_102_444_800_000
    node.live(sign_entry(X, 0, ZERO_HASH, year_2100_ms << 16, _create(X_ORIGIN, 0)))
    assert node.store.entry_count() == 1
    _restart(node, 0)
    mine, _, actions = node.engine.append_one(
        lambda seq: Op(
            "create", make_recipe_id(node.engine.me, seq), None, RecipeFields("a", "", "")
        )
    )
    node.run(actions)
    assert abs(wall_ms_of(mine.hlc) - node.time.wall_ms()) <= 1000


def test_own_edit_after_restart_with_wall_clock_set_back_is_not_lost() -> None:
    # E.g. a board without RTC booting at 1970 before NTP: the wall clock is far
    # behind the hlc of our own last entry. Our next edit must still win LWW.
    node = Node(1)
    me = node.engine.me
    rid = make_recipe_id(me, 0)
    first, _, actions = node.engine.append_one(
        lambda seq: Op("create", rid, None, RecipeFields("old", "", ""))
    )
    node.run(actions)
    _restart(node, -(MAX_FORWARD_MS + 3_600_000))
    new_fields = RecipeFields("new", "", "")
    second, _, actions = node.engine.append_one(lambda seq: Op("update", rid, 0, new_fields))
    node.run(actions)
    assert second.hlc > first.hlc  # our own log stays in hlc order
    recipe = node.store.recipe(rid)
    assert recipe is not None and recipe.fields == new_fields


# ------------------------------------------------------------------ what peers hold


def _exchange(a: Node, b: Node, queue: list[tuple[str, SendTo]]) -> None:
    """Deliver messages between a ("a" to b) and b ("b" to a) until none is left."""
    steps = 0
    while queue:
        steps += 1
        assert steps < 500
        src, action = queue.pop(0)
        dst, name = (a, "b") if src == "b" else (b, "a")
        out = dst.run(dst.engine.message_received(name, action.data))
        queue.extend((("a" if dst is a else "b"), s) for s in kinds(out, SendTo))


def test_acked_batches_count_in_the_peers_holdings() -> None:
    a, b = Node(1), Node(2)
    a.batch([e.raw for e in chain(X, 30)], peer="someone")
    # Both connect: a's round notes that b holds none of X; in b's round a
    # streams X, and b acks each batch.
    queue = [("a", s) for s in sent(a.engine.peer_connected("b"), "recon")]
    queue += [("b", s) for s in sent(b.engine.peer_connected("a"), "recon")]
    _exchange(a, b, queue)
    assert b.store.entry_count() == 30
    assert not a.engine.round_active("b") and not b.engine.round_active("a")
    # No round of a's ran since: what b acked is what a knows it holds.
    assert a.engine.peer_claims()["b"][X_ORIGIN] == 30
    assert b.engine.peer_claims()["a"][X_ORIGIN] == 30


def _claims_folded(engine: SyncEngine) -> dict[bytes, int]:
    known = engine.held_counts()
    for claims in engine.peer_claims().values():
        for origin, count in claims.items():
            known[origin] = max(known.get(origin, 0), count)
    return known


def test_known_counts_fold_every_peers_claims_at_every_step() -> None:
    a, b = Node(1), Node(2)
    a.batch([e.raw for e in chain(X, 30)], peer="someone")
    queue = [("a", s) for s in sent(a.engine.peer_connected("b"), "recon")]
    queue += [("b", s) for s in sent(b.engine.peer_connected("a"), "recon")]
    b_knew_more_than_it_held = False
    while queue:
        src, action = queue.pop(0)
        dst, name = (a, "b") if src == "b" else (b, "a")
        out = dst.run(dst.engine.message_received(name, action.data))
        queue.extend((("a" if dst is a else "b"), s) for s in kinds(out, SendTo))
        for node in (a, b):
            assert node.engine.known_counts() == _claims_folded(node.engine)
        held = b.engine.held_counts().get(X_ORIGIN, 0)
        b_knew_more_than_it_held |= b.engine.known_counts().get(X_ORIGIN, 0) > held
    assert b_knew_more_than_it_held
    assert b.engine.known_counts()[X_ORIGIN] == 30


def test_unacked_batches_do_not_count() -> None:
    a = Node(1)
    a.batch([e.raw for e in chain(X, 30)], peer="someone")
    round_no = _finish_connect_round(a, "b")  # b answered "all the same" earlier...
    assert round_no
    question = protocol.Recon(7, 0, (protocol.FingerprintRange(*_ALL, 0, 0),))
    a.engine.message_received("b", protocol.encode(question))
    # ...a now learns b lacks X by its own round's answer, then streams X.
    (recon,) = sent(a.engine.request_sync("b"), "recon")
    mine = protocol.decode(recon.data)
    assert isinstance(mine, protocol.Recon)
    empty = protocol.Recon(mine.round, protocol.FROM_RESPONDER, (protocol.ItemsRange(*_ALL, ()),))
    a.engine.message_received("b", protocol.encode(empty))
    assert a.engine.peer_claims()["b"][X_ORIGIN] == 0
    want = protocol.Want(7, True, (protocol.Claim(X_ORIGIN, 0, BitMap64()),))
    batches = _batch_entries(a.engine.message_received("b", protocol.encode(want)))
    assert len(batches) == 2  # the window: 3 entries each
    assert a.engine.peer_claims()["b"][X_ORIGIN] == 0
    a.engine.message_received("b", protocol.encode(protocol.Ack(7, 0)))
    assert a.engine.peer_claims()["b"][X_ORIGIN] == 3
    a.engine.message_received("b", protocol.encode(protocol.Ack(7, 0)))  # a duplicate
    assert a.engine.peer_claims()["b"][X_ORIGIN] == 3
    a.engine.peer_disconnected("b")
    assert "b" not in a.engine.peer_claims()


def test_an_author_holds_at_least_what_we_hold_of_its_log() -> None:
    from p2psync.core.ids import peer_id_from_public_key

    author = peer_id_from_public_key(X_ORIGIN)
    node = Node(1)
    node.batch([e.raw for e in chain(X, 4)], peer="someone")
    (recon,) = sent(node.engine.peer_connected(author), "recon")
    mine = protocol.decode(recon.data)
    assert isinstance(mine, protocol.Recon)
    # An answer that leaves X out (it lost its data, or the answer is stale).
    empty = protocol.Recon(mine.round, protocol.FROM_RESPONDER, (protocol.ItemsRange(*_ALL, ()),))
    node.run(node.engine.message_received(author, protocol.encode(empty)))
    assert node.engine.peer_claims()[author][X_ORIGIN] == 4


def test_a_round_in_sync_forgets_old_differences() -> None:
    node = Node(1)
    node.batch([e.raw for e in chain(X, 4)], peer="someone")
    (recon,) = sent(node.engine.peer_connected("b"), "recon")
    mine = protocol.decode(recon.data)
    assert isinstance(mine, protocol.Recon)
    empty = protocol.Recon(mine.round, protocol.FROM_RESPONDER, (protocol.ItemsRange(*_ALL, ()),))
    node.run(node.engine.message_received("b", protocol.encode(empty)))
    assert node.engine.peer_claims()["b"][X_ORIGIN] == 0
    node.batch([], peer="b", round_no=mine.round)  # the round ends: b sends nothing
    assert not node.engine.round_active("b")
    (recon,) = sent(node.run(node.engine.request_sync("b")), "recon")
    mine = protocol.decode(recon.data)
    assert isinstance(mine, protocol.Recon)
    same = protocol.Recon(mine.round, protocol.FROM_RESPONDER, (protocol.DoneRange(*_ALL),))
    node.run(node.engine.message_received("b", protocol.encode(same)))
    assert node.engine.peer_claims()["b"][X_ORIGIN] == 4
