"""Range-based set reconciliation of items (the idea of negentropy and iroh's ranger).

One round, initiator A and responder B. A asks with fingerprints of ranges of
origins; B answers each range it was asked about with DONE (same
fingerprint), ITEMS (all of B's items in it, when they are few or A has
none) or a split into sub-ranges with B's fingerprints. A drops the ranges
whose fingerprints match its own and asks again about the others, until
every range it asked about is answered. From B's items A learns, per origin,
whether B holds anything A lacks; it then sends a WANT with its claim for
each such origin, and a final WANT once nothing is pending. B streams what
the claims lack (see engine.py), as in version 1.

Every answer is bounded: at most LEAF_ITEMS items per range unless A holds
nothing there, and at most MAX_ANSWER_ITEMS items per answer, so one
question costs B a bounded amount of memory and work whatever A claims.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.entry import ZERO_HASH
from p2psync.core.items import MAX_BOUND, MIN_BOUND, NOT_FORKED, Item, ItemIndex
from p2psync.core.progress import Progress
from p2psync.core.protocol import (
    Claim,
    DoneRange,
    FingerprintRange,
    ItemsRange,
    Range,
    encode_claim,
    encode_range,
)

LEAF_ITEMS = 32  # a range with at most this many items is answered with its items
FANOUT = 16  # a larger range is split into this many
MAX_ANSWER_ITEMS = 8_000  # items in one answer, whatever was asked (~1 MB)
_MESSAGE_ROOM = protocol.MAX_MESSAGE_BYTES - 64
_Part = TypeVar("_Part", Range, Claim)


def whole_range(index: ItemIndex) -> FingerprintRange:
    fp = index.fingerprint(MIN_BOUND, MAX_BOUND)
    return FingerprintRange(MIN_BOUND, MAX_BOUND, fp.value, fp.count)


def answer(index: ItemIndex, questions: Sequence[Range]) -> list[Range]:
    """B's answer to A's fingerprint ranges (other kinds of range are ignored)."""
    out: list[Range] = []
    budget = MAX_ANSWER_ITEMS
    for question in questions:
        if not isinstance(question, FingerprintRange):
            continue
        lower, upper = question.lower, question.upper
        mine = index.fingerprint(lower, upper)
        if mine.value == question.value and mine.count == question.count:
            out.append(DoneRange(lower, upper))
        elif mine.count > budget and mine.count <= LEAF_ITEMS:
            # Out of budget for this answer: our fingerprint again, asked about later.
            out.append(FingerprintRange(lower, upper, mine.value, mine.count))
        elif mine.count <= LEAF_ITEMS or (question.count == 0 and mine.count <= budget):
            items = tuple(index.items(lower, upper))
            budget -= len(items)
            out.extend(_cut_items(lower, upper, items))
        else:
            bounds = index.split(lower, upper, FANOUT)
            for low, high in itertools.pairwise(bounds):
                fp = index.fingerprint(low, high)
                out.append(FingerprintRange(low, high, fp.value, fp.count))
    return out


def _cut_items(lower: bytes, upper: bytes, items: tuple[Item, ...]) -> list[Range]:
    """ItemsRanges tiling [lower, upper), each small enough for one message."""
    pieces: list[Range] = []
    start, low, size = 0, lower, 0
    for i, item in enumerate(items):
        size += len(item.encode())
        if size > _MESSAGE_ROOM // 2 and i > start:
            pieces.append(ItemsRange(low, item.origin, items[start:i]))
            start, low, size = i, item.origin, len(item.encode())
    pieces.append(ItemsRange(low, upper, items[start:]))
    return pieces


class Pending:
    """The ranges the initiator asked about and has no answer for yet.

    Disjoint intervals kept sorted by lower bound, so settling one costs a
    bisection however many thousands are open.
    """

    def __init__(self) -> None:
        self._lowers: list[bytes] = []
        self._uppers: list[bytes] = []

    def __bool__(self) -> bool:
        return bool(self._lowers)

    def __len__(self) -> int:
        return len(self._lowers)

    def add(self, lower: bytes, upper: bytes) -> None:
        i = bisect.bisect_left(self._lowers, lower)
        self._lowers.insert(i, lower)
        self._uppers.insert(i, upper)

    def settle(self, lower: bytes, upper: bytes) -> bool:
        """[lower, upper) is answered; False if it lies in no range we asked about."""
        i = bisect.bisect_right(self._lowers, lower) - 1
        if i < 0 or upper > self._uppers[i]:
            return False
        low, high = self._lowers[i], self._uppers[i]
        pieces = [(a, b) for a, b in ((low, lower), (upper, high)) if a < b]
        self._lowers[i : i + 1] = [a for a, _ in pieces]
        self._uppers[i : i + 1] = [b for _, b in pieces]
        return True


def follow_up(
    index: ItemIndex, pending: Pending, answers: Iterable[Range]
) -> tuple[list[FingerprintRange], list[Claim]]:
    """A takes B's answers: the ranges to ask about again, and the claims to send."""
    questions: list[FingerprintRange] = []
    claims: list[Claim] = []
    for reply in answers:
        if isinstance(reply, FingerprintRange):
            # A sub-range of a question: settled if it matches, else asked again.
            mine = index.fingerprint(reply.lower, reply.upper)
            if not pending.settle(reply.lower, reply.upper):
                continue
            if mine.value != reply.value or mine.count != reply.count:
                pending.add(reply.lower, reply.upper)
                questions.append(FingerprintRange(reply.lower, reply.upper, mine.value, mine.count))
        elif pending.settle(reply.lower, reply.upper) and isinstance(reply, ItemsRange):
            for theirs in reply.items:
                claim = claim_for(index.get(theirs.origin), theirs)
                if claim is not None:
                    claims.append(claim)
    return questions, claims


