"""Which received entries to keep: decode, authenticate, check against what is held.

A pure function of the received bytes and read-only views of our state. It
changes nothing: the engine applies its verdict (progress, clock, head) in one
place, so a refusal half way through a batch leaves no trace.

Per batch: entries are grouped by origin; two different entries for one seq
in the same batch is a fork. Each origin's entries are split into contiguous
runs; a run is authenticated by its hash links plus ONE signature (its last
entry's), or by a held successor that links to it; live entries are checked
one signature each. Held neighbours must link to the run, or it is a fork.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nacl.signing import VerifyKey
from pyroaring import BitMap64

from p2psync.core.actions import Accepted, Rejected
from p2psync.core.entry import Entry, decode_entry, entry_hash, verify_signature
from p2psync.core.errors import RemoteError
from p2psync.core.forks import ForkProof, make_fork_proof
from p2psync.core.ops import Op, decode_op
from p2psync.core.progress import Progress
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
    """A run differs from what we hold at one seq: both entries are at hand."""

    def __init__(self, message: str, held_raw: bytes | None, received: Entry) -> None:
        super().__init__(message, reason=Reason.FORK)
        self.held_raw = held_raw
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
) -> Verdict:
    """Check entries delivered by `peer` against what `progress` says we hold (read only).

    `verify_keys` is a cache of decoded public keys that this call may extend.
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
        ordered = sorted((e for e in entries.values() if e.seq < fork), key=lambda e: e.seq)
        for run in _contiguous_runs(ordered):
            try:
                new = _check_run(run, held_seqs, reader, verify_keys, verify_each)
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
            raise _fork_at(reader, run[first], verify_keys)
        return []
    links = reader.entry_links(origin, neighbours + already)
    # Two entries for one seq first: they make a proof anyone can check.
    for i, entry in enumerate(run):
        stored = links.get(entry.seq)
        if stored is not None and stored[0] != hashes[i]:
            raise _fork_at(reader, entry, verify_keys)
    # A held successor that links to this run authenticates it as well as a
    # signature would: it was itself authenticated when we took it.
    vouched = last + 1 in links and links[last + 1][1] == hashes[-1]
    if not vouched:
        for entry in run if verify_each else run[-1:]:
            verify_signature(entry, verify_keys)
    if first - 1 in links and links[first - 1][0] != run[0].prev:
        raise RemoteError("entry does not link to the one held before it", reason=Reason.FORK)
    if last + 1 in links and links[last + 1][1] != hashes[-1]:
        raise RemoteError("entry does not link to the one held after it", reason=Reason.FORK)
    return [(e, hashes[i]) for i, e in enumerate(run) if e.seq not in held]


def _fork_at(reader: LogReader, received: Entry, verify_keys: dict[bytes, VerifyKey]) -> _Fork:
    """A fork at `received`'s seq, if it is signed; a forgery is only a bad signature."""
    verify_signature(received, verify_keys)
    held_raw = reader.read_raw(received.origin, [received.seq]).get(received.seq)
    return _Fork("entry differs from the one held", held_raw, received)


def _proof_of(fork: _Fork, verify_keys: dict[bytes, VerifyKey]) -> ForkProof | None:
    """The proof the two entries make, if both are validly signed (else none)."""
    if fork.held_raw is None:
        return None
    try:
        return make_fork_proof(decode_entry(fork.held_raw), fork.received, verify_keys)
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
