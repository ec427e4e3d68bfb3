"""Fork proofs with chained sides, and the window past the held prefix (protocol v3)."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey
from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.acceptance import check_entries
from p2psync.core.entry import ZERO_HASH, CheckedSignatures, Entry, decode_entry, sign_entry
from p2psync.core.errors import RemoteError
from p2psync.core.forks import (
    MAX_CHAIN,
    ForkProof,
    authentic_chain,
    decode_fork_proof,
    encode_side,
    make_fork_proof,
)
from p2psync.core.items import NOT_FORKED, Item
from p2psync.core.ledger import FORK_REWRITE_INTERVAL
from p2psync.core.progress import MAX_AHEAD, MAX_BITMAP_BYTES, Progress
from p2psync.core.reasons import Reason
from p2psync.core.recipes import digest
from tests.sim.simulator import Simulator

KEY = SigningKey(b"\x42" * 32)
ORIGIN = bytes(KEY.verify_key)


def _chain(
    start: int, count: int, prev: bytes, tag: bytes, spoil: frozenset[int] = frozenset()
) -> list[Entry]:
    entries = []
    for seq in range(start, start + count):
        entry = sign_entry(KEY, seq, prev, seq, tag + bytes([seq % 256]))
        if seq in spoil:
            entry = decode_entry(entry.signed_part + bytes(64))
        prev = entry.hash()
        entries.append(entry)
    return entries


def test_a_side_vouched_for_by_a_later_signature_proves_a_fork() -> None:
    one = _chain(0, 4, ZERO_HASH, b"a", spoil=frozenset({0, 1, 2}))
    other = _chain(0, 1, ZERO_HASH, b"b")
    chain = authentic_chain(one)
    assert chain is not None and len(chain) == 4
    proof = make_fork_proof(chain, other)
    assert proof.seq == 0 and proof.origin == ORIGIN
    assert decode_fork_proof(encode_side(proof.first), encode_side(proof.second)) == proof


def test_a_side_that_no_signature_vouches_for_proves_nothing() -> None:
    forged = _chain(0, 3, ZERO_HASH, b"a", spoil=frozenset({0, 1, 2}))
    other = _chain(0, 1, ZERO_HASH, b"b")
    assert authentic_chain(forged) is None
    with pytest.raises(RemoteError) as info:
        make_fork_proof(forged, other)
    assert info.value.reason is Reason.BAD_PROOF


def test_a_side_that_does_not_link_proves_nothing() -> None:
    one = _chain(0, 2, ZERO_HASH, b"a", spoil=frozenset({0}))
    unlinked = [one[0], _chain(1, 1, b"\x01" * 32, b"x")[0]]  # signed, but not after one[0]
    assert authentic_chain(unlinked) is None
    with pytest.raises(RemoteError):
        make_fork_proof(unlinked, _chain(0, 1, ZERO_HASH, b"b"))


def test_a_side_longer_than_max_chain_is_refused() -> None:
    spoil = frozenset(range(MAX_CHAIN))
    long = _chain(0, MAX_CHAIN + 1, ZERO_HASH, b"a", spoil=spoil)
    assert authentic_chain(long) is None  # the signature comes one entry too late
    with pytest.raises(RemoteError):
        make_fork_proof(long, _chain(0, 1, ZERO_HASH, b"b"))
    with pytest.raises(RemoteError):
        decode_fork_proof(encode_side([e.raw for e in long]), encode_side([b"x" * 200]))


def test_two_identical_sides_are_no_fork() -> None:
    one = _chain(0, 1, ZERO_HASH, b"a")
    with pytest.raises(RemoteError):
        make_fork_proof(one, list(one))


class _EmptyLog:
    def entry_links(self, origin: bytes, seqs: object) -> dict[int, tuple[bytes, bytes]]:
        return {}

    def read_raw(self, origin: bytes, seqs: object) -> dict[int, bytes]:
        return {}


def _check(raws: list[bytes], progress: Progress) -> tuple[int, list[Reason]]:
    verdict = check_entries(
        raws,
        "peer",
        progress=progress,
        reader=_EmptyLog(),
        verify_keys={},
        allowed_origins=None,
        forked_at=lambda origin: NOT_FORKED,
        verify_each=True,
        checked=CheckedSignatures(),
    )
    return len(verdict.accepted), [r.reason for r in verdict.rejected]


def test_an_entry_too_far_past_the_held_prefix_waits_for_backfill() -> None:
    """A scattered holding could grow an item past what a peer accepts; so seqs
    MAX_AHEAD or more past the prefix are refused (for now, by nobody's fault)."""
    progress = Progress({ORIGIN: BitMap64(range(10))})
    far = sign_entry(KEY, 10 + MAX_AHEAD, b"\x01" * 32, 1, b"far").raw
    near = sign_entry(KEY, 10 + MAX_AHEAD - 1, b"\x01" * 32, 1, b"near").raw
    assert _check([far], progress) == (0, [Reason.AHEAD])
    assert _check([near], progress) == (1, [Reason.BAD_OP])  # kept: its op is junk, not its seq


def test_the_most_scattered_holding_the_window_allows_fits_a_message() -> None:
    prefix = 65_530  # straddles roaring containers: the worst alignment
    beyond = BitMap64(range(prefix + 1, prefix + MAX_AHEAD, 2))
    item = Item(ORIGIN, prefix, b"\x07" * 32, beyond, NOT_FORKED)
    assert len(item.encode()) < MAX_BITMAP_BYTES
    whole = protocol.encode(
        protocol.Recon(
            1,
            protocol.FROM_RESPONDER,
            (protocol.ItemsRange(protocol.MIN_BOUND, protocol.MAX_BOUND, (item,)),),
        )
    )
    decoded = protocol.decode(whole)
    assert isinstance(decoded, protocol.Recon)
    assert len(whole) <= protocol.MAX_MESSAGE_BYTES


def test_ever_lower_fork_proofs_rewrite_the_recipes_once_per_interval() -> None:
    """An origin can sign a lower fork proof for every seq it ever wrote, and each
    used to rewrite its author's recipes at once (seconds at 80,000 entries): a
    flood of them held the event loop. Now a lower proof is followed at once by
    acceptance, and recorded at most once per FORK_REWRITE_INTERVAL."""
    sim = Simulator(1, seed=1)
    (at,) = sim.ids
    node = sim.nodes[at]
    held = _chain(0, 30, ZERO_HASH, b"a")
    sim.inject(at, [e.raw for e in held])
    rewrites: list[int] = []
    record = node.store.record_fork

    def counting(proof: ForkProof) -> None:
        rewrites.append(proof.seq)
        record(proof)

    node.store.record_fork = counting  # type: ignore[method-assign]
    node.engine.peer_connected("peer")
    for seq in range(29, 0, -1):
        other = sign_entry(KEY, seq, b"\x09" * 32, seq, b"other")
        proof = make_fork_proof([held[seq]], [other])
        message = protocol.ForkProofMsg(encode_side(proof.first), encode_side(proof.second))
        sim._run(at, node.engine.message_received("peer", protocol.encode(message)))
    assert node.engine.forked_origins() == {ORIGIN: 1}  # acceptance follows at once
    assert rewrites == [29, 28]  # the first proof, then one lower one
    sim.advance(FORK_REWRITE_INTERVAL / 2)
    assert rewrites == [29, 28]
    sim.advance(FORK_REWRITE_INTERVAL)
    assert rewrites == [29, 28, 1]  # the lowest waiting proof, once
    assert [p.seq for p in node.store.load_forks()] == [1]
    assert node.store.digest() == digest(node.store.visible_recipes())
    sim.advance(FORK_REWRITE_INTERVAL * 3)
    assert rewrites == [29, 28, 1]
