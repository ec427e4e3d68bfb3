"""Held-seq bitmaps, contiguous prefixes and untrusted anti-entropy summaries."""

from __future__ import annotations

import contextlib
import struct
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from p2psync.core.entry import MAX_SEQ
from p2psync.core.errors import RemoteError
from p2psync.core.progress import (
    MAX_BITMAP_BYTES,
    MAX_SUMMARY_ORIGINS,
    Claim,
    Progress,
    contiguous_prefix,
    decode_bitmap,
    decode_summary,
    encode_bitmap,
    encode_summary,
)

_ORIGIN = struct.Struct(">32sQI")


def _naive_prefix(seqs: set[int]) -> int:
    n = 0
    while n in seqs:
        n += 1
    return n


def _summary_bytes(claims: list[tuple[bytes, int, bytes]], count: int | None = None) -> bytes:
    parts = [struct.pack(">I", len(claims) if count is None else count)]
    for origin, prefix, beyond in claims:
        parts.append(_ORIGIN.pack(origin, prefix, len(beyond)))
        parts.append(beyond)
    return b"".join(parts)


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


origins = st.lists(st.binary(min_size=32, max_size=32), min_size=0, max_size=4, unique=True)


@settings(max_examples=80, deadline=None)
@given(origins, st.data())
def test_summary_round_trip(origin_list: list[bytes], data: st.DataObject) -> None:
    held = {origin: data.draw(seq_sets) for origin in origin_list}
    progress = Progress({origin: BitMap64(seqs) for origin, seqs in held.items()})
    summary = decode_summary(encode_summary(progress))
    non_empty = {origin for origin, seqs in held.items() if seqs}
    assert set(summary) == non_empty
    probe = BitMap64(set(range(300)) | {2**40, 2**40 + 1})
    for origin in non_empty:
        seqs = held[origin]
        claim = summary[origin]
        assert claim.count() == len(seqs)
        assert claim.prefix == _naive_prefix(seqs)
        assert set(claim.missing_from(probe)) == set(probe) - seqs
        assert set(claim.missing_from(BitMap64(seqs))) == set()
        for seq in list(seqs)[:20]:
            assert claim.covers(seq)


def test_in_sync_summary_is_small() -> None:
    progress = Progress({bytes([i]) * 32: BitMap64(range(1000)) for i in range(10)})
    data = encode_summary(progress)
    assert len(data) <= 4 + 10 * 44
    assert all(claim.prefix == 1000 for claim in decode_summary(data).values())


def test_claim_missing_from_with_huge_prefix() -> None:
    claim = Claim(2**47, BitMap64())
    held = BitMap64(range(100))
    assert len(claim.missing_from(held)) == 0
    assert claim.count() == 2**47
    claim = Claim(50, BitMap64([60, 61]))
    assert set(claim.missing_from(held)) == set(range(50, 100)) - {60, 61}


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_summary_bomb_is_cheap_or_refused() -> None:
    origin = b"\x05" * 32
    huge = BitMap64()
    # ~1.1e9 claimed seqs in many run containers, still under MAX_BITMAP_BYTES.
    huge.add_range(2**47, 2**47 + 2**30)
    huge.add_range(2**46, 2**46 + 2**26)
    beyond = encode_bitmap(huge)
    assert len(beyond) <= MAX_BITMAP_BYTES
    data = _summary_bytes([(origin, 2**46, beyond), (b"\x06" * 32, MAX_SEQ + 1, b"")])
    rss_before = _rss_kb()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        summary = decode_summary(data)
        claim = summary[origin]
        assert claim.count() == 2**46 + 2**30 + 2**26
        held = BitMap64(range(10)) | BitMap64([2**47 + 3, 2**48 - 2])
        assert set(claim.missing_from(held)) == {2**48 - 2}
        assert len(summary[b"\x06" * 32].missing_from(held)) == 0
    except RemoteError as exc:
        assert exc.reason in {"bitmap", "oversized"}
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 50 * 1024 * 1024
    assert _rss_kb() - rss_before < 50 * 1024  # roaring's C allocations too


def test_prefix_beyond_max_seq_is_refused() -> None:
    with pytest.raises(RemoteError) as info:
        decode_summary(_summary_bytes([(b"\x01" * 32, MAX_SEQ + 2, b"")]))
    assert info.value.reason == "bitmap"


def test_bitmap_beyond_max_seq_is_refused() -> None:
    with pytest.raises(RemoteError) as info:
        decode_bitmap(encode_bitmap(BitMap64([MAX_SEQ + 1])))
    assert info.value.reason == "bitmap"
    assert list(decode_bitmap(encode_bitmap(BitMap64([MAX_SEQ])))) == [MAX_SEQ]


def test_bitmap_overlapping_prefix_is_refused() -> None:
    beyond = encode_bitmap(BitMap64([3, 10]))
    with pytest.raises(RemoteError) as info:
        decode_summary(_summary_bytes([(b"\x01" * 32, 5, beyond)]))
    assert info.value.reason == "bitmap"


def test_max_bitmap_bytes_enforced() -> None:
    # A genuine bitmap whose serialization is just over the cap.
    big = BitMap64(range(0, 2 * (MAX_BITMAP_BYTES // 2 + 1) * 16, 16))
    raw = encode_bitmap(big)
    assert len(raw) > MAX_BITMAP_BYTES
    with pytest.raises(RemoteError) as info:
        decode_bitmap(raw)
    assert info.value.reason == "bitmap"
    with pytest.raises(RemoteError) as info:
        decode_summary(_summary_bytes([(b"\x01" * 32, 0, raw)]))
    assert info.value.reason == "bitmap"
    # Padding bytes count too: the cap is on the bytes received, not the content.
    with pytest.raises(RemoteError):
        decode_bitmap(b"\x00" * (MAX_BITMAP_BYTES + 1))


def test_too_many_origins_is_oversized() -> None:
    with pytest.raises(RemoteError) as info:
        decode_summary(struct.pack(">I", MAX_SUMMARY_ORIGINS + 1))
    assert info.value.reason == "oversized"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00",
        b"\x00\x00\x00\x01",  # one origin announced, none present
        b"\x00\x00\x00\x00trailing",
        _summary_bytes([(b"\x01" * 32, 1, b"")]) + b"x",
        _summary_bytes([(b"\x01" * 32, 1, b""), (b"\x01" * 32, 2, b"")]),  # twice
        _summary_bytes([(b"\x01" * 32, 1, b"")], count=2),
        struct.pack(">I", 1) + _ORIGIN.pack(b"\x01" * 32, 0, 1000) + b"short",
        _summary_bytes([(b"\x01" * 32, 0, b"\xff" * 40)]),  # undecodable bitmap
    ],
)
def test_bad_summaries_are_refused(data: bytes) -> None:
    with pytest.raises(RemoteError):
        decode_summary(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decode_summary_garbage_raises_only_remote_error(data: bytes) -> None:
    with contextlib.suppress(RemoteError):
        decode_summary(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3), st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_decode_summary_framed_garbage_raises_only_remote_error(
    count: int, tail: bytes, prefix: int
) -> None:
    data = struct.pack(">I", count) + _ORIGIN.pack(b"\x02" * 32, prefix, len(tail)) + tail
    try:
        summary = decode_summary(data)
    except RemoteError:
        return
    for claim in summary.values():
        assert claim.prefix <= MAX_SEQ + 1
        assert not claim.beyond or claim.beyond.max() <= MAX_SEQ


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