def claim_for(ours: Item | None, theirs: Item) -> Claim | None:
    """Our claim for an origin if `theirs` holds something we lack, else None.

    The claim leaves out the last seq of our prefix, so the responder sends
    its version of it back: if the two differ, that is a fork, and the two
    entries for one seq are its proof.
    """
    want_proof = theirs.forked_at < (ours.forked_at if ours else NOT_FORKED)
    if ours is None:
        return Claim(theirs.origin, 0, BitMap64(), want_proof)
    limit = min(ours.forked_at, theirs.forked_at)
    lacking = theirs.has_more_than(ours, limit)
    same_prefix_other_head = (
        ours.prefix == theirs.prefix and ours.head != theirs.head and ours.head != ZERO_HASH
    )
    if not lacking and not same_prefix_other_head and not want_proof:
        return None
    if same_prefix_other_head:
        # A fork somewhere in our prefix: have all of theirs below it sent, so
        # the first entry that differs, where the fork starts, is proven.
        return Claim(ours.origin, 0, BitMap64(), want_proof)
    prefix = max(0, ours.prefix - 1)
    return Claim(ours.origin, prefix, ours.beyond, want_proof)


def pack_ranges(ranges: Sequence[Range]) -> list[tuple[Range, ...]]:
    """Cut ranges into groups that each fit one RECON message (at least one group)."""
    return _pack(ranges, encode_range) or [()]


def pack_claims(claims: Sequence[Claim]) -> list[tuple[Claim, ...]]:
    """Cut claims into groups that each fit one WANT message (none for no claims)."""
    return _pack(claims, encode_claim)


def _pack(parts: Sequence[_Part], encode: Callable[[_Part], bytes]) -> list[tuple[_Part, ...]]:
    groups: list[tuple[_Part, ...]] = []
    current: list[_Part] = []
    size = 0
    for part in parts:
        length = len(encode(part))
        if current and size + length > _MESSAGE_ROOM:
            groups.append(tuple(current))
            current, size = [], 0
        current.append(part)
        size += length
    if current:
        groups.append(tuple(current))
    return groups


def add_lacking(
    lacking: dict[bytes, BitMap64],
    claims: Iterable[Claim],
    progress: Progress,
    forked: dict[bytes, int],
) -> list[bytes]:
    """B adds to `lacking` what A's claims lack of what B holds (never past a fork).

    Returns the origins whose fork proof A asked for and B holds.
    """
    proofs_wanted = []
    for claim in claims:
        fork = forked.get(claim.origin, NOT_FORKED)
        if claim.want_proof and fork != NOT_FORKED:
            proofs_wanted.append(claim.origin)
        held = progress.get(claim.origin)
        if not held:
            continue
        missing = claim.missing_from(held)
        if missing and missing.max() >= fork:
            missing.remove_range(fork, int(missing.max()) + 1)
        if missing:
            lacking.setdefault(claim.origin, BitMap64()).update(missing)
    return proofs_wanted
