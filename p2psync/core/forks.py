"""Fork proofs: two entries one origin signed for one seq.

Anyone can check a proof on its own: both entries decode, name the same
origin and seq, differ, and carry valid signatures of that origin. A node
holding a proof for an origin applies one deterministic rule (PROTOCOL.md,
"Forks"): the origin's entries below the smallest proven seq count, the
rest are hidden; so every node holding the proof shows the same recipes.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.signing import VerifyKey

from p2psync.core.entry import Entry, decode_entry, verify_signature
from p2psync.core.errors import RemoteError
from p2psync.core.reasons import Reason


@dataclass(frozen=True, slots=True)
class ForkProof:
    origin: bytes
    seq: int
    first: bytes  # raw entry; the two are stored in byte order, so a proof has one form
    second: bytes


def make_fork_proof(
    one: Entry, other: Entry, verify_keys: dict[bytes, VerifyKey] | None = None
) -> ForkProof:
    """The proof that `one` and `other` fork their origin; RemoteError if they do not."""
    if one.origin != other.origin or one.seq != other.seq:
        raise RemoteError("fork proof entries name different slots", reason=Reason.BAD_PROOF)
    if one.raw == other.raw:
        raise RemoteError("fork proof entries are identical", reason=Reason.BAD_PROOF)
    for entry in (one, other):
        try:
            verify_signature(entry, verify_keys)
        except RemoteError as exc:
            raise RemoteError(f"fork proof: {exc}", reason=Reason.BAD_PROOF) from exc
    first, second = sorted((one.raw, other.raw))
    return ForkProof(one.origin, one.seq, first, second)


def decode_fork_proof(
    first: bytes, second: bytes, verify_keys: dict[bytes, VerifyKey] | None = None
) -> ForkProof:
    """Check a proof received from a peer."""
    try:
        one, other = decode_entry(first), decode_entry(second)
    except RemoteError as exc:
        raise RemoteError(f"fork proof: {exc}", reason=Reason.BAD_PROOF) from exc
    return make_fork_proof(one, other, verify_keys)
