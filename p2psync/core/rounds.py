"""Per-peer round state of the engine, and how a round's batches are cut.

Per peer the engine keeps at most one *incoming* round (ours: we sent a
SUMMARY, they stream what we lack) and one *outgoing* round (theirs: we
stream what their summary lacks).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.forks import is_checkpoint
from p2psync.core.ids import InvalidPeerId, public_key_from_peer_id
from p2psync.core.reconcile import Pending
from p2psync.core.store import LogReader


@dataclass(slots=True)
class Incoming:
    """Our round with a peer: we sent a summary, they stream what we lack."""

    round: int
    started: float
    last_activity: float
    pending: Pending = field(default_factory=Pending)  # ranges asked about, not yet answered
    want_final_sent: bool = False
    received_batches: set[int] = field(default_factory=set)
    total_batches: int | None = None
    entries: int = 0
    new_entries: int = 0


@dataclass(slots=True)
class Outgoing:
    """Their round: we answer their ranges, then stream what their claims lack."""

    round: int
    lacking: dict[bytes, BitMap64] = field(default_factory=dict)
    want_final: bool = False  # their reconciliation is over: `last` once lacking is empty
    next_batch_no: int = 0
    in_flight: set[int] = field(default_factory=set)
    # Per batch in flight, how many entries of each origin it carries: once
    # acked, the peer holds them (`SyncEngine.peer_claims`).
    sent_counts: dict[int, dict[bytes, int]] = field(default_factory=dict)
    last_activity: float = 0.0
    finished: bool = False


@dataclass(slots=True)
class PeerState:
    connected: bool = True
    # Their counts for the origins where their items differed from ours when
    # we last reconciled, raised by the batches we sent them and they acked;
    # for every other origin they held what we did.
    differs: dict[bytes, int] = field(default_factory=dict)
    incoming: Incoming | None = None
    outgoing: Outgoing | None = None
    resync_wanted: bool = False
    failed_rounds: int = 0  # in a row: a connected session that makes no progress
    last_round_started: float = float("-inf")
    live_at: float = float("-inf")  # a live entry it handed us was last accepted


# Seconds without a live entry from a peer that handed us some since our last
# round with it, after which a round checks for a lost tail: a live entry lost
# in the middle of a stream shows as a gap at the next one, but the last ones
# of a burst have no next one and would wait a whole `sync_interval`.
LIVE_SETTLE = 1.0


# A node starts about this many periodic rounds per `sync_interval`: with
# more peers, each pair's period stretches in proportion (up to
# MAX_PERIODIC_STRETCH, i.e. 32 peers), so the idle cost of anti-entropy
# stays flat in the number of peers instead of growing with it (issue 13).
# Rounds on connect, on a gap, after a live burst and to pass news on are
# not periodic and never wait for it.
PERIODIC_ROUNDS_PER_INTERVAL = 8
# Peer ids cost nothing: a crowd of strangers must not stretch the period
# with honest peers past this factor (2 minutes at the default 30 s).
MAX_PERIODIC_STRETCH = 4.0


def periodic_interval(sync_interval: float, connected_peers: int) -> float:
    """Seconds between two periodic rounds with one peer, for a node with
    `connected_peers` peers."""
    stretch = connected_peers / PERIODIC_ROUNDS_PER_INTERVAL
    return sync_interval * min(MAX_PERIODIC_STRETCH, max(1.0, stretch))


def round_due(state: PeerState, now: float, sync_interval: float) -> bool:
    """Start a round with this peer now? (None of ours is under way.)"""
    if state.incoming is not None:
        return False
    if state.resync_wanted or now - state.last_round_started >= sync_interval:
        return True
    return state.live_at > state.last_round_started and now - state.live_at >= LIVE_SETTLE


def take_batch(
    lacking: dict[bytes, BitMap64],
    reader: LogReader,
    batch_size: int,
    max_bytes: int,
    counts: dict[bytes, int] | None = None,
) -> list[bytes]:
    """Take up to `batch_size` entries (and about `max_bytes`) off `lacking`, in order.

    Where the batch cuts a run short, it ends the run at a checkpoint
    (`forks.is_checkpoint`) if it can: the receiver authenticates a run by
    its last entry's signature, and we checked the checkpoints' signatures
    but not necessarily the one of an entry inside a run we took.
    `counts`, if given, gets how many entries of each origin were taken.
    """
    raws: list[bytes] = []
    size = 0
    for origin in list(lacking):
        seqs_left = lacking[origin]
        seqs = list(itertools.islice(seqs_left, batch_size - len(raws)))
        stored = reader.read_raw(origin, seqs)
        taken: list[tuple[int, bytes]] = []
        done: list[int] = []
        full = False
        for seq in seqs:
            raw = stored.get(seq)
            if raw is not None:
                if (raws or taken) and size + len(raw) > max_bytes:
                    full = True
                    break
                taken.append((seq, raw))
                size += len(raw) + 4
            # A seq held in memory but not stored is a local commit in flight
            # (or one that failed): skip it; the next round offers it again.
            done.append(seq)
        cut = full or len(raws) + len(taken) >= batch_size
        if cut and taken:
            kept = _end_at_checkpoint(taken, seqs_left)
            # Tiny batches (tests) would shrink to nothing: they go uncut.
            if kept < len(taken) and (raws or kept > len(taken) // 2):
                done = [seq for seq in done if seq <= taken[kept - 1][0]] if kept else []
                taken = taken[:kept]
        raws.extend(raw for _, raw in taken)
        if counts is not None and taken:
            counts[origin] = counts.get(origin, 0) + len(taken)
        seqs_left.difference_update(BitMap64(done))
        if not seqs_left:
            del lacking[origin]
        if cut:
            break
    return raws


def _end_at_checkpoint(taken: list[tuple[int, bytes]], lacking: BitMap64) -> int:
    """How many of `taken` to send so the last one ends a run or is a checkpoint."""
    for i in range(len(taken), 0, -1):
        seq = taken[i - 1][0]
        ends_run = i == len(taken) and seq + 1 not in lacking
        if ends_run or is_checkpoint(seq) or (i < len(taken) and taken[i][0] != seq + 1):
            return i
    return 0


def pump_batches(
    out: Outgoing, reader: LogReader, window: int, batch_size: int, max_bytes: int
) -> list[protocol.Batch]:
    """The batches to send now: while the window has room and something is left.

    The final batch, flagged `last`, goes once the initiator's reconciliation
    is over (its final WANT) and nothing it lacks is left.
    """
    batches: list[protocol.Batch] = []
    while len(out.in_flight) < window and not out.finished:
        if not out.lacking and not out.want_final:
            break  # more claims may come
        counts: dict[bytes, int] = {}
        raws = take_batch(out.lacking, reader, batch_size, max_bytes, counts)
        last = out.want_final and not out.lacking
        if not raws and not last:
            continue  # what was left is not stored (yet): skipped
        batch_no = out.next_batch_no
        out.next_batch_no += 1
        out.in_flight.add(batch_no)
        if counts:
            out.sent_counts[batch_no] = counts
        out.finished = last
        batches.append(protocol.Batch(out.round, batch_no, last, tuple(raws)))
    return batches


def note_acked(
    differs: dict[bytes, int], acked: dict[bytes, int], held: Callable[[bytes], int]
) -> None:
    """The peer acked a batch of `acked` entries per origin: it holds them now.

    Only the origins in `differs` change: for the others, as far as we know,
    it holds what we do. Capped at what we hold (`held`), since the answer of
    a newer round may have counted them already.
    """
    for origin, n in acked.items():
        before = differs.get(origin)
        if before is not None:
            differs[origin] = min(before + n, max(before, held(origin)))


def claims_of(
    peers: Mapping[str, PeerState], ours: dict[bytes, int]
) -> dict[str, dict[bytes, int]]:
    """What each connected peer holds as far as we know, as counts per origin:
    their counts at our last reconciliation plus the batches they acked
    since, and never less of their own log than we hold (they wrote it)."""
    claims = {p: {**ours, **s.differs} for p, s in peers.items() if s.connected}
    for peer, theirs in claims.items():
        if (own := origin_of(peer)) in ours:
            theirs[own] = max(theirs.get(own, 0), ours[own])
    return claims


def most_known(peers: Mapping[str, PeerState], ours: dict[bytes, int]) -> dict[bytes, int]:
    """`claims_of` folded into one count per origin, the most anyone holds,
    without a dict per peer or a peer id decoded per peer (the progress
    line asks up to four times a second). The rule that a peer holds no less
    of its own log than we do adds nothing to a maximum that counts ours."""
    known = dict(ours)
    for state in peers.values():
        if state.connected:
            for origin, count in state.differs.items():
                if count > known.get(origin, 0):
                    known[origin] = count
    return known


def origin_of(peer: str) -> bytes | None:
    """The origin (public key) a peer id names, if it names an Ed25519 key."""
    try:
        return public_key_from_peer_id(peer)
    except InvalidPeerId:
        return None
