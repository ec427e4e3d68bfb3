"""The sans-I/O sync engine: events in, actions out.

One engine per node. Like h11's `Connection`, it does no I/O and reads no
clock: the driver (the trio node, the simulator, the tests) hands it events
with the time they happened (`Now`) and carries out the actions each call
returns (see `p2psync.core.actions`), in order, before the next event.
Every entry point returns `list[Action]`.

Anti-entropy round, started by either side (on connect, every
`sync_interval`, on a gap): A reconciles its items with B's by fingerprinted
ranges (RECON, see reconcile.py), then WANTs the origins where B holds more;
B streams BATCHes of what A lacks, at most `window` unacknowledged at a time,
the final one flagged `last`; A acks each batch after persisting it. If A
asked for a reply, B runs its own round back unless one is under way. A round
that stalls for `round_timeout` fails, and the next one repairs the loss.
Entries two nodes hold differently for one (origin, seq) surface as a fork
proof, which every node checks, keeps and passes on (forks.py).

The engine reads entries it already holds through `LogReader`; it never
writes: the driver does, through `Persist`, so log, recipes and progress
change together.
"""

from __future__ import annotations

from collections.abc import Sequence

from nacl.signing import SigningKey

from p2psync.core import protocol
from p2psync.core.actions import (
    Action,
    BudgetExceeded,
    Dropped,
    Persist,
    QueryAnswered,
    QueryReceived,
    RestartSession,
    RoundFinished,
    SendTo,
)
from p2psync.core.budgets import BudgetKind
from p2psync.core.entry import entry_link
from p2psync.core.errors import RemoteError
from p2psync.core.forks import ForkProof, decode_fork_proof, encode_side
from p2psync.core.hlc import Now
from p2psync.core.items import MAX_BOUND, MIN_BOUND
from p2psync.core.ledger import EngineConfig, Ledger
from p2psync.core.progress import Progress
from p2psync.core.query import Query, QueryReply
from p2psync.core.reasons import MessageKind, Reason, Source
from p2psync.core.reconcile import (
    add_lacking,
    answer,
    follow_up,
    pack_claims,
    pack_ranges,
    whole_range,
)
from p2psync.core.rounds import (
    Incoming,
    Outgoing,
    PeerState,
    claims_of,
    most_known,
    note_acked,
    periodic_interval,
    pump_batches,
    round_due,
)
from p2psync.core.store import LogReader

__all__ = ["EngineConfig", "SyncEngine"]

STALLED_ROUNDS = 3  # failed rounds in a row after which a session is restarted

_IN_SYNC = protocol.DoneRange(MIN_BOUND, MAX_BOUND)  # the whole answer of two nodes in sync


