"""What a node holds, as reconcilable items: one per origin, committing to content.

An item says, for one origin: the held prefix (seqs 0..prefix-1 all held),
the hash of the entry at the end of that prefix (which, through the hash
chain, commits to every entry of the prefix), the held seqs beyond the
prefix (a roaring bitmap), and the seq at which the origin is proven forked
(NOT_FORKED if it is not). Two nodes holding different entries for one
(origin, seq) in their prefixes have different items, so their fingerprints
differ and reconciliation finds the origin.

Items are ordered by origin bytes. A range's fingerprint is the sum, modulo
2^128, of its items' 128-bit digests, with their count: range sums come from
prefix sums over the sorted origins, so any range costs two bisections.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pyroaring import BitMap64

from p2psync.core.entry import MAX_SEQ, ZERO_HASH
from p2psync.core.errors import RemoteError
from p2psync.core.progress import (
    MAX_AHEAD,
    Progress,
    contiguous_prefix,
    decode_bitmap,
    encode_bitmap,
)
from p2psync.core.reasons import Reason
from p2psync.core.store import LogReader

NOT_FORKED = (1 << 64) - 1
FINGERPRINT_MODULUS = 1 << 128
MIN_BOUND = b""  # below every origin
MAX_BOUND = b"\xff" * 33  # above every origin (origins are 32 bytes)
_ITEM_HEAD = struct.Struct(">32sQ32sQI")  # origin, prefix, head, forked_at, beyond length


@dataclass(frozen=True, slots=True)
class Item:
    origin: bytes
    prefix: int
    head: bytes  # hash of entry prefix-1; ZERO_HASH when prefix == 0
    beyond: BitMap64  # held seqs > prefix (and < forked_at)
    forked_at: int = NOT_FORKED

    def count(self) -> int:
        """How many entries this item says are held."""
        return self.prefix + len(self.beyond)

    def has_more_than(self, ours: Item, limit: int) -> bool:
        """Whether this (their) item holds a seq below `limit` that `ours` lacks.

        Never materialises the prefix: a peer may claim 2^48 entries.
        """
        if min(self.prefix, limit) > ours.prefix:
            return True  # seq ours.prefix is our first gap, by definition of a prefix
        if self.beyond:
            extra = BitMap64(self.beyond)
            if extra.max() >= limit:
                extra.remove_range(limit, int(extra.max()) + 1)
            if ours.prefix and extra:
                extra.remove_range(0, min(ours.prefix, int(extra.max()) + 1))
            extra.difference_update(ours.beyond)
            if extra:
                return True
        return False

    def encode(self) -> bytes:
        beyond = encode_bitmap(self.beyond) if self.beyond else b""
        head = _ITEM_HEAD.pack(self.origin, self.prefix, self.head, self.forked_at, len(beyond))
        return head + beyond

    def digest(self) -> int:
        return int.from_bytes(hashlib.blake2b(self.encode(), digest_size=16).digest(), "big")


def decode_item(data: memoryview, offset: int) -> tuple[Item, int]:
    """One item at `offset`; returns it and the offset after it."""
    if len(data) < offset + _ITEM_HEAD.size:
        raise RemoteError("item is truncated", reason=Reason.MALFORMED)
    origin, prefix, head, forked_at, size = _ITEM_HEAD.unpack_from(data, offset)
    offset += _ITEM_HEAD.size
    if len(data) < offset + size:
        raise RemoteError("item bitmap is truncated", reason=Reason.MALFORMED)
    beyond = decode_bitmap(bytes(data[offset : offset + size])) if size else BitMap64()
    offset += size
    if prefix > MAX_SEQ + 1:
        raise RemoteError(f"item claims {prefix} entries", reason=Reason.BITMAP)
    if prefix > forked_at or (beyond and (beyond.min() <= prefix or beyond.max() >= forked_at)):
        raise RemoteError("item bitmap overlaps its prefix or fork", reason=Reason.BITMAP)
    if beyond and beyond.max() >= prefix + MAX_AHEAD:
        raise RemoteError("item claims seqs too far past its prefix", reason=Reason.BITMAP)
    if (prefix == 0) != (head == ZERO_HASH):
        raise RemoteError("item head does not match its prefix", reason=Reason.MALFORMED)
    return Item(origin, prefix, head, beyond, forked_at), offset


@dataclass(frozen=True, slots=True)
class Fingerprint:
    value: int  # sum of item digests mod 2^128
    count: int


class ItemIndex:
    """The items of every origin we hold, kept current as progress changes.

    The engine calls `refresh` for each origin whose held seqs or fork
    changed, handing it the hashes of entries it has just accepted (they may
    not be in the store yet); other heads are read through the LogReader.
    """

    def __init__(self, progress: Progress, reader: LogReader) -> None:
        self._progress = progress
        self._reader = reader
        self._items: dict[bytes, Item] = {}
        self._digests: dict[bytes, int] = {}
        self._forked_at: dict[bytes, int] = {}
        self._stale: set[bytes] = set()  # heads not readable yet: retried on use
        self._keys: list[bytes] | None = None  # sorted origins, rebuilt when dirty
        self._sums: list[int] = []
        for origin in list(progress.origins()):
            self.refresh(origin)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, origin: bytes) -> Item | None:
        self._settle()
        return self._items.get(origin)

    def forked_at(self, origin: bytes) -> int:
        return self._forked_at.get(origin, NOT_FORKED)

    def set_forked(self, origin: bytes, seq: int) -> None:
        self._forked_at[origin] = seq
        self.refresh(origin)

    def refresh(self, origin: bytes, known_hashes: dict[int, bytes] | None = None) -> None:
        forked_at = self._forked_at.get(origin, NOT_FORKED)
        held = self._progress.get(origin)
        if held is not None and forked_at != NOT_FORKED and held and held.max() >= forked_at:
            held = BitMap64(held)
            held.remove_range(forked_at, int(held.max()) + 1)
        if not held and forked_at == NOT_FORKED:
            if origin in self._items:
                del self._items[origin], self._digests[origin]
                self._keys = None
            self._stale.discard(origin)
            return
        held = held if held is not None else BitMap64()
        # A forked origin keeps an item even with nothing held below its fork:
        # it is how peers learn that a proof exists.
        prefix = contiguous_prefix(held)
        head = ZERO_HASH
        if prefix:
            found = (known_hashes or {}).get(prefix - 1)
            if found is None:
                links = self._reader.entry_links(origin, [prefix - 1])
                found = links[prefix - 1][0] if prefix - 1 in links else None
            if found is None:
                # Its commit is still in flight: leave the origin out until the
                # head is readable (a peer may offer what we hold; we ignore it).
                self._stale.add(origin)
                if origin in self._items:
                    del self._items[origin], self._digests[origin]
                    self._keys = None
                return
            self._stale.discard(origin)
            head = found
        beyond = BitMap64(held)
        if prefix:
            beyond.remove_range(0, prefix)
        item = Item(origin, prefix, head, beyond, forked_at)
        if origin not in self._items:
            self._keys = None
        elif self._keys is not None:
            self._sums = []  # digests changed: prefix sums are rebuilt on use
        self._items[origin] = item
        self._digests[origin] = item.digest()

    def _settle(self) -> None:
        for origin in list(self._stale):
            self.refresh(origin)

    def _sorted(self) -> tuple[list[bytes], list[int]]:
        self._settle()
        if self._keys is None:
            self._keys = sorted(self._items)
            self._sums = []
        if not self._sums:
            total = 0
            sums = [0]
            for key in self._keys:
                total = (total + self._digests[key]) % FINGERPRINT_MODULUS
                sums.append(total)
            self._sums = sums
        return self._keys, self._sums

    def _span(self, lower: bytes, upper: bytes) -> tuple[int, int]:
        keys, _ = self._sorted()
        return bisect.bisect_left(keys, lower), bisect.bisect_left(keys, upper)

    def fingerprint(self, lower: bytes, upper: bytes) -> Fingerprint:
        _, sums = self._sorted()
        start, end = self._span(lower, upper)
        return Fingerprint((sums[end] - sums[start]) % FINGERPRINT_MODULUS, end - start)

    def items(self, lower: bytes, upper: bytes) -> Iterator[Item]:
        keys, _ = self._sorted()
        start, end = self._span(lower, upper)
        for key in keys[start:end]:
            yield self._items[key]

    def split(self, lower: bytes, upper: bytes, parts: int) -> list[bytes]:
        """Bounds cutting [lower, upper) into `parts` ranges of about equal item count."""
        keys, _ = self._sorted()
        start, end = self._span(lower, upper)
        count = end - start
        if count == 0:
            return [lower, upper]
        bounds = [lower]
        for i in range(1, parts):
            key = keys[start + (count * i) // parts]
            if key > bounds[-1]:
                bounds.append(key)
        bounds.append(upper)
        return bounds

    def origins(self) -> Iterable[bytes]:
        return self._items.keys()
