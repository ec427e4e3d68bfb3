"""What the engine asks its driver to do: frozen actions, carried out in order.

Every entry point of `SyncEngine` returns a list of these. `Rejected` and
`Dropped` carry a `Blame`, so the driver penalises peers without having to
interpret reason strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pyroaring import BitMap64

from p2psync.core.budgets import BudgetKind
from p2psync.core.entry import Entry, entry_hash
from p2psync.core.forks import ForkProof
from p2psync.core.ops import Op
from p2psync.core.query import QueryReply
from p2psync.core.reasons import BLAME_OF, Blame, MessageKind, Reason, Source


class Accepted(NamedTuple):
    entry: Entry
    op: Op | None  # None: kept in the log (it is validly signed) but changes no recipe
    hash: bytes = b""  # entry_hash(entry.raw) when already computed; the store reuses it

    def entry_hash(self) -> bytes:
        return self.hash or entry_hash(self.entry.raw)


@dataclass(frozen=True, slots=True)
class Persist:
    """Write these entries and progress bitmaps in ONE transaction."""

    entries: tuple[Accepted, ...]
    progress: dict[bytes, BitMap64]  # full held bitmap of every origin touched
    source: Source
    peer: str | None


@dataclass(frozen=True, slots=True)
class RecordFork:
    """Store this proof and hide its origin's entries from its seq on, in ONE transaction.

    `new_origin` is False when it only moves an already forked origin's seq down.
    """

    proof: ForkProof
    new_origin: bool


@dataclass(frozen=True, slots=True)
class SendTo:
    """Send bytes to one peer on the pair's sync topic."""

    peer: str
    data: bytes
    kind: MessageKind


@dataclass(frozen=True, slots=True)
class PublishLive:
    """Broadcast bytes on the live topic."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """Entries refused; `peer` delivered them."""

    peer: str | None
    reason: Reason
    count: int
    detail: str

    @property
    def blame(self) -> Blame:
        return BLAME_OF[self.reason]


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message refused or abandoned; `peer` delivered it (or is the one we lost)."""

    peer: str | None
    reason: Reason
    detail: str

    @property
    def blame(self) -> Blame:
        return BLAME_OF[self.reason]


@dataclass(frozen=True, slots=True)
class RoundFinished:
    peer: str
    ok: bool
    seconds: float
    entries_received: int
    detail: str


@dataclass(frozen=True, slots=True)
class RestartSession:
    """Rounds with this peer keep failing: tear its session down and start anew."""

    peer: str


@dataclass(frozen=True, slots=True)
class QueryReceived:
    """A peer asked for our published recipes; the driver answers it."""

    peer: str
    query_id: int


@dataclass(frozen=True, slots=True)
class BudgetExceeded:
    """`peer` asked for more than its budget of `kind`: count it and, if
    `penalize`, score the peer down (not when it only served what we asked for)."""

    peer: str
    kind: BudgetKind
    penalize: bool = True


@dataclass(frozen=True, slots=True)
class QueryAnswered:
    peer: str
    reply: QueryReply


Action = (
    Persist
    | RecordFork
    | SendTo
    | PublishLive
    | Rejected
    | Dropped
    | RoundFinished
    | RestartSession
    | QueryReceived
    | QueryAnswered
    | BudgetExceeded
)
