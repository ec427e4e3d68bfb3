"""Wire messages of the sync protocol, version 4 (see docs/PROTOCOL.md).

Every message starts with two bytes: protocol version, message kind. The rest
is a fixed binary layout; entries travel as their raw signed bytes so that a
receiver hashes exactly what the origin signed. Decoding checks sizes before
anything else and raises RemoteError (the peer is to blame) on any defect.

Version 2 replaced the flat per-origin SUMMARY of version 1 with range-based
set reconciliation (RECON), the initiator's WANT, and FORK_PROOF. Version 3
made each side of a FORK_PROOF a short signed chain (a held entry may be
vouched for by a signed successor rather than its own signature), and bounds
how far ahead of its held prefix an item may claim seqs (`MAX_AHEAD`).
Version 4 lets one LIVE carry a run of an origin's consecutive entries: ops
written together travel as one gossipsub message, not one each.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyroaring import BitMap64

from p2psync.core.entry import MAX_ENTRY_BYTES, MIN_ENTRY_BYTES, entry_hash, entry_link
from p2psync.core.errors import RemoteError
from p2psync.core.forks import MAX_SIDE_BYTES
from p2psync.core.items import MAX_BOUND, MIN_BOUND, Item, decode_item
from p2psync.core.progress import decode_bitmap, encode_bitmap
from p2psync.core.query import Query, QueryReply, decode_recipes, encode_recipes
from p2psync.core.reasons import Reason

PROTOCOL_VERSION = 4
MAX_MESSAGE_BYTES = 1024 * 1024 - 1024  # gossipsub drops > 1 MiB at the sender
MAX_BATCH_ENTRIES = 10_000
MAX_LIVE_ENTRIES = 64
# A run's entries together are no larger than one entry may be: the largest
# LIVE (16 791 bytes) stays under the 20 KiB a stalled peer's queue still
# takes (net/pubsub_send.SMALL_RPC_BYTES).
MAX_LIVE_BYTES = MAX_ENTRY_BYTES

LIVE, RECON, BATCH, ACK, QUERY, QUERY_REPLY, WANT, FORK_PROOF = 1, 2, 3, 4, 5, 6, 7, 8

_HEAD = struct.Struct(">BB")
_LIVE = struct.Struct(">H")  # entry count
_RECON = struct.Struct(">IBI")  # round, flags, range count
_WANT = struct.Struct(">IBI")  # round, flags, claim count
_CLAIM = struct.Struct(">32sQBI")  # origin, prefix, flags, beyond length
_FINGERPRINT = struct.Struct(">16sI")
_BATCH = struct.Struct(">IIBI")
_ACK = struct.Struct(">II")
_LEN = struct.Struct(">I")
_QUERY = struct.Struct(">Q")
_MAX_SEQ_PREFIX = 1 << 48

# RECON flags
REPLY_WANTED = 1  # the initiator wants the responder to run its own round back
ROUND_START = 4  # the initiator's first question of a round: forget any older one
FROM_RESPONDER = 2  # an answer to the initiator's ranges (else a question)
# Range modes
FP_RANGE, DONE_RANGE, ITEMS_RANGE = 0, 1, 2
_BOUND_MIN, _BOUND_KEY, _BOUND_MAX = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Live:
    """A run of one origin's entries, oldest first: consecutive seqs, each
    entry's `prev` the hash of the one before (`decode` checks the links)."""

    entries: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class FingerprintRange:
    """Question (or a responder's split): my items in [lower, upper) sum to this."""

    lower: bytes
    upper: bytes
    value: int
    count: int


@dataclass(frozen=True, slots=True)
class DoneRange:
    """Answer: our items in [lower, upper) are the same."""

    lower: bytes
    upper: bytes


@dataclass(frozen=True, slots=True)
class ItemsRange:
    """Answer: these are all my items in [lower, upper)."""

    lower: bytes
    upper: bytes
    items: tuple[Item, ...]


Range = FingerprintRange | DoneRange | ItemsRange


@dataclass(frozen=True, slots=True)
class Recon:
    round: int
    flags: int
    ranges: tuple[Range, ...]


@dataclass(frozen=True, slots=True)
class Claim:
    """What the initiator holds of one origin it wants entries of."""

    origin: bytes
    prefix: int
    beyond: BitMap64
    want_proof: bool = False  # the responder knows a fork of this origin that we do not

    def missing_from(self, held: BitMap64) -> BitMap64:
        """Seqs in `held` this claim lacks. Never materialises the claimed prefix:
        a claim of 2^47 entries would be billions of bitmap containers."""
        lacking = BitMap64(held)
        if self.prefix and lacking:
            lacking.remove_range(0, min(self.prefix, int(lacking.max()) + 1))
        if self.beyond:
            lacking.difference_update(self.beyond)
        return lacking


