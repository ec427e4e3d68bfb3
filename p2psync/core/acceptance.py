"""Which received entries to keep: decode, authenticate, check against what is held.

A pure function of the received bytes and read-only views of our state. It
changes nothing: the engine applies its verdict (progress, clock, head) in one
place, so a refusal half way through a batch leaves no trace.

Per batch: entries are grouped by origin; two different entries for one seq
in the same batch is a fork. Each origin's entries are split into contiguous
runs; a run is authenticated by its hash links plus the signatures of its
checkpoints (`forks.is_checkpoint`, one seq in 16) and of its last entry,
unless a held successor links to it; live entries are checked one signature
each. So every entry we hold is at most `MAX_CHAIN` links from one whose
signature we checked, which keeps any fork provable in a short proof. Held
neighbours must link to the run, or it is a fork. An entry `MAX_AHEAD` or
more past the origin's held prefix is refused for now (it comes later, in
order), so no origin's held-beyond bitmap can outgrow a message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nacl.signing import VerifyKey
from pyroaring import BitMap64

from p2psync.core.actions import Accepted, Rejected
from p2psync.core.entry import (
    CheckedSignatures,
    Entry,
    decode_entry,
    entry_hash,
)
from p2psync.core.errors import RemoteError
from p2psync.core.forks import (
    MAX_CHAIN,
    ForkProof,
    authentic_chain,
    is_checkpoint,
    make_fork_proof,
)
from p2psync.core.ops import Op, decode_op
from p2psync.core.progress import MAX_AHEAD, Progress, contiguous_prefix
from p2psync.core.reasons import Reason
from p2psync.core.recipes import is_by_author
from p2psync.core.store import LogReader


@dataclass(slots=True)
class Verdict:
    """The outcome of checking one message's entries."""

    accepted: list[Accepted] = field(default_factory=list)  # new and authentic, in seq order
    rejected: list[Rejected] = field(default_factory=list)
    proofs: list[ForkProof] = field(default_factory=list)  # forks found on the way


class _Fork(RemoteError):
    """A run differs from what we hold at one seq: both sides are at hand."""

    def __init__(
        self, message: str, held: tuple[Entry, ...] | None, received: tuple[Entry, ...]
    ) -> None:
        super().__init__(message, reason=Reason.FORK)
        self.held = held  # our chain from the forked seq to a signed entry, if we have one
        self.received = received


def check_entries(
    raws: Iterable[bytes],
    peer: str | None,
    *,
    progress: Progress,
    reader: LogReader,
    verify_keys: dict[bytes, VerifyKey],
    allowed_origins: frozenset[bytes] | None,
    forked_at: Callable[[bytes], int],
    verify_each: bool,
    checked: CheckedSignatures,
) -> Verdict:
    """Check entries delivered by `peer` against what `progress` says we hold (read only).

    `verify_keys` is a cache of decoded public keys that this call may extend;
    `checked` holds the entries whose signature verified already (it grows).
    """
    verdict = Verdict()
    by_origin: dict[bytes, dict[int, Entry]] = {}
    for raw in raws:
        try:
            entry = decode_entry(raw)
        except RemoteError as exc:
            verdict.rejected.append(Rejected(peer, exc.reason, 1, str(exc)))
            continue
        seen = by_origin.setdefault(entry.origin, {})
        other = seen.get(entry.seq)
        if other is not None and other.raw != entry.raw:
            verdict.rejected.append(
                Rejected(peer, Reason.FORK, 1, "two different entries for one seq")
            )
            continue
        seen[entry.seq] = entry
    empty = BitMap64()
    for origin, entries in by_origin.items():
        if allowed_origins is not None and origin not in allowed_origins:
            verdict.rejected.append(
                Rejected(peer, Reason.NOT_ALLOWED, len(entries), "origin not allowed")
            )
            continue
        held_seqs = progress.get(origin) or empty
        fork = forked_at(origin)
        past_fork = [e for e in entries.values() if e.seq >= fork]
        if past_fork:
            detail = f"origin is proven forked at seq {fork}"
            verdict.rejected.append(Rejected(peer, Reason.FORKED, len(past_fork), detail))
        limit = min(fork, contiguous_prefix(held_seqs) + MAX_AHEAD)
        ahead = [e for e in entries.values() if limit <= e.seq < fork]
        if ahead:
            detail = f"seq {min(e.seq for e in ahead)} is too far past the held prefix; later"
            verdict.rejected.append(Rejected(peer, Reason.AHEAD, len(ahead), detail))
        ordered = sorted((e for e in entries.values() if e.seq < limit), key=lambda e: e.seq)
        for run in _contiguous_runs(ordered):
            try:
                new = _check_run(run, held_seqs, reader, verify_keys, verify_each, checked)
            except _Fork as exc:
                verdict.rejected.append(Rejected(peer, exc.reason, len(run), str(exc)))
                proof = _proof_of(exc, verify_keys)
                if proof is not None:
                    verdict.proofs.append(proof)
                continue
            except RemoteError as exc:
                verdict.rejected.append(Rejected(peer, exc.reason, len(run), str(exc)))
                continue
            for entry, digest in new:
                op, refusal = authorised_op(entry, peer)
                if refusal is not None:
                    verdict.rejected.append(refusal)
                verdict.accepted.append(Accepted(entry, op, digest))
    return verdict


