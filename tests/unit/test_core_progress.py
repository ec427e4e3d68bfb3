"""Held-seq bitmaps, contiguous prefixes, and untrusted claims and items (bitmap bombs)."""

from __future__ import annotations

import contextlib
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.entry import MAX_SEQ, ZERO_HASH
from p2psync.core.errors import RemoteError
from p2psync.core.items import MAX_BOUND, MIN_BOUND, NOT_FORKED, Item
from p2psync.core.progress import (
    MAX_BITMAP_BYTES,
    Progress,
    contiguous_prefix,
    decode_bitmap,
    encode_bitmap,
)
from p2psync.core.protocol import Claim, ItemsRange, Recon, Want


def _naive_prefix(seqs: set[int]) -> int:
    n = 0
    while n in seqs:
        n += 1
    return n


seq_sets = st.one_of(
    st.sets(st.integers(0, 200), max_size=120),
    st.builds(
        lambda n, holes, extra: (set(range(n)) - set(holes)) | set(extra),
        st.integers(0, 5000),
        st.lists(st.integers(0, 5000), max_size=3),
        st.lists(st.integers(0, 2**40), max_size=3),
    ),
)


@pytest.mark.parametrize(
    ("seqs", "expected"),
    [
        (set(), 0),
        ({1, 2, 3}, 0),
        ({0}, 1),
        ({0, 1, 2}, 3),
        ({0, 2}, 1),
        ({0, 1, 3, 4, 5}, 2),
        (set(range(70_000)) | {70_001}, 70_000),
        (set(range(65_536)) | {2**40}, 65_536),
        ({0, MAX_SEQ}, 1),
    ],
)
def test_contiguous_prefix_shapes(seqs: set[int], expected: int) -> None:
    assert contiguous_prefix(BitMap64(seqs)) == expected


def test_contiguous_prefix_of_huge_range_is_fast() -> None:
    held = BitMap64()
    held.add_range(0, 2**32)
    held.add(2**32 + 5)
    started = time.perf_counter()
    assert contiguous_prefix(held) == 2**32
    assert time.perf_counter() - started < 1.0


@settings(max_examples=150, deadline=None)
@given(seq_sets)
def test_contiguous_prefix_matches_naive(seqs: set[int]) -> None:
    assert contiguous_prefix(BitMap64(seqs)) == _naive_prefix(seqs)


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _Budget:
    """Wall time, Python allocations and RSS (roaring allocates in C) of a block."""

    def __enter__(self) -> _Budget:
        self.rss = _rss_kb()
        tracemalloc.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.seconds = time.perf_counter() - self.started
        _, self.peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        self.rss_growth_kb = _rss_kb() - self.rss
        if exc_type is not None:
            return  # let the failure inside the block speak
        assert self.seconds < 1.0
        assert self.peak < 50 * 1024 * 1024
        assert self.rss_growth_kb < 50 * 1024


O1, O2 = b"\x05" * 32, b"\x06" * 32
H = b"\x07" * 32


def _huge_beyond(base: int) -> BitMap64:
    """~1.1e9 seqs in many run containers, still under MAX_BITMAP_BYTES serialized."""
    huge = BitMap64()
    huge.add_range(base, base + 2**30)
    huge.add_range(base + 2**33, base + 2**33 + 2**26)
    assert len(encode_bitmap(BitMap64(huge))) <= MAX_BITMAP_BYTES
    return huge


def test_claim_missing_from_small() -> None:
    held = BitMap64(range(100))
    missing = Claim(O1, 50, BitMap64([60, 61])).missing_from(held)
    assert set(missing) == set(range(50, 100)) - {60, 61}
    assert len(Claim(O1, 2**47, BitMap64()).missing_from(held)) == 0
    assert set(Claim(O1, 0, BitMap64()).missing_from(held)) == set(range(100))
    assert len(Claim(O1, 0, BitMap64()).missing_from(BitMap64())) == 0
    assert set(Claim(O1, 3, BitMap64([3])).missing_from(held)) == set(range(4, 100))


@settings(max_examples=100, deadline=None)
@given(seq_sets, st.integers(0, 6000), st.sets(st.integers(0, 6000), max_size=20), seq_sets)
def test_claim_missing_from_matches_naive(
    beyond: set[int], prefix: int, extra: set[int], held: set[int]
) -> None:
    beyond = {s for s in beyond | extra if s >= prefix}
    claimed = set(range(prefix)) | beyond
    claim = Claim(O1, prefix, BitMap64(beyond))
    held_bitmap = BitMap64(held)
    assert set(claim.missing_from(held_bitmap)) == held - claimed
    assert set(held_bitmap) == held  # the caller's bitmap is left alone


def test_claim_bomb_is_cheap() -> None:
    """A WANT claiming 2^47 entries plus a billion more costs its size, not its claim."""
    beyond = _huge_beyond(2**47 + 2**20)
    want = Want(1, True, (Claim(O1, 2**47, beyond), Claim(O2, 2**48, BitMap64())))
    data = protocol.encode(want)
    assert len(data) <= protocol.MAX_MESSAGE_BYTES
    held = BitMap64(range(10)) | BitMap64(
        [2**47 - 1, 2**47, 2**47 + 2**20 + 3, 2**47 + 2**31, 2**47 + 2**33 + 2**20 + 5, MAX_SEQ - 1]
    )
    held.add_range(2**47 + 2**20 + 2**30 - 5, 2**47 + 2**20 + 2**30 + 5)  # straddles the run end
    with _Budget():
        decoded = protocol.decode(data)
        assert isinstance(decoded, Want)
        claim, full = decoded.claims
        missing = claim.missing_from(held)
        assert len(full.missing_from(held)) == 0
    expected = {2**47, 2**47 + 2**31, MAX_SEQ - 1} | set(
        range(2**47 + 2**20 + 2**30, 2**47 + 2**20 + 2**30 + 5)
    )
    assert set(missing) == expected