@dataclass(frozen=True, slots=True)
class Want:
    round: int
    final: bool  # reconciliation is over: stream what is left, then `last`
    claims: tuple[Claim, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    round: int
    batch_no: int
    last: bool
    entries: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    round: int
    batch_no: int


@dataclass(frozen=True, slots=True)
class ForkProofMsg:
    """Two chains one origin signed that differ at one seq (checked by the engine).

    Each side is encoded by `forks.encode_side`.
    """

    first: bytes
    second: bytes


Message = Live | Recon | Want | Batch | Ack | Query | QueryReply | ForkProofMsg


def encode(message: Message) -> bytes:
    if isinstance(message, Live):
        parts = [_HEAD.pack(PROTOCOL_VERSION, LIVE), _LIVE.pack(len(message.entries))]
        for raw in message.entries:
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    if isinstance(message, Recon):
        parts = [
            _HEAD.pack(PROTOCOL_VERSION, RECON),
            _RECON.pack(message.round, message.flags, len(message.ranges)),
        ]
        parts.extend(encode_range(r) for r in message.ranges)
        return b"".join(parts)
    if isinstance(message, Want):
        parts = [
            _HEAD.pack(PROTOCOL_VERSION, WANT),
            _WANT.pack(message.round, int(message.final), len(message.claims)),
        ]
        parts.extend(encode_claim(c) for c in message.claims)
        return b"".join(parts)
    if isinstance(message, Batch):
        parts = [
            _HEAD.pack(PROTOCOL_VERSION, BATCH),
            _BATCH.pack(message.round, message.batch_no, int(message.last), len(message.entries)),
        ]
        for raw in message.entries:
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    if isinstance(message, Ack):
        return _HEAD.pack(PROTOCOL_VERSION, ACK) + _ACK.pack(message.round, message.batch_no)
    if isinstance(message, Query):
        return _HEAD.pack(PROTOCOL_VERSION, QUERY) + _QUERY.pack(message.query_id)
    if isinstance(message, ForkProofMsg):
        return b"".join(
            (
                _HEAD.pack(PROTOCOL_VERSION, FORK_PROOF),
                _LEN.pack(len(message.first)),
                message.first,
                _LEN.pack(len(message.second)),
                message.second,
            )
        )
    body = encode_recipes(message.recipes)
    return _HEAD.pack(PROTOCOL_VERSION, QUERY_REPLY) + _QUERY.pack(message.query_id) + body


def encode_range(r: Range) -> bytes:
    bounds = _encode_bound(r.lower) + _encode_bound(r.upper)
    if isinstance(r, FingerprintRange):
        value = r.value.to_bytes(16, "big")
        return bounds + bytes([FP_RANGE]) + _FINGERPRINT.pack(value, r.count)
    if isinstance(r, DoneRange):
        return bounds + bytes([DONE_RANGE])
    items = b"".join(item.encode() for item in r.items)
    return bounds + bytes([ITEMS_RANGE]) + _LEN.pack(len(r.items)) + items


def encode_claim(claim: Claim) -> bytes:
    beyond = encode_bitmap(claim.beyond) if claim.beyond else b""
    return _CLAIM.pack(claim.origin, claim.prefix, int(claim.want_proof), len(beyond)) + beyond


def _encode_bound(bound: bytes) -> bytes:
    if bound == MIN_BOUND:
        return bytes([_BOUND_MIN])
    if bound == MAX_BOUND:
        return bytes([_BOUND_MAX])
    return bytes([_BOUND_KEY]) + bound


def decode(data: bytes) -> Message:
    size = len(data)
    if size > MAX_MESSAGE_BYTES:
        raise RemoteError(
            f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}", reason=Reason.OVERSIZED
        )
    if size < _HEAD.size:
        raise RemoteError("message is shorter than its header", reason=Reason.MALFORMED)
    version, kind = _HEAD.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise RemoteError(
            f"protocol version {version} is not supported (this node speaks {PROTOCOL_VERSION}); "
            "upgrade the older node",
            reason=Reason.VERSION,
        )
    body = memoryview(data)[_HEAD.size :]
    if kind == LIVE:
        return _decode_live(body)
    if kind == RECON:
        return _decode_recon(body)
    if kind == WANT:
        return _decode_want(body)
    if kind == BATCH:
        return _decode_batch(body)
    if kind == ACK:
        if len(body) != _ACK.size:
            raise RemoteError("ack has the wrong size", reason=Reason.MALFORMED)
        return Ack(*_ACK.unpack_from(body))
    if kind == QUERY:
        if len(body) != _QUERY.size:
            raise RemoteError("query has the wrong size", reason=Reason.MALFORMED)
        return Query(_QUERY.unpack_from(body)[0])
    if kind == QUERY_REPLY:
        _need(body, _QUERY.size)
        (query_id,) = _QUERY.unpack_from(body)
        return QueryReply(query_id, decode_recipes(bytes(body[_QUERY.size :])))
    if kind == FORK_PROOF:
        (first, second), offset = _decode_blobs(body, 0, 2, MAX_SIDE_BYTES)
        if offset != len(body):
            raise RemoteError("fork proof has trailing bytes", reason=Reason.MALFORMED)
        return ForkProofMsg(first, second)
    raise RemoteError(f"unknown message kind {kind}", reason=Reason.UNKNOWN_KIND)