class SyncEngine(Ledger):
    def __init__(
        self,
        signing_key: SigningKey,
        progress: Progress,
        reader: LogReader,
        now: Now,
        config: EngineConfig | None = None,
        *,
        last_hlc: int = 0,
        forks: Sequence[ForkProof] = (),
    ) -> None:
        super().__init__(signing_key, progress, reader, now, config, last_hlc=last_hlc, forks=forks)
        self._peers: dict[str, PeerState] = {}
        self._first_round = (now.wall_ms // 1000) % (1 << 31)
        self._round_counter = 0  # one sequence for all peers: a reconnect never reuses one

    def peer_claims(self) -> dict[str, dict[bytes, int]]:
        """What each connected peer holds as far as we know (`rounds.claims_of`)."""
        return claims_of(self._peers, self.held_counts())

    def known_counts(self) -> dict[bytes, int]:
        """Per origin, the most we or any connected peer is known to hold."""
        return most_known(self._peers, self.held_counts())

    def round_active(self, peer: str) -> bool:
        state = self._peers.get(peer)
        return bool(state and (state.incoming or (state.outgoing and not state.outgoing.finished)))

    def expects_batches(self, peer: str) -> bool:
        """Whether a round of ours with `peer` is under way (it sends us BATCHes)."""
        return bool((state := self._peers.get(peer)) and state.incoming)

    def connected_peers(self) -> list[str]:
        return [peer for peer, state in self._peers.items() if state.connected]

    # ------------------------------------------------------------ peers and time

    def peer_connected(self, peer: str, now: Now) -> list[Action]:
        state = self._peers.setdefault(peer, PeerState())
        state.connected = True
        return self._start_round(peer, state, now, reply_wanted=True)

    def peer_disconnected(self, peer: str, now: Now) -> list[Action]:
        """Forget the peer: its rounds, claims and timers; a reconnect starts afresh."""
        state = self._peers.pop(peer, None)
        if state is None:
            return []
        state.connected = False
        if state.incoming is not None:
            return [self._finish_incoming(peer, state, now, ok=False, detail="peer disconnected")]
        return []

    def request_sync(self, peer: str, now: Now) -> list[Action]:
        state = self._peers.get(peer)
        if state is None or not state.connected:
            return []
        if state.incoming is not None:
            state.resync_wanted = True
            return []
        return self._start_round(peer, state, now, reply_wanted=True)

    def tick(self, now: Now) -> list[Action]:
        """Time passed: fail stalled rounds, start periodic ones, record a waiting fork."""
        actions = self._due_rewrites(now)
        timeout = self.config.round_timeout
        connected = sum(1 for state in self._peers.values() if state.connected)
        interval = periodic_interval(self.config.sync_interval, connected)
        for peer, state in self._peers.items():
            if not state.connected:
                continue
            incoming = state.incoming
            if incoming is not None and now.monotonic - incoming.last_activity > timeout:
                actions.append(
                    self._finish_incoming(peer, state, now, ok=False, detail="round timed out")
                )
                state.resync_wanted = True
                state.failed_rounds += 1
                if state.failed_rounds >= STALLED_ROUNDS:
                    # Connected, yet nothing moves: a new session, not another round.
                    state.failed_rounds = 0
                    detail = f"{STALLED_ROUNDS} rounds in a row made no progress"
                    actions.append(Dropped(peer, Reason.STALLED, detail))
                    actions.append(RestartSession(peer))
                    continue
            out = state.outgoing
            if out is not None and not out.finished and now.monotonic - out.last_activity > timeout:
                # Our batches or their acks were lost; their next round repairs it.
                actions.append(Dropped(peer, Reason.ACK_TIMEOUT, f"round {out.round} stalled"))
                state.outgoing = None
            if round_due(state, now.monotonic, interval):
                actions.extend(self._start_round(peer, state, now, reply_wanted=True))
        return actions

    # ------------------------------------------------------------ inbound messages

    def message_received(self, peer: str, data: bytes, now: Now) -> list[Action]:
        """A message from `peer` on our pair's sync topic."""
        try:
            message = protocol.decode(data)
        except RemoteError as exc:
            return [Dropped(peer, exc.reason, str(exc))]
        state = self._peers.get(peer)
        if state is None:  # no session (it ended while this was in flight): no state for it
            return [Dropped(peer, Reason.UNEXPECTED, "sync message from a peer with no session")]
        if isinstance(message, protocol.Recon):
            if message.flags & protocol.FROM_RESPONDER:
                return self._on_answer(peer, state, message, now)
            if not self._budgets.spend(peer, BudgetKind.RECON, now.monotonic):
                return _over_budget(peer, BudgetKind.RECON, "reconciliation question")
            return self._on_question(peer, state, message, now)
        if isinstance(message, protocol.Want):
            return self._on_want(peer, state, message, now)
        if isinstance(message, protocol.ForkProofMsg):
            return self._on_fork_proof(peer, message, now)
        if isinstance(message, protocol.Batch):
            return self._on_batch(peer, state, message, now)
        if isinstance(message, protocol.Ack):
            return self._on_ack(peer, state, message, now)
        if isinstance(message, Query):
            if not self._budgets.spend(peer, BudgetKind.QUERY, now.monotonic):
                return _over_budget(peer, BudgetKind.QUERY, "query")
            return [QueryReceived(peer, message.query_id)]
        if isinstance(message, QueryReply):
            return [QueryAnswered(peer, message)]
        return [Dropped(peer, Reason.UNEXPECTED, "live entry sent on a sync topic")]

    def live_received(
        self, peer: str, data: bytes, now: Now, *, publisher: str | None = None
    ) -> list[Action]:
        """A message on the live topic, forwarded to us by `peer`, published into
        the mesh by `publisher` (gossipsub's signed `from`; `peer` if not given).

        Budgets are the publisher's: an honest relay forwards whatever passed
        its validator, so a flood must not cost the relay its standing.
        """
        publisher = peer if publisher is None else publisher
        try:
            message = protocol.decode(data)
        except RemoteError as exc:
            return [Dropped(peer, exc.reason, str(exc))]
        if not isinstance(message, protocol.Live):
            return [Dropped(peer, Reason.UNEXPECTED, "non-live message on the live topic")]
        # Held entries cost nothing: anyone can replay old LIVEs to spend a publisher's budget.
        new = sum(not self._progress.has(*entry_link(raw)[:2]) for raw in message.entries)
        if new and not self._budgets.spend(publisher, BudgetKind.LIVE, now.monotonic, new):
            return _over_budget(publisher, BudgetKind.LIVE, "live entry")
        actions = self._accept(
            message.entries, peer, now, source=Source.LIVE, verify_each=True, budget_of=publisher
        )
        if not actions or not isinstance(actions[0], Persist):
            return actions  # refused (or held already): a forgery starts no round
        first_new = min((a.entry for a in actions[0].entries), key=lambda e: e.seq)
        if (forwarder := self._peers.get(peer)) is not None:
            forwarder.live_at = now.monotonic  # a round checks for a lost tail (rounds.py)
        if first_new.seq > 0 and not self._progress.has(first_new.origin, first_new.seq - 1):
            # A gap: we missed earlier live entries. Ask the author if it is a
            # direct peer, else any direct peer (gossip relays across hops).
            if forwarder is not None and forwarder.connected:
                actions.extend(self.request_sync(peer, now))
            else:
                for other in self.connected_peers():
                    actions.extend(self.request_sync(other, now))
                    break
        return actions

    def _on_question(
        self, peer: str, state: PeerState, message: protocol.Recon, now: Now
    ) -> list[Action]:
        out = state.outgoing
        new_round = bool(message.flags & protocol.ROUND_START)
        if out is None or new_round or out.round != message.round:
            out = state.outgoing = Outgoing(message.round)  # replaces an earlier one
        out.last_activity = now.monotonic
        flags = protocol.FROM_RESPONDER
        answers = answer(self._index, message.ranges)
        if answers == [_IN_SYNC]:
            # Everything matches, and they know it from this answer: nothing to stream.
            out.want_final = out.finished = True
        actions: list[Action] = [
            _send(peer, protocol.Recon(message.round, flags, group), MessageKind.RECON)
            for group in pack_ranges(answers)
        ]
        if new_round and message.flags & protocol.REPLY_WANTED and state.incoming is None:
            actions.extend(self._start_round(peer, state, now, reply_wanted=False))
        return actions

    def _on_answer(
        self, peer: str, state: PeerState, message: protocol.Recon, now: Now
    ) -> list[Action]:
        incoming = state.incoming
        if incoming is None or incoming.round != message.round or incoming.want_final_sent:
            return []  # an answer to an old round
        incoming.last_activity = now.monotonic
        if message.ranges == (_IN_SYNC,):
            state.differs.clear()  # they hold just what we do
            return self._complete_incoming(peer, state, now)
        self._note_holdings(state, message.ranges)
        questions, claims = follow_up(self._index, incoming.pending, message.ranges)
        actions: list[Action] = [
            _send(peer, protocol.Recon(message.round, 0, group), MessageKind.RECON)
            for group in pack_ranges(questions)
            if group
        ]
        final = not incoming.pending
        groups = pack_claims(claims)
        if final and not groups:
            groups = [()]
        for i, group in enumerate(groups):
            last = final and i == len(groups) - 1
            want = protocol.Want(message.round, last, group)
            actions.append(_send(peer, want, MessageKind.WANT))
        incoming.want_final_sent = final
        return actions

    def _note_holdings(self, state: PeerState, answers: Sequence[protocol.Range]) -> None:
        """Remember what the peer holds where it differs from us (`peer_claims`)."""
        for reply in answers:
            if isinstance(reply, protocol.ItemsRange):
                theirs = {item.origin: item.count() for item in reply.items}
                for ours in self._index.items(reply.lower, reply.upper):
                    theirs.setdefault(ours.origin, 0)  # an origin they hold none of
                state.differs.update(theirs)
            elif isinstance(reply, protocol.DoneRange) and state.differs:
                for origin in [o for o in state.differs if reply.lower <= o < reply.upper]:
                    del state.differs[origin]

    def _on_want(
        self, peer: str, state: PeerState, message: protocol.Want, now: Now
    ) -> list[Action]:
        out = state.outgoing
        if out is None or out.round != message.round or out.want_final:
            return []
        out.last_activity = now.monotonic
        actions: list[Action] = []
        forked = self.forked_origins()
        for origin in add_lacking(out.lacking, message.claims, self._progress, forked):
            proof = self._forks[origin]
            fork_message = _proof_message(proof)
            actions.append(_send(peer, fork_message, MessageKind.FORK_PROOF))
        out.want_final = message.final
        actions.extend(self._pump(peer, state))
        return actions

    def _on_fork_proof(self, peer: str, message: protocol.ForkProofMsg, now: Now) -> list[Action]:
        try:
            proof = decode_fork_proof(message.first, message.second, self._verify_keys)
        except RemoteError as exc:
            return [Dropped(peer, exc.reason, str(exc))]
        return self._learn_fork(proof, now, source=peer)

    def _learn_fork(self, proof: ForkProof, now: Now, *, source: str | None) -> list[Action]:
        """Hold a checked proof, and pass it to every peer but the one it came from."""
        before = self._forks.get(proof.origin)
        actions = super()._learn_fork(proof, now, source=source)
        if self._forks.get(proof.origin) is not before:  # news: the fork is new or lower
            # Reconcile again soon with everyone: if the fork starts lower than
            # this proof, the next round proves where.
            for state in self._peers.values():
                state.resync_wanted = state.connected
            message = _proof_message(proof)
            for other in self.connected_peers():
                if other != source:
                    actions.append(_send(other, message, MessageKind.FORK_PROOF))
        return actions

    def _on_batch(
        self, peer: str, state: PeerState, message: protocol.Batch, now: Now
    ) -> list[Action]:
        actions = self._accept(
            message.entries, peer, now, source=Source.BACKFILL, verify_each=False
        )
        ack = protocol.encode(protocol.Ack(message.round, message.batch_no))
        actions.append(SendTo(peer, ack, MessageKind.ACK))
        incoming = state.incoming
        if incoming is None or incoming.round != message.round:
            return actions  # a late batch of an old round: its entries still count
        incoming.last_activity = now.monotonic
        if message.batch_no in incoming.received_batches:
            return actions
        incoming.received_batches.add(message.batch_no)
        incoming.entries += len(message.entries)
        incoming.new_entries += sum(len(a.entries) for a in actions if isinstance(a, Persist))
        if message.last:
            incoming.total_batches = message.batch_no + 1
        total = incoming.total_batches
        if total is not None and all(n in incoming.received_batches for n in range(total)):
            actions.extend(self._complete_incoming(peer, state, now))
        return actions

    def _complete_incoming(self, peer: str, state: PeerState, now: Now) -> list[Action]:
        """Our round with `peer` ended well: start what it left wanted."""
        assert state.incoming is not None
        new_entries = state.incoming.new_entries
        state.failed_rounds = 0
        actions: list[Action] = [self._finish_incoming(peer, state, now, ok=True, detail="")]
        if state.resync_wanted:
            actions.extend(self._start_round(peer, state, now, reply_wanted=True))
        if new_entries:
            actions.extend(self._offer_to_others(peer, now))
        return actions

    def _offer_to_others(self, source: str, now: Now) -> list[Action]:
        """We just learnt entries from `source`: let our other peers know now.

        Our summary makes each of them answer with theirs, and then we stream
        what they lack, so news crosses a chain of nodes at sync speed rather
        than one `sync_interval` per hop. It stops by itself: a round that
        brings nothing new offers nothing further.
        """
        actions: list[Action] = []
        for other, state in self._peers.items():
            if other == source or not state.connected:
                continue
            if state.incoming is not None:
                state.resync_wanted = True
            else:
                actions.extend(self._start_round(other, state, now, reply_wanted=True))
        return actions

    def _on_ack(self, peer: str, state: PeerState, message: protocol.Ack, now: Now) -> list[Action]:
        out = state.outgoing
        if out is None or out.round != message.round:
            return []
        if message.batch_no in out.in_flight:
            out.in_flight.discard(message.batch_no)
            acked = out.sent_counts.pop(message.batch_no, {})
            note_acked(state.differs, acked, self._progress.count)
        out.last_activity = now.monotonic
        return self._pump(peer, state)

    # ------------------------------------------------------------ rounds

    def _start_round(
        self, peer: str, state: PeerState, now: Now, *, reply_wanted: bool
    ) -> list[Action]:
        # Round numbers start from the wall clock in each life of the engine, so a
        # restarted peer's rounds are not taken for its previous life's.
        self._round_counter = max(self._round_counter + 1, self._first_round)
        incoming = Incoming(self._round_counter, now.monotonic, now.monotonic)
        question = whole_range(self._index)
        incoming.pending.add(question.lower, question.upper)
        state.incoming = incoming
        state.last_round_started = now.monotonic
        state.resync_wanted = False
        flags = protocol.ROUND_START | (protocol.REPLY_WANTED if reply_wanted else 0)
        recon = protocol.Recon(self._round_counter, flags, (question,))
        return [_send(peer, recon, MessageKind.RECON)]

    def _finish_incoming(
        self, peer: str, state: PeerState, now: Now, *, ok: bool, detail: str
    ) -> RoundFinished:
        incoming = state.incoming
        assert incoming is not None
        state.incoming = None
        seconds = now.monotonic - incoming.started
        return RoundFinished(peer, ok, seconds, incoming.entries, detail)

    def _pump(self, peer: str, state: PeerState) -> list[Action]:
        """Send batches of what the peer lacks while the window has room."""
        if state.outgoing is None:
            return []
        config = self.config
        batches = pump_batches(
            state.outgoing, self._reader, config.window, config.batch_size, config.max_batch_bytes
        )
        return [_send(peer, batch, MessageKind.BATCH) for batch in batches]


def _send(peer: str, message: protocol.Message, kind: MessageKind) -> SendTo:
    return SendTo(peer, protocol.encode(message), kind)


def _proof_message(proof: ForkProof) -> protocol.ForkProofMsg:
    return protocol.ForkProofMsg(encode_side(proof.first), encode_side(proof.second))


def _over_budget(peer: str, kind: BudgetKind, what: str) -> list[Action]:
    detail = f"{what} past the peer's {kind} budget"
    return [Dropped(peer, Reason.BUDGET, detail), BudgetExceeded(peer, kind)]