def test_item_bomb_is_cheap() -> None:
    """A peer's item claiming 2^48 entries (or a huge beyond) is compared in no time."""
    beyond = _huge_beyond(2**47 + 2**20)
    theirs = [
        Item(O1, 2**48, H, BitMap64()),
        Item(O1, 2**47, H, beyond),
    ]
    recon = Recon(1, protocol.FROM_RESPONDER, (ItemsRange(MIN_BOUND, MAX_BOUND, (theirs[0],)),))
    ours_small = Item(O1, 10, H, BitMap64([20]))
    ours_big = Item(O1, 2**47 + 2**20 + 2**33 + 2**26, H, BitMap64())
    ours_gap = Item(O1, 2**47 + 2**20 + 2**30 - 1, H, BitMap64())
    with _Budget():
        decoded = protocol.decode(protocol.encode(recon))
        assert isinstance(decoded, Recon)
        assert decoded.ranges[0].items[0].prefix == 2**48  # type: ignore[union-attr]
        assert theirs[0].has_more_than(ours_small, NOT_FORKED)
        assert theirs[0].has_more_than(ours_big, NOT_FORKED)
        assert not theirs[0].has_more_than(ours_big, 2**40)  # a fork below our prefix
        assert theirs[1].has_more_than(ours_small, NOT_FORKED)
        assert not theirs[1].has_more_than(ours_big, NOT_FORKED)
        assert theirs[1].has_more_than(ours_gap, NOT_FORKED)
        assert theirs[1].has_more_than(ours_gap, 2**47 + 2**20 + 2**30)
        assert not theirs[1].has_more_than(ours_gap, 2**47 + 2**20 + 2**30 - 1)
        assert not theirs[1].has_more_than(ours_small, 10)
        assert theirs[1].count() == 2**47 + 2**30 + 2**26


def _item(prefix: int, beyond: set[int]) -> Item:
    return Item(O1, prefix, ZERO_HASH if prefix == 0 else H, BitMap64(beyond))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 300),
    st.sets(st.integers(0, 600), max_size=30),
    st.integers(0, 300),
    st.sets(st.integers(0, 600), max_size=30),
    st.one_of(st.just(NOT_FORKED), st.integers(0, 700)),
)
def test_item_has_more_than_matches_naive(
    their_prefix: int, their_beyond: set[int], our_prefix: int, our_beyond: set[int], limit: int
) -> None:
    # Items as ItemIndex builds them: seq `prefix` itself is never held.
    theirs = _item(their_prefix, {s for s in their_beyond if s > their_prefix})
    ours = _item(our_prefix, {s for s in our_beyond if s > our_prefix})
    their_held = set(range(their_prefix)) | set(theirs.beyond)
    our_held = set(range(our_prefix)) | set(ours.beyond)
    expected = any(s < limit for s in their_held - our_held)
    assert theirs.has_more_than(ours, limit) == expected
    assert set(theirs.beyond) == {s for s in their_beyond if s > their_prefix}  # not mutated


def test_bitmap_beyond_max_seq_is_refused() -> None:
    with pytest.raises(RemoteError) as info:
        decode_bitmap(encode_bitmap(BitMap64([MAX_SEQ + 1])))
    assert info.value.reason == "bitmap"
    assert list(decode_bitmap(encode_bitmap(BitMap64([MAX_SEQ])))) == [MAX_SEQ]


def test_max_bitmap_bytes_enforced() -> None:
    # A genuine bitmap whose serialization is just over the cap.
    big = BitMap64(range(0, 2 * (MAX_BITMAP_BYTES // 2 + 1) * 16, 16))
    raw = encode_bitmap(big)
    assert len(raw) > MAX_BITMAP_BYTES
    with pytest.raises(RemoteError) as info:
        decode_bitmap(raw)
    assert info.value.reason == "bitmap"
    # Padding bytes count too: the cap is on the bytes received, not the content.
    with pytest.raises(RemoteError):
        decode_bitmap(b"\x00" * (MAX_BITMAP_BYTES + 1))


def test_decode_bitmap_empty_input_is_remote_error() -> None:
    # pyroaring raises IndexError on an empty buffer; decode_bitmap must map it.
    with pytest.raises(RemoteError) as info:
        decode_bitmap(b"")
    assert info.value.reason == "bitmap"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_decode_bitmap_garbage_raises_only_remote_error(data: bytes) -> None:
    with contextlib.suppress(RemoteError):
        decode_bitmap(data)


def test_progress_bookkeeping() -> None:
    progress = Progress()
    origin = b"\x09" * 32
    assert progress.next_seq(origin) == 0
    assert not progress.has(origin, 0)
    progress.add(origin, [0, 1, 5])
    assert progress.count(origin) == 3
    assert progress.next_seq(origin) == 6
    assert progress.has(origin, 5) and not progress.has(origin, 2)
    snap = progress.snapshot()
    progress.add(origin, [2])
    assert 2 not in snap[origin]  # a snapshot is a copy
    assert progress.total() == 4
