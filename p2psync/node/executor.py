"""The one executor of engine actions, shared by the node, the simulator and the tests.

It carries out each action in order, synchronously: a Persist is committed
before the actions after it run, so nobody is told of an entry that is not on
disk. It knows the network only through `Effects` and the metrics only
through `Observer`, and imports no trio, so a deterministic simulator drives
the same code the daemon runs, store failures and penalties included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from pyroaring import BitMap64

from p2psync.core.actions import (
    Action,
    BudgetExceeded,
    Dropped,
    Persist,
    PublishLive,
    QueryAnswered,
    QueryReceived,
    RecordFork,
    Rejected,
    RestartSession,
    RoundFinished,
    SendTo,
)
from p2psync.core.engine import SyncEngine
from p2psync.core.hlc import Now, wall_ms_of
from p2psync.core.query import QueryReply
from p2psync.core.reasons import Blame, Drop, Reason, Source
from p2psync.core.store import Store, StoreError
from p2psync.node.observer import Observer

log = logging.getLogger(__name__)


class Effects(Protocol):
    """What carrying out actions needs from the network."""

    def send(self, peer: str, data: bytes) -> bool:
        """Queue bytes for one peer's sync topic; False if they cannot go."""
        ...

    def publish_live(self, data: bytes) -> bool:
        """Queue bytes for the live topic; False if they cannot go."""
        ...

    def penalize(self, peer: str, reason: str) -> None:
        """The peer delivered something only a broken or hostile node sends."""
        ...

    def round_finished(self, peer: str, ok: bool, seconds: float) -> None: ...

    def query_received(self, peer: str, query_id: int) -> None: ...

    def query_answered(self, peer: str, reply: QueryReply) -> None: ...

    def restart_session(self, peer: str) -> None:
        """Close the peer's session; the network opens a new one (and if our
        pubsub stream to the peer is gone, opens it again or reconnects)."""
        ...


class Offline:
    """Effects with no network: nothing can be sent (counted as dropped)."""

    def send(self, peer: str, data: bytes) -> bool:
        return False

    def publish_live(self, data: bytes) -> bool:
        return False

    def penalize(self, peer: str, reason: str) -> None:
        pass

    def round_finished(self, peer: str, ok: bool, seconds: float) -> None:
        pass

    def query_received(self, peer: str, query_id: int) -> None:
        pass

    def query_answered(self, peer: str, reply: QueryReply) -> None:
        pass

    def restart_session(self, peer: str) -> None:
        pass


