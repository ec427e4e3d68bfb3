"""Which log entries are held: one roaring BitMap64 of seqs per origin.

The same structure is the anti-entropy summary sent to peers and the gap
detector for live entries. A summary encodes each origin as the length of
its contiguous prefix plus a bitmap of whatever lies beyond it, which is
empty in the common case: an in-sync summary costs ~44 bytes per origin.

Bitmaps from peers are untrusted: their serialized size is capped before
decoding, and seqs beyond MAX_SEQ are refused, so a "bitmap bomb" claiming
billions of entries costs us its (small) size and nothing more: we only ever
compute what *we* hold and they lack, never enumerate what they claim.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pyroaring import BitMap64

from p2psync.core.entry import MAX_SEQ
from p2psync.core.errors import RemoteError
from p2psync.core.reasons import Reason

MAX_BITMAP_BYTES = 256 * 1024
MAX_SUMMARY_ORIGINS = 10_000
_ORIGIN = struct.Struct(">32sQI")


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

    __slots__ = ("_held",)

    def __init__(self, held: Mapping[bytes, BitMap64] | None = None) -> None:
        self._held: dict[bytes, BitMap64] = dict(held or {})

    def origins(self) -> Iterator[bytes]:
        return iter(self._held)

    def held(self, origin: bytes) -> BitMap64:
        bitmap = self._held.get(origin)
        if bitmap is None:
            bitmap = self._held[origin] = BitMap64()
        return bitmap

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
        return sum(len(b) for b in self._held.values())

    def next_seq(self, origin: bytes) -> int:
        """The seq after the highest held (for our own log: the next to write)."""
        bitmap = self._held.get(origin)
        return 0 if not bitmap else int(bitmap.max()) + 1

    def add(self, origin: bytes, seqs: list[int]) -> None:
        self.held(origin).update(seqs)

    def snapshot(self) -> dict[bytes, BitMap64]:
        return {origin: BitMap64(bitmap) for origin, bitmap in self._held.items()}

    def encode_origin(self, origin: bytes) -> bytes:
        return encode_bitmap(BitMap64(self.held(origin)))


@dataclass(frozen=True, slots=True)
class Claim:
    """What a peer says it holds of one origin: seqs [0, prefix) and `beyond`.

    Kept in this form on purpose: materializing a claimed prefix of 2**48
    would allocate billions of containers.
    """

    prefix: int
    beyond: BitMap64

    def count(self) -> int:
        return self.prefix + len(self.beyond)

    def missing_from(self, held: BitMap64) -> BitMap64:
        """Seqs in `held` that this claim lacks."""
        lacking = BitMap64(held)
        if self.prefix and lacking:
            lacking.remove_range(0, min(self.prefix, int(lacking.max()) + 1))
        if self.beyond:
            lacking.difference_update(self.beyond)
        return lacking

    def covers(self, seq: int) -> bool:
        return seq < self.prefix or seq in self.beyond


Summary = dict[bytes, Claim]


def encode_summary(progress: Progress) -> bytes:
    parts = [struct.pack(">I", sum(1 for o in progress.origins() if progress.count(o)))]
    for origin in progress.origins():
        held = progress.held(origin)
        if not held:
            continue
        prefix = contiguous_prefix(held)
        beyond = b""
        if prefix != len(held):
            rest = BitMap64(held)
            rest.remove_range(0, prefix)
            beyond = encode_bitmap(rest)
        parts.append(_ORIGIN.pack(origin, prefix, len(beyond)))
        parts.append(beyond)
    return b"".join(parts)


def decode_summary(data: bytes) -> Summary:
    if len(data) < 4:
        raise RemoteError("summary is truncated", reason=Reason.MALFORMED)
    (count,) = struct.unpack_from(">I", data)
    if count > MAX_SUMMARY_ORIGINS:
        raise RemoteError(
            f"summary lists {count} origins (max {MAX_SUMMARY_ORIGINS})", reason=Reason.OVERSIZED
        )
    offset = 4
    summary: Summary = {}
    for _ in range(count):
        if offset + _ORIGIN.size > len(data):
            raise RemoteError("summary is truncated", reason=Reason.MALFORMED)
        origin, prefix, beyond_len = _ORIGIN.unpack_from(data, offset)
        offset += _ORIGIN.size
        if prefix > MAX_SEQ + 1:
            raise RemoteError(
                f"summary claims {prefix} entries for one origin", reason=Reason.BITMAP
            )
        if offset + beyond_len > len(data):
            raise RemoteError("summary is truncated", reason=Reason.MALFORMED)
        beyond = decode_bitmap(data[offset : offset + beyond_len]) if beyond_len else BitMap64()
        offset += beyond_len
        if beyond and beyond.min() < prefix:
            raise RemoteError("summary bitmap overlaps its prefix", reason=Reason.BITMAP)
        if origin in summary:
            raise RemoteError("summary lists an origin twice", reason=Reason.MALFORMED)
        summary[origin] = Claim(prefix, beyond)
    if offset != len(data):
        raise RemoteError("summary has trailing bytes", reason=Reason.MALFORMED)
    return summary
