"""Per-peer round state of the engine, and how a round's batches are cut.

Per peer the engine keeps at most one *incoming* round (ours: we sent a
SUMMARY, they stream what we lack) and one *outgoing* round (theirs: we
stream what their summary lacks).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from pyroaring import BitMap64

from p2psync.core.progress import Summary
from p2psync.core.store import LogReader


@dataclass(slots=True)
class Incoming:
    """Our round with a peer: we sent a summary, they stream what we lack."""

    round: int
    started: float
    last_activity: float
    received_batches: set[int] = field(default_factory=set)
    total_batches: int | None = None
    entries: int = 0
    new_entries: int = 0


@dataclass(slots=True)
class Outgoing:
    """Their round: we stream what their summary lacks."""

    round: int
    lacking: dict[bytes, BitMap64]
    next_batch_no: int = 0
    in_flight: set[int] = field(default_factory=set)
    last_activity: float = 0.0
    finished: bool = False


@dataclass(slots=True)
class PeerState:
    connected: bool = True
    claim: Summary = field(default_factory=dict)
    incoming: Incoming | None = None
    outgoing: Outgoing | None = None
    resync_wanted: bool = False
    last_round_started: float = float("-inf")
    round_counter: int = 0


def take_batch(
    lacking: dict[bytes, BitMap64], reader: LogReader, batch_size: int, max_bytes: int
) -> list[bytes]:
    """Take up to `batch_size` entries (and about `max_bytes`) off `lacking`, in order."""
    raws: list[bytes] = []
    size = 0
    for origin in list(lacking):
        seqs_left = lacking[origin]
        seqs = list(itertools.islice(seqs_left, batch_size - len(raws)))
        stored = reader.read_raw(origin, seqs)
        done: list[int] = []
        full = False
        for seq in seqs:
            raw = stored.get(seq)
            if raw is not None:
                if raws and size + len(raw) > max_bytes:
                    full = True
                    break
                raws.append(raw)
                size += len(raw) + 4
            # A seq held in memory but not stored is a local commit in flight
            # (or one that failed): skip it; the next round offers it again.
            done.append(seq)
        seqs_left.difference_update(BitMap64(done))
        if not seqs_left:
            del lacking[origin]
        if full or len(raws) >= batch_size:
            break
    return raws