class Executor:
    def __init__(
        self,
        engine: SyncEngine,
        store: Store,
        observer: Observer,
        effects: Effects | None = None,
        *,
        on_commit: Callable[[], None] | None = None,
        on_round_finished: Callable[[RoundFinished], None] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.observer = observer
        self.effects: Effects = effects or Offline()
        self.store_error: str | None = None  # the last refused commit of received entries
        self._version_warned: set[str | None] = set()
        self._on_commit = on_commit
        self._on_round_finished = on_round_finished
        self.refresh_entry_gauges()

    def run(self, actions: Iterable[Action], now: Now) -> None:
        """Carry out `actions` in order.

        Raises StoreError if a local (Source.LOCAL) Persist could not be
        written; the engine has then forgotten it, and the user must be told.
        """
        for action in actions:
            if isinstance(action, Persist):
                self.settle(action, self.commit(action), now)
            elif isinstance(action, RecordFork):
                self._record_fork(action)
            else:
                self._run_effect(action)

    def run_grouped(self, batches: Sequence[list[Action]], now: Now) -> None:
        """Carry out what several received messages caused, with ONE commit.

        Entries that arrive together (a backlog of live entries) then cost one
        transaction, not one each. Each message's Persist comes first in its
        list (the engine places it there); those are committed as one Persist,
        and then every message's other actions run in order, so nothing is
        told of an entry before it is stored. Lists of any other shape, and
        our own entries (which the user waits for), run one by one.
        """
        firsts = [b[0] for b in batches if b and isinstance(b[0], Persist)]
        groupable = len(firsts) > 1 and all(
            p.source is firsts[0].source and p.source is not Source.LOCAL for p in firsts
        )
        if groupable:
            groupable = not any(isinstance(a, Persist) for b in batches for a in b[1:])
        if not groupable:
            for actions in batches:
                self.run(actions, now)
            return
        persist = merge_persists(firsts)
        self.settle(persist, self.commit(persist), now)
        for actions in batches:
            self.run(actions[1:] if actions and isinstance(actions[0], Persist) else actions, now)

    def _record_fork(self, action: RecordFork) -> None:
        proof = action.proof
        try:
            self.store.record_fork(proof)
        except StoreError as exc:
            # Peers hand the proof over again at the next reconciliation.
            self.observer.dropped(Drop.STORE_FAILED)
            log.error("could not store the fork proof of %s: %s", proof.origin.hex()[:16], exc)
            return
        if action.new_origin:
            self.observer.fork_detected()
            log.warning(
                "origin %s signed two different entries for seq %d: it is forked; its entries"
                " from that seq on are hidden on every node that holds the proof",
                proof.origin.hex(), proof.seq,
            )  # fmt: skip
        if self._on_commit is not None:
            self._on_commit()

    def _run_effect(self, action: Action) -> None:
        effects, observer = self.effects, self.observer
        if isinstance(action, SendTo):
            if not effects.send(action.peer, action.data):
                observer.dropped(Drop.SEND_FAILED)
        elif isinstance(action, PublishLive):
            if not effects.publish_live(action.data):
                # Nobody to tell, or the queue was full: anti-entropy repairs it.
                observer.dropped(Drop.LIVE_NOT_SENT)
        elif isinstance(action, Rejected):
            log.info("rejected %d entries from %s: %s", action.count, action.peer, action.detail)
            observer.entries_rejected(action.reason, action.count)
            if action.peer is not None and action.blame is Blame.DELIVERER:
                effects.penalize(action.peer, action.reason)
        elif isinstance(action, Dropped):
            if action.reason is Reason.VERSION and action.peer not in self._version_warned:
                self._version_warned.add(action.peer)
                log.warning(
                    "peer %s speaks another protocol version: %s", action.peer, action.detail
                )
            log.info("dropped a message from %s: %s", action.peer, action.detail)
            observer.dropped(action.reason)
            if action.peer is not None and action.blame is Blame.DELIVERER:
                effects.penalize(action.peer, action.reason)
        elif isinstance(action, RoundFinished):
            observer.sync_round(action.ok, action.seconds)
            effects.round_finished(action.peer, action.ok, action.seconds)
            if self._on_round_finished is not None:
                self._on_round_finished(action)
        elif isinstance(action, QueryReceived):
            effects.query_received(action.peer, action.query_id)
        elif isinstance(action, QueryAnswered):
            effects.query_answered(action.peer, action.reply)
        elif isinstance(action, BudgetExceeded):
            log.info("peer %s is past its %s budget", action.peer, action.kind)
            observer.budget_exceeded(action.kind)
            if action.penalize:
                effects.penalize(action.peer, f"budget_{action.kind}")
        elif isinstance(action, RestartSession):
            log.warning("sync with %s makes no progress; restarting its session", action.peer)
            effects.restart_session(action.peer)

    def commit(self, persist: Persist) -> StoreError | None:
        """Write one Persist; any failure comes back as a StoreError, never raised.

        Touches only the store, so the node may call it from a worker thread.
        Whatever a peer's bytes provoke in the store must not take the daemon
        down: an unexpected error is refused like any failed write.
        """
        try:
            self.store.commit(persist)
        except StoreError as exc:
            return exc
        except Exception as exc:
            log.exception("unexpected error storing %d entries", len(persist.entries))
            return StoreError(f"unexpected store error: {exc!r}")
        return None

    def settle(self, persist: Persist, error: StoreError | None, now: Now) -> None:
        """Account for a commit's outcome (in the driver's thread)."""
        if error is None:
            self._persisted(persist, now)
            return
        self.run(self.engine.persist_failed(persist), now)
        self.observer.dropped(Drop.STORE_FAILED)
        log.error("%s", error)
        if persist.source is Source.LOCAL:
            raise error
        # Received entries: anti-entropy brings them again once the store recovers.
        self.store_error = str(error)

    def _persisted(self, persist: Persist, now: Now) -> None:
        self.store_error = None
        count = len(persist.entries)
        observer = self.observer
        observer.entries_applied(count)
        if persist.source is Source.LIVE:
            observer.live_ops_received(count)
        elif persist.source is Source.BACKFILL:
            observer.backfill_entries_received(count)
        if persist.source is not Source.LOCAL:
            for accepted in persist.entries:
                latency_ms = now.wall_ms - wall_ms_of(accepted.entry.hlc)
                observer.observe_apply_latency(max(0.0, latency_ms / 1000))
        self.refresh_entry_gauges()
        if self._on_commit is not None:
            self._on_commit()

    def refresh_entry_gauges(self) -> None:
        own = self.engine.own_entry_count()
        self.observer.set_entries(own, self.engine.entry_count() - own)


def merge_persists(persists: Sequence[Persist]) -> Persist:
    """One Persist writing what all of `persists` (of one source, in order) write.

    A later bitmap of an origin holds an earlier one (the engine only adds
    between them); stores derive what they write from the entries anyway.
    """
    progress: dict[bytes, BitMap64] = {}
    for persist in persists:
        progress.update(persist.progress)
    entries = tuple(a for persist in persists for a in persist.entries)
    return Persist(entries, progress, persists[0].source, persists[0].peer)