def _need(body: memoryview, size: int) -> None:
    if len(body) < size:
        raise RemoteError("message is truncated", reason=Reason.MALFORMED)


def _decode_blobs(
    body: memoryview, offset: int, count: int, max_bytes: int = MAX_ENTRY_BYTES
) -> tuple[list[bytes], int]:
    """`count` length-prefixed blobs from `offset` on, and the offset after them.

    One tight loop (no call per blob): a backfill BATCH holds a thousand.
    """
    data, end_of_body = bytes(body), len(body)
    unpack, prefix = _LEN.unpack_from, _LEN.size
    blobs: list[bytes] = []
    for _ in range(count):
        if offset + prefix > end_of_body:
            raise RemoteError("message is truncated", reason=Reason.MALFORMED)
        (length,) = unpack(data, offset)
        offset += prefix
        if length > max_bytes:
            raise RemoteError(f"blob of {length} bytes is too large", reason=Reason.OVERSIZED)
        end = offset + length
        if end > end_of_body:
            raise RemoteError("message is truncated", reason=Reason.MALFORMED)
        blobs.append(data[offset:end])
        offset = end
    return blobs, offset


def _decode_bound(body: memoryview, offset: int) -> tuple[bytes, int]:
    _need(body, offset + 1)
    tag = body[offset]
    if tag == _BOUND_MIN:
        return MIN_BOUND, offset + 1
    if tag == _BOUND_MAX:
        return MAX_BOUND, offset + 1
    if tag != _BOUND_KEY:
        raise RemoteError(f"unknown range bound tag {tag}", reason=Reason.MALFORMED)
    _need(body, offset + 33)
    return bytes(body[offset + 1 : offset + 33]), offset + 33


def _decode_recon(body: memoryview) -> Recon:
    _need(body, _RECON.size)
    round_no, flags, count = _RECON.unpack_from(body)
    offset = _RECON.size
    ranges: list[Range] = []
    previous_upper = MIN_BOUND
    for _ in range(count):
        lower, offset = _decode_bound(body, offset)
        upper, offset = _decode_bound(body, offset)
        if not lower < upper or lower < previous_upper:
            raise RemoteError("ranges are empty, unordered or overlap", reason=Reason.MALFORMED)
        previous_upper = upper
        _need(body, offset + 1)
        mode = body[offset]
        offset += 1
        if mode == FP_RANGE:
            _need(body, offset + _FINGERPRINT.size)
            value, item_count = _FINGERPRINT.unpack_from(body, offset)
            offset += _FINGERPRINT.size
            ranges.append(FingerprintRange(lower, upper, int.from_bytes(value, "big"), item_count))
        elif mode == DONE_RANGE:
            ranges.append(DoneRange(lower, upper))
        elif mode == ITEMS_RANGE:
            _need(body, offset + _LEN.size)
            (item_count,) = _LEN.unpack_from(body, offset)
            offset += _LEN.size
            items: list[Item] = []
            for _ in range(item_count):
                item, offset = decode_item(body, offset)
                if not lower <= item.origin < upper or (items and item.origin <= items[-1].origin):
                    raise RemoteError("items out of order or range", reason=Reason.MALFORMED)
                items.append(item)
            ranges.append(ItemsRange(lower, upper, tuple(items)))
        else:
            raise RemoteError(f"unknown range mode {mode}", reason=Reason.MALFORMED)
    if offset != len(body):
        raise RemoteError("recon has trailing bytes", reason=Reason.MALFORMED)
    return Recon(round_no, flags, tuple(ranges))


