"""Fork proofs: two histories one origin signed that differ at one seq.

Entries are authenticated in runs: hash links plus one valid signature at
the end of a run and at every checkpoint (`is_checkpoint`), so an entry we
hold may carry a bad signature of its own and still be the origin's work,
vouched for by a signed successor whose hash chain leads back to it. A proof
therefore holds two *sides*: each a chain of at most `MAX_CHAIN` entries
that starts at the forked seq, links by hash, and ends in an entry with a
valid signature. Anyone can check a proof on its own. A node holding one
applies one deterministic rule (PROTOCOL.md, "Forks"): the origin's entries
below the smallest proven seq count, the rest are hidden; so every node
holding the proof shows the same recipes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from nacl.signing import VerifyKey

from p2psync.core.entry import MAX_ENTRY_BYTES, Entry, decode_entry, verify_signature
from p2psync.core.errors import RemoteError
from p2psync.core.reasons import Reason

# Every entry whose seq is a checkpoint has its own signature checked when
# accepted, so a chain from any held entry to a signed one is this short.
MAX_CHAIN = 16
_LEN = struct.Struct(">I")
MAX_SIDE_BYTES = MAX_CHAIN * (_LEN.size + MAX_ENTRY_BYTES)


def is_checkpoint(seq: int) -> bool:
    return seq % MAX_CHAIN == MAX_CHAIN - 1


@dataclass(frozen=True, slots=True)
class ForkProof:
    origin: bytes
    seq: int
    first: tuple[bytes, ...]  # raw entries of one side, from `seq` on; the sides in byte order
    second: tuple[bytes, ...]


def encode_side(side: Sequence[bytes]) -> bytes:
    """A side as it travels and is stored: each raw entry with a 4-byte length."""
    return b"".join(_LEN.pack(len(raw)) + raw for raw in side)


def decode_side(data: bytes) -> tuple[bytes, ...]:
    if len(data) > MAX_SIDE_BYTES:
        raise RemoteError(
            f"fork proof side of {len(data)} bytes exceeds {MAX_SIDE_BYTES}",
            reason=Reason.BAD_PROOF,
        )
    raws: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) < offset + _LEN.size:
            raise RemoteError("fork proof side is truncated", reason=Reason.BAD_PROOF)
        (size,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        if size > MAX_ENTRY_BYTES or len(data) < offset + size:
            raise RemoteError("fork proof side is truncated", reason=Reason.BAD_PROOF)
        raws.append(data[offset : offset + size])
        offset += size
    return tuple(raws)


def authentic_chain(
    candidates: Sequence[Entry], verify_keys: dict[bytes, VerifyKey] | None = None
) -> tuple[Entry, ...] | None:
    """The shortest prefix of `candidates` that a valid signature vouches for.

    `candidates` start at the entry to vouch for and follow one origin's
    seqs. The prefix ends at the first entry whose signature verifies and
    every entry up to it links by hash; None if none does within MAX_CHAIN.
    """
    for i, entry in enumerate(candidates[:MAX_CHAIN]):
        if i and not _follows(entry, candidates[i - 1]):
            return None
        try:
            verify_signature(entry, verify_keys)
        except RemoteError:
            continue
        return tuple(candidates[: i + 1])
    return None


def _follows(entry: Entry, before: Entry) -> bool:
    """`entry` is the next of `before`'s origin and links to it by hash."""
    return (
        entry.origin == before.origin
        and entry.seq == before.seq + 1
        and entry.prev == before.hash()
    )


def make_fork_proof(
    one: Sequence[Entry], other: Sequence[Entry], verify_keys: dict[bytes, VerifyKey] | None = None
) -> ForkProof:
    """The proof that two chains fork their origin; RemoteError if they do not."""
    if not one or not other:
        raise RemoteError("fork proof side is empty", reason=Reason.BAD_PROOF)
    head, other_head = one[0], other[0]
    if head.origin != other_head.origin or head.seq != other_head.seq:
        raise RemoteError("fork proof sides name different slots", reason=Reason.BAD_PROOF)
    if head.raw == other_head.raw:
        raise RemoteError("fork proof sides start with one entry", reason=Reason.BAD_PROOF)
    for side in (one, other):
        if len(side) > MAX_CHAIN:
            raise RemoteError(
                f"fork proof side of {len(side)} entries exceeds {MAX_CHAIN}",
                reason=Reason.BAD_PROOF,
            )
        if not all(_follows(side[i], side[i - 1]) for i in range(1, len(side))):
            raise RemoteError("fork proof side does not link", reason=Reason.BAD_PROOF)
        try:
            verify_signature(side[-1], verify_keys)
        except RemoteError as exc:
            raise RemoteError(f"fork proof: {exc}", reason=Reason.BAD_PROOF) from exc
    first, second = sorted((tuple(e.raw for e in one), tuple(e.raw for e in other)))
    return ForkProof(head.origin, head.seq, first, second)


def decode_fork_proof(
    first: bytes, second: bytes, verify_keys: dict[bytes, VerifyKey] | None = None
) -> ForkProof:
    """Check a proof received from a peer (its two sides as encoded by `encode_side`)."""
    try:
        one = [decode_entry(raw) for raw in decode_side(first)]
        other = [decode_entry(raw) for raw in decode_side(second)]
    except RemoteError as exc:
        raise RemoteError(f"fork proof: {exc}", reason=Reason.BAD_PROOF) from exc
    return make_fork_proof(one, other, verify_keys)
