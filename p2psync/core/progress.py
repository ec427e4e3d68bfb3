"""Which log entries are held: one roaring BitMap64 of seqs per origin.

The same structure feeds the reconcilable items (items.py), the claims of a
WANT, and the gap detector for live entries. Items and claims describe an
origin by the length of its contiguous prefix plus a bitmap of whatever lies
beyond it, which is empty in the common case.

Bitmaps from peers are untrusted: their serialized size is capped before
decoding, and seqs beyond MAX_SEQ are refused, so a "bitmap bomb" claiming
billions of entries costs us its (small) size and nothing more: we only ever
compute what *we* hold and they lack, never enumerate what they claim.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from pyroaring import BitMap64

from p2psync.core.entry import MAX_SEQ
from p2psync.core.errors import RemoteError
from p2psync.core.reasons import Reason

MAX_BITMAP_BYTES = 256 * 1024
# Seqs held beyond an origin's contiguous prefix stay within this window, so
# the bitmap of them, however scattered, serializes to at most 17 roaring
# containers of 8 KiB: well inside MAX_BITMAP_BYTES. An entry further ahead
# is refused and comes later, in order, by backfill.
MAX_AHEAD = 1 << 20


def contiguous_prefix(held: BitMap64) -> int:
    """Number n such that seqs 0..n-1 are all held and n is not."""
    if not held or held.min() != 0:
        return 0
    size = len(held)
    if held.max() == size - 1:
        return int(size)
    lo, hi = 1, int(held.max())  # rank(lo-1) == lo holds; find the largest such lo
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if held.rank(mid - 1) == mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


def decode_bitmap(data: bytes) -> BitMap64:
    if len(data) > MAX_BITMAP_BYTES:
        raise RemoteError(
            f"bitmap of {len(data)} bytes exceeds {MAX_BITMAP_BYTES}", reason=Reason.BITMAP
        )
    try:
        bitmap = BitMap64.deserialize(data)
    except (ValueError, IndexError, OverflowError) as exc:
        raise RemoteError("bitmap does not deserialize", reason=Reason.BITMAP) from exc
    if bitmap and bitmap.max() > MAX_SEQ:
        raise RemoteError(
            f"bitmap claims seq {bitmap.max()} beyond {MAX_SEQ}", reason=Reason.BITMAP
        )
    return bitmap


def encode_bitmap(bitmap: BitMap64) -> bytes:
    bitmap.run_optimize()
    data: bytes = bitmap.serialize()
    return data


class Progress:
    """Held seqs per origin. Mutated only by the engine, mirrored by the store."""

    __slots__ = ("_held", "_total")

    def __init__(self, held: Mapping[bytes, BitMap64] | None = None) -> None:
        self._held: dict[bytes, BitMap64] = dict(held or {})
        self._total = sum(len(b) for b in self._held.values())  # kept, not summed per call

    def origins(self) -> Iterator[bytes]:
        return iter(self._held)

    def held(self, origin: bytes) -> BitMap64:
        """The held seqs of `origin` (a new empty bitmap if none: reading creates
        no state, so an origin costs nothing until one of its entries is taken).
        Read it; change it only through add() and discard(), which keep the total."""
        bitmap = self._held.get(origin)
        return BitMap64() if bitmap is None else bitmap

    def get(self, origin: bytes) -> BitMap64 | None:
        """The held seqs of `origin`, or None; unlike held() it creates nothing."""
        return self._held.get(origin)

    def has(self, origin: bytes, seq: int) -> bool:
        bitmap = self._held.get(origin)
        return bitmap is not None and seq in bitmap

    def count(self, origin: bytes) -> int:
        bitmap = self._held.get(origin)
        return 0 if bitmap is None else len(bitmap)

    def total(self) -> int:
        return self._total

    def next_seq(self, origin: bytes) -> int:
        """The seq after the highest held (for our own log: the next to write)."""
        bitmap = self._held.get(origin)
        return 0 if not bitmap else int(bitmap.max()) + 1

    def add(self, origin: bytes, seqs: list[int]) -> None:
        held = self._held.setdefault(origin, BitMap64())
        before = len(held)
        held.update(seqs)
        self._total += len(held) - before

    def discard(self, origin: bytes, seq: int) -> None:
        held = self._held.get(origin)
        if held is not None and seq in held:
            held.discard(seq)
            self._total -= 1

    def snapshot(self) -> dict[bytes, BitMap64]:
        return {origin: BitMap64(bitmap) for origin, bitmap in self._held.items()}

    def encode_origin(self, origin: bytes) -> bytes:
        return encode_bitmap(BitMap64(self.held(origin)))