def _decode_want(body: memoryview) -> Want:
    _need(body, _WANT.size)
    round_no, flags, count = _WANT.unpack_from(body)
    offset = _WANT.size
    claims: list[Claim] = []
    seen: set[bytes] = set()
    for _ in range(count):
        _need(body, offset + _CLAIM.size)
        origin, prefix, claim_flags, size = _CLAIM.unpack_from(body, offset)
        offset += _CLAIM.size
        if prefix > _MAX_SEQ_PREFIX:
            raise RemoteError(f"claim of {prefix} entries for one origin", reason=Reason.BITMAP)
        _need(body, offset + size)
        beyond = decode_bitmap(bytes(body[offset : offset + size])) if size else BitMap64()
        offset += size
        if beyond and beyond.min() < prefix:
            raise RemoteError("claim bitmap overlaps its prefix", reason=Reason.BITMAP)
        if origin in seen:
            raise RemoteError("want lists an origin twice", reason=Reason.MALFORMED)
        seen.add(origin)
        claims.append(Claim(origin, prefix, beyond, bool(claim_flags & 1)))
    if offset != len(body):
        raise RemoteError("want has trailing bytes", reason=Reason.MALFORMED)
    return Want(round_no, bool(flags & 1), tuple(claims))


def live_runs(raws: list[bytes]) -> list[Live]:
    """`raws`, consecutive entries of one origin, as few LIVE messages as the
    limits allow (`MAX_LIVE_ENTRIES`, `MAX_LIVE_BYTES`), in order."""
    runs: list[Live] = []
    run: list[bytes] = []
    size = 0
    for raw in raws:
        if run and (len(run) == MAX_LIVE_ENTRIES or size + len(raw) > MAX_LIVE_BYTES):
            runs.append(Live(tuple(run)))
            run, size = [], 0
        run.append(raw)
        size += len(raw)
    if run:
        runs.append(Live(tuple(run)))
    return runs


def entries_claimed(data: bytes) -> int:
    """How many entries `data` says it carries if it is a LIVE (else 1), read
    without decoding: to bound work by entries before doing it."""
    if len(data) >= 4 and data[1] == LIVE:
        return max(1, int.from_bytes(data[2:4], "big"))
    return 1


def _decode_live(body: memoryview) -> Live:
    _need(body, _LIVE.size)
    (count,) = _LIVE.unpack_from(body)
    if not 1 <= count <= MAX_LIVE_ENTRIES:
        raise RemoteError(
            f"live message of {count} entries (1 to {MAX_LIVE_ENTRIES})", reason=Reason.MALFORMED
        )
    if len(body) > _LIVE.size + count * _LEN.size + MAX_LIVE_BYTES:  # before copying any
        raise RemoteError(
            f"live run of more than {MAX_LIVE_BYTES} entry bytes", reason=Reason.OVERSIZED
        )
    entries, offset = _decode_blobs(body, _LIVE.size, count)
    if offset != len(body):  # with the size check above: at most MAX_LIVE_BYTES of entries
        raise RemoteError("live message has trailing bytes", reason=Reason.MALFORMED)
    before: bytes | None = None
    for raw in entries:
        if len(raw) < MIN_ENTRY_BYTES:  # decode_entry says more; the link needs a header
            raise RemoteError(f"entry of {len(raw)} bytes is too short", reason=Reason.MALFORMED)
        if before is not None:
            origin, seq, prev = entry_link(raw)
            last_origin, last_seq, _ = entry_link(before)
            if origin != last_origin or seq != last_seq + 1 or prev != entry_hash(before):
                raise RemoteError(
                    "live run is not one origin's chain of consecutive entries",
                    reason=Reason.MALFORMED,
                )
        before = raw
    return Live(tuple(entries))


def _decode_batch(body: memoryview) -> Batch:
    _need(body, _BATCH.size)
    round_no, batch_no, flags, count = _BATCH.unpack_from(body)
    if count > MAX_BATCH_ENTRIES:
        raise RemoteError(
            f"batch of {count} entries exceeds {MAX_BATCH_ENTRIES}", reason=Reason.OVERSIZED
        )
    entries, offset = _decode_blobs(body, _BATCH.size, count)
    if offset != len(body):
        raise RemoteError("batch has trailing bytes", reason=Reason.MALFORMED)
    return Batch(round_no, batch_no, bool(flags & 1), tuple(entries))
