"""BATCH signatures checked ahead in a worker thread (core/batch_signatures.py,
node/batch_checks.py): the engine then checks none of them again; forgeries
and floods of fake checkpoints gain nothing."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import trio
from nacl.signing import SigningKey

import p2psync.core.batch_signatures as batch_signatures
import p2psync.core.entry as entry_module
from benchmarks.entries import make_log, origin_key
from p2psync.core import protocol
from p2psync.core.actions import Persist, Rejected
from p2psync.core.batch_signatures import MAX_CHECKS, is_backfill_batch, verified_in_batch
from p2psync.core.engine import EngineConfig, SyncEngine
from p2psync.core.entry import SIG_BYTES, entry_hash, sign_entry
from p2psync.core.forks import is_checkpoint
from p2psync.core.hlc import Now
from p2psync.core.progress import Progress
from p2psync.core.reasons import Reason
from p2psync.net.gossip import Received
from p2psync.node import batch_checks
from p2psync.node.batch_checks import check_batches_ahead
from p2psync.store.memory import MemoryStore

NOW = Now(0.0, 1_800_000_000_000)


def _batch(raws: list[bytes], batch_no: int = 0) -> bytes:
    return protocol.encode(protocol.Batch(1, batch_no, False, tuple(raws)))


def _engine() -> SyncEngine:
    engine = SyncEngine(SigningKey(b"\x42" * 32), Progress(), MemoryStore(), NOW, EngineConfig())
    engine.peer_connected("peer", NOW)
    return engine


@pytest.fixture(scope="module")
def log() -> list[bytes]:
    return [entry.raw for entry, _ in make_log(origin_key(3), 200, seed=3)]


def _counting_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = entry_module.verify_signature

    def counted(entry: entry_module.Entry, key_cache: object = None) -> None:
        calls.append(entry.seq)
        real(entry, key_cache)  # type: ignore[arg-type]

    monkeypatch.setattr(entry_module, "verify_signature", counted)
    monkeypatch.setattr(batch_signatures, "verify_signature", counted)
    return calls


def test_what_the_engine_would_check_is_checked_ahead(log: list[bytes]) -> None:
    verified = verified_in_batch(_batch(log))
    seqs = range(len(log))
    wanted = [entry_hash(log[s]) for s in seqs if is_checkpoint(s)] + [entry_hash(log[-1])]
    assert verified == wanted


def test_the_engine_checks_no_signature_that_was_checked_ahead(
    log: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _batch(log)
    ahead = verified_in_batch(data)
    calls = _counting_checks(monkeypatch)
    engine = _engine()
    engine.checked_signatures.note_verified(ahead)
    actions = engine.message_received("peer", data, NOW)
    assert calls == []
    (persist,) = [a for a in actions if isinstance(a, Persist)]
    assert len(persist.entries) == len(log)
    # Without the check ahead the engine does them all itself.
    engine = _engine()
    engine.message_received("peer", data, NOW)
    assert len(calls) == len(ahead)


def test_a_forged_checkpoint_is_not_vouched_for_and_the_engine_refuses_it(
    log: list[bytes],
) -> None:
    forged = list(log)
    at = 31  # a checkpoint
    assert is_checkpoint(at)
    raw = forged[at]
    forged[at] = raw[:-SIG_BYTES] + bytes(SIG_BYTES)
    # The next entry links to the genuine one's hash: relink the rest of the
    # run would need the key, so the forger keeps the run as it was.
    data = _batch(forged)
    verified = verified_in_batch(data)
    assert entry_hash(forged[at]) not in verified
    assert entry_hash(raw) not in verified
    engine = _engine()
    engine.checked_signatures.note_verified(verified)
    actions = engine.message_received("peer", data, NOW)
    refused = [a for a in actions if isinstance(a, Rejected)]
    assert refused, "a run with a broken link or signature must be refused"
    assert not any(
        isinstance(a, Persist) and any(x.entry.seq >= at for x in a.entries) for a in actions
    )


def test_a_flood_of_fake_checkpoints_costs_no_more_than_an_honest_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Free keys: 2 000 entries of 2 000 origins, every one at a checkpoint seq.
    raws = [
        sign_entry(SigningKey(os.urandom(32)), 15, os.urandom(32), 0, b"{}").raw[:-SIG_BYTES]
        + bytes(SIG_BYTES)
        for _ in range(2000)
    ]
    calls = _counting_checks(monkeypatch)
    assert verified_in_batch(_batch(raws)) == []
    assert len(calls) == MAX_CHECKS


def test_anything_but_a_big_batch_is_left_to_the_engine(log: list[bytes]) -> None:
    assert verified_in_batch(_batch(log[:8])) == []  # small: the engine checks it
    assert not is_backfill_batch(_batch(log[:8]))
    assert is_backfill_batch(_batch(log))
    live = protocol.encode(protocol.Live(tuple(log[:50])))
    assert not is_backfill_batch(live) and verified_in_batch(live) == []
    assert verified_in_batch(_batch(log)[:-5]) == []  # truncated: the engine says so
    assert verified_in_batch(b"\x04\x03" + bytes(10_000)) == []
    assert verified_in_batch(_batch([b"x" * 10] * 40)) == []


async def test_the_session_pipeline_keeps_order_and_hands_on_the_hashes(
    log: list[bytes],
) -> None:
    big = [_batch(log, batch_no=n) for n in range(3)]
    ack = protocol.encode(protocol.Ack(1, 0))
    messages = [big[0], ack, big[1], big[2], ack]
    got = await _through_pipeline(messages, lambda: True)
    assert [data for data, _ in got] == messages
    expected = verified_in_batch(big[0])
    assert [hashes for _, hashes in got] == [expected, [], expected, expected, []]


async def _through_pipeline(
    messages: list[bytes], expects: Callable[[], bool]
) -> list[tuple[bytes, list[bytes]]]:
    send, receive = trio.open_memory_channel[Received](len(messages))
    for data in messages:
        send.send_nowait(Received("peer", data, "peer"))
    send.close()
    got: list[tuple[bytes, list[bytes]]] = []
    async with trio.open_nursery() as nursery:
        async for item in check_batches_ahead(nursery, receive, expects):
            got.append(item)
    return got


async def test_a_batch_we_did_not_ask_for_is_left_to_the_engine(log: list[bytes]) -> None:
    # No round of ours under way with the peer: nothing is checked ahead, so
    # unsolicited junk costs only what the engine's own checks cost.
    got = await _through_pipeline([_batch(log)], lambda: False)
    assert got == [(_batch(log), [])]


async def test_while_the_checker_is_busy_batches_go_on_unchecked(log: list[bytes]) -> None:
    checker = batch_checks._checker()
    await checker.acquire()  # another session's BATCH is being checked
    try:
        got = await _through_pipeline([_batch(log)], lambda: True)
    finally:
        checker.release()
    assert got == [(_batch(log), [])]
    assert (await _through_pipeline([_batch(log)], lambda: True))[0][1]


def test_a_forged_last_entry_is_refused_for_its_signature(log: list[bytes]) -> None:
    # Nothing links to a run's last entry: only its signature vouches for it.
    forged = list(log)
    forged[-1] = forged[-1][:-SIG_BYTES] + bytes(SIG_BYTES)
    data = _batch(forged)
    verified = verified_in_batch(data)
    assert entry_hash(forged[-1]) not in verified
    engine = _engine()
    engine.checked_signatures.note_verified(verified)
    actions = engine.message_received("peer", data, NOW)
    assert {a.reason for a in actions if isinstance(a, Rejected)} == {Reason.SIGNATURE}
    assert not [a for a in actions if isinstance(a, Persist)]