def authorised_op(entry: Entry, peer: str | None) -> tuple[Op | None, Rejected | None]:
    """The entry's op if it may change a recipe; else None and why not.

    A validly signed entry with an unusable op is still kept in the log (so
    every node holds the same log), it just changes no recipe.
    """
    try:
        op = decode_op(entry.op)
    except RemoteError as exc:
        return None, Rejected(peer, Reason.BAD_OP, 1, str(exc))
    if not is_by_author(entry, op):
        return None, Rejected(
            peer, Reason.NOT_AUTHOR, 1, f"{op.kind} on a recipe of another author"
        )
    return op, None


def _check_run(
    run: list[Entry],
    held: BitMap64,
    reader: LogReader,
    verify_keys: dict[bytes, VerifyKey],
    verify_each: bool,
    checked: CheckedSignatures,
) -> list[tuple[Entry, bytes]]:
    """Authenticate one contiguous run; return the entries not yet held, with hashes."""
    hashes = [entry_hash(e.raw) for e in run]
    for i in range(1, len(run)):
        if run[i].prev != hashes[i - 1]:
            raise RemoteError("broken hash link inside a run", reason=Reason.CHAIN)
    origin = run[0].origin
    first, last = run[0].seq, run[-1].seq
    neighbours = [s for s in (first - 1, last + 1) if s >= 0 and s in held]
    already = [e.seq for e in run if e.seq in held]
    if len(already) == len(run) and not verify_each:
        # Nothing new: still make sure it is not a fork of what we hold.
        stored = reader.entry_links(origin, already[-1:]).get(already[-1])
        if stored is not None and stored[0] != hashes[-1]:
            # Prove the fork where it starts, not where we noticed it.
            links = reader.entry_links(origin, already)
            first = next(
                i for i, e in enumerate(run) if e.seq in links and links[e.seq][0] != hashes[i]
            )
            raise _fork_at(reader, run[first:], verify_keys)
        return []
    links = reader.entry_links(origin, neighbours + already)
    # Two entries for one seq first: they make a proof anyone can check.
    for i, entry in enumerate(run):
        stored = links.get(entry.seq)
        if stored is not None and stored[0] != hashes[i]:
            raise _fork_at(reader, run[i:], verify_keys)
    # A held successor that links to this run authenticates it as well as a
    # signature would: it was itself authenticated when we took it.
    vouched = last + 1 in links and links[last + 1][1] == hashes[-1]
    if verify_each:
        signed = list(range(len(run)))
    else:
        signed = [i for i, e in enumerate(run[:-1]) if is_checkpoint(e.seq)]
        if not vouched or is_checkpoint(last):
            signed.append(len(run) - 1)
    for i in signed:
        checked.verify(run[i], hashes[i], verify_keys)
    if first - 1 in links and links[first - 1][0] != run[0].prev:
        raise RemoteError("entry does not link to the one held before it", reason=Reason.FORK)
    if last + 1 in links and links[last + 1][1] != hashes[-1]:
        raise RemoteError("entry does not link to the one held after it", reason=Reason.FORK)
    return [(e, hashes[i]) for i, e in enumerate(run) if e.seq not in held]


def _fork_at(
    reader: LogReader, received: list[Entry], verify_keys: dict[bytes, VerifyKey]
) -> _Fork:
    """A fork where `received` (a run from the differing entry on) meets what we hold.

    The received side must be vouched for by a signature within MAX_CHAIN
    entries, in the run or past it in our log; otherwise it is a forgery,
    refused as a bad signature. Our side may lack a proof if we took it under
    older rules; the fork is refused all the same.
    """
    start = received[0]
    origin, seq = start.origin, start.seq
    stored = reader.read_raw(origin, list(range(seq, seq + MAX_CHAIN)))
    tail = _held_chain(stored, received[-1].seq + 1, seq + MAX_CHAIN)
    chain = authentic_chain([*received[:MAX_CHAIN], *tail], verify_keys)
    if chain is None:
        raise RemoteError(
            f"entry seq {seq} differs from the one held and no signature within"
            f" {MAX_CHAIN} entries vouches for it",
            reason=Reason.SIGNATURE,
        )
    held = authentic_chain(_held_chain(stored, seq, seq + MAX_CHAIN), verify_keys)
    return _Fork("entry differs from the one held", held, chain)


def _held_chain(stored: dict[int, bytes], first: int, end: int) -> list[Entry]:
    """Our held entries from `first` on while they run on without a gap (before `end`)."""
    entries: list[Entry] = []
    for seq in range(first, end):
        raw = stored.get(seq)
        if raw is None:
            break
        entries.append(decode_entry(raw))
    return entries


def _proof_of(fork: _Fork, verify_keys: dict[bytes, VerifyKey]) -> ForkProof | None:
    """The proof the two sides make, if both are vouched for (else none)."""
    if fork.held is None:
        return None
    try:
        return make_fork_proof(fork.held, fork.received, verify_keys)
    except RemoteError:
        return None


def _contiguous_runs(entries: list[Entry]) -> list[list[Entry]]:
    runs: list[list[Entry]] = []
    for entry in entries:
        if runs and runs[-1][-1].seq + 1 == entry.seq:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs
