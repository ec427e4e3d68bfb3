"""The sans-I/O sync engine: events in, actions out.

One engine per node. Like h11's `Connection`, it does no I/O and reads no
clock: the driver (the trio node, the simulator, the tests) hands it events
with the time they happened (`Now`) and carries out the actions each call
returns (see `p2psync.core.actions`), in order, before the next event.
Every entry point returns `list[Action]`.

Anti-entropy round, started by either side (on connect, every
`sync_interval`, on a gap): A sends SUMMARY(r) of everything it holds; B
streams BATCHes of what A lacks, at most `window` unacknowledged at a time,
the final one flagged `last`; A acks each batch after persisting it. If A
asked for a reply, B runs its own round back unless one is under way. A round
that stalls for `round_timeout` fails, and the next one repairs the loss.

The engine reads entries it already holds through `LogReader`; it never
writes: the driver does, through `Persist`, so log, recipes and progress
change together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nacl.signing import SigningKey, VerifyKey
from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.acceptance import check_entries
from p2psync.core.actions import (
    Accepted,
    Action,
    Dropped,
    Persist,
    PublishLive,
    QueryAnswered,
    QueryReceived,
    RoundFinished,
    SendTo,
)
from p2psync.core.entry import ZERO_HASH, decode_entry, sign_entry
from p2psync.core.errors import LocalError, RemoteError
from p2psync.core.hlc import MAX_FORWARD_MS, HybridClock, Now, pack
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, encode_op
from p2psync.core.progress import Progress, decode_summary, encode_summary
from p2psync.core.query import Query, QueryReply
from p2psync.core.reasons import MessageKind, Reason, Source
from p2psync.core.rounds import Incoming, Outgoing, PeerState, take_batch
from p2psync.core.store import LogReader

# ---------------------------------------------------------------- config and per-peer state


@dataclass(frozen=True, slots=True)
class EngineConfig:
    batch_size: int = 1000  # ~280 KB messages: few commits, well under 1 MiB
    max_batch_bytes: int = 900 * 1024
    window: int = 4  # unacknowledged batches in flight per peer
    sync_interval: float = 30.0
    round_timeout: float = 15.0  # a round with no progress for this long fails
    # A closed network accepts entries of these origins only (ours always); None: any.
    allowed_origins: frozenset[bytes] | None = None


# ---------------------------------------------------------------- the engine


class SyncEngine:
    def __init__(
        self,
        signing_key: SigningKey,
        progress: Progress,
        reader: LogReader,
        now: Now,
        config: EngineConfig | None = None,
        *,
        last_hlc: int = 0,
    ) -> None:
        self._key = signing_key
        self.me = bytes(signing_key.verify_key)
        self._progress = progress
        self._reader = reader
        self.config = config or EngineConfig()
        allowed = self.config.allowed_origins
        self._allowed_origins = None if allowed is None else allowed | {self.me}
        # The store's greatest hlc may come from a peer with a wild clock; never
        # start further ahead of our own wall time than observe() would follow.
        # Our own head entry, though, is ours and was capped when made: never
        # start below it, or a wall clock set back would lose our next edits.
        ceiling = pack(now.wall_ms + MAX_FORWARD_MS, 0)
        self._head_hash, own_head_hlc = self._own_head()
        self._clock = HybridClock(max(min(last_hlc, ceiling), own_head_hlc))
        self._peers: dict[str, PeerState] = {}
        self._verify_keys: dict[bytes, VerifyKey] = {}

    # ------------------------------------------------------------ counters

    def entry_count(self) -> int:
        """Entries held, all origins."""
        return self._progress.total()

    def own_entry_count(self) -> int:
        return self._progress.count(self.me)

    def next_own_seq(self) -> int:
        """The seq the next local op will get (create ops derive their recipe id from it)."""
        return self._progress.next_seq(self.me)

    def held_count(self, origin: bytes) -> int:
        return self._progress.count(origin)

    def holds(self, origin: bytes, seq: int) -> bool:
        return self._progress.has(origin, seq)

    def held_counts(self) -> dict[bytes, int]:
        """Entries held per origin, for the origins we hold any of."""
        return {
            origin: count
            for origin in self._progress.origins()
            if (count := self._progress.count(origin))
        }

    def last_hlc(self) -> int:
        return self._clock.last

    def peer_claims(self) -> dict[str, dict[bytes, int]]:
        """What each peer last told us it holds, as counts per origin."""
        return {
            peer: {origin: claim.count() for origin, claim in state.claim.items()}
            for peer, state in self._peers.items()
        }

    def round_active(self, peer: str) -> bool:
        state = self._peers.get(peer)
        return bool(state and (state.incoming or (state.outgoing and not state.outgoing.finished)))

    def connected_peers(self) -> list[str]:
        return [peer for peer, state in self._peers.items() if state.connected]

    # ------------------------------------------------------------ local writes

    def append_local(self, now: Now, ops: Sequence[Op], *, publish: bool = True) -> list[Action]:
        """Sign `ops` as the next entries of our own log, persisted in ONE Persist.

        A create op's recipe id must be the one its seq gives
        (`make_recipe_id(me, next_own_seq() + i)`). Every op is checked and
        encoded before anything changes, so a LocalError leaves no trace.
        """
        first_seq = self.next_own_seq()
        encoded = []
        for i, op in enumerate(ops):
            if op.kind == "create" and op.recipe_id != make_recipe_id(self.me, first_seq + i):
                raise LocalError(f"create op {i} names a recipe id its seq does not give")
            encoded.append(encode_op(op))
        if not ops:
            return []
        accepted: list[Accepted] = []
        live: list[Action] = []
        head = self._head_hash
        for i, (op, payload) in enumerate(zip(ops, encoded, strict=True)):
            hlc = self._clock.tick(now.wall_ms)
            entry = sign_entry(self._key, first_seq + i, head, hlc, payload)
            head = entry.hash()
            accepted.append(Accepted(entry, op, head))
            if publish:
                live.append(PublishLive(protocol.encode(protocol.Live(entry.raw))))
        self._head_hash = head
        self._progress.add(self.me, [a.entry.seq for a in accepted])
        held = BitMap64(self._progress.held(self.me))
        return [Persist(tuple(accepted), {self.me: held}, Source.LOCAL, None), *live]

    def persist_failed(self, persist: Persist) -> list[Action]:
        """The driver could not write `persist`: forget what it claimed.

        Without this, a later successful commit would store progress bitmaps
        claiming entries that never reached the log.
        """
        for accepted in persist.entries:
            entry = accepted.entry
            held = self._progress.get(entry.origin)
            if held is not None:
                held.discard(entry.seq)
        own = [a.entry for a in persist.entries if a.entry.origin == self.me]
        if own:
            first = min(own, key=lambda e: e.seq)
            if self.next_own_seq() <= first.seq:
                self._head_hash = first.prev
        return []

    # ------------------------------------------------------------ peers and time

    def peer_connected(self, peer: str, now: Now) -> list[Action]:
        state = self._peers.setdefault(peer, PeerState())
        state.connected = True
        return self._start_round(peer, state, now, reply_wanted=True)

    def peer_disconnected(self, peer: str, now: Now) -> list[Action]:
        state = self._peers.get(peer)
        if state is None:
            return []
        state.connected = False
        actions: list[Action] = []
        if state.incoming is not None:
            actions.append(
                self._finish_incoming(peer, state, now, ok=False, detail="peer disconnected")
            )
        state.outgoing = None
        state.resync_wanted = False
        return actions

    def request_sync(self, peer: str, now: Now) -> list[Action]:
        state = self._peers.get(peer)
        if state is None or not state.connected:
            return []
        if state.incoming is not None:
            state.resync_wanted = True
            return []
        return self._start_round(peer, state, now, reply_wanted=True)

    def tick(self, now: Now) -> list[Action]:
        """Time passed: fail stalled rounds, start periodic ones."""
        actions: list[Action] = []
        timeout = self.config.round_timeout
        for peer, state in self._peers.items():
            if not state.connected:
                continue
            incoming = state.incoming
            if incoming is not None and now.monotonic - incoming.last_activity > timeout:
                actions.append(
                    self._finish_incoming(peer, state, now, ok=False, detail="round timed out")
                )
                state.resync_wanted = True
            out = state.outgoing
            if out is not None and not out.finished and now.monotonic - out.last_activity > timeout:
                # Our batches or their acks were lost; their next round repairs it.
                actions.append(Dropped(peer, Reason.ACK_TIMEOUT, f"round {out.round} stalled"))
                state.outgoing = None
            if state.incoming is None and (
                state.resync_wanted
                or now.monotonic - state.last_round_started >= self.config.sync_interval
            ):
                actions.extend(self._start_round(peer, state, now, reply_wanted=True))
        return actions

    # ------------------------------------------------------------ inbound messages

    def message_received(self, peer: str, data: bytes, now: Now) -> list[Action]:
        """A message from `peer` on our pair's sync topic."""
        try:
            message = protocol.decode(data)
        except RemoteError as exc:
            return [Dropped(peer, exc.reason, str(exc))]
        state = self._peers.setdefault(peer, PeerState())
        if isinstance(message, protocol.SummaryMsg):
            return self._on_summary(peer, state, message, now)
        if isinstance(message, protocol.Batch):
            return self._on_batch(peer, state, message, now)
        if isinstance(message, protocol.Ack):
            return self._on_ack(peer, state, message, now)
        if isinstance(message, Query):
            return [QueryReceived(peer, message.query_id)]
        if isinstance(message, QueryReply):
            return [QueryAnswered(peer, message)]
        return [Dropped(peer, Reason.UNEXPECTED, "live entry sent on a sync topic")]

    def live_received(self, peer: str, data: bytes, now: Now) -> list[Action]:
        """A message on the live topic, forwarded to us by `peer`."""
        try:
            message = protocol.decode(data)
        except RemoteError as exc:
            return [Dropped(peer, exc.reason, str(exc))]
        if not isinstance(message, protocol.Live):
            return [Dropped(peer, Reason.UNEXPECTED, "non-live message on the live topic")]
        actions = self._accept([message.entry], peer, now, source=Source.LIVE, verify_each=True)
        try:
            entry = decode_entry(message.entry)
        except RemoteError:
            return actions
        if entry.seq > 0 and not self._progress.has(entry.origin, entry.seq - 1):
            # A gap: we missed earlier live entries. Ask the author if it is a
            # direct peer, else any direct peer (gossip relays across hops).
            state = self._peers.get(peer)
            if state is not None and state.connected:
                actions.extend(self.request_sync(peer, now))
            else:
                for other in self.connected_peers():
                    actions.extend(self.request_sync(other, now))
                    break
        return actions

    def _on_summary(
        self, peer: str, state: PeerState, message: protocol.SummaryMsg, now: Now
    ) -> list[Action]:
        try:
            claim = decode_summary(message.summary)
        except RemoteError as exc:
            return [Dropped(peer, exc.reason, str(exc))]
        state.claim = claim
        lacking: dict[bytes, BitMap64] = {}
        for origin in list(self._progress.origins()):
            held = self._progress.held(origin)
            if not held:
                continue
            their = claim.get(origin)
            missing = their.missing_from(held) if their is not None else BitMap64(held)
            if missing:
                lacking[origin] = missing
        state.outgoing = Outgoing(message.round, lacking, last_activity=now.monotonic)
        actions = self._pump(peer, state)
        if message.reply_wanted and state.incoming is None:
            actions.extend(self._start_round(peer, state, now, reply_wanted=False))
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
            new_entries = incoming.new_entries
            actions.append(self._finish_incoming(peer, state, now, ok=True, detail=""))
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
        out.in_flight.discard(message.batch_no)
        out.last_activity = now.monotonic
        return self._pump(peer, state)

    # ------------------------------------------------------------ rounds

    def _start_round(
        self, peer: str, state: PeerState, now: Now, *, reply_wanted: bool
    ) -> list[Action]:
        state.round_counter += 1
        state.incoming = Incoming(state.round_counter, now.monotonic, now.monotonic)
        state.last_round_started = now.monotonic
        state.resync_wanted = False
        summary = protocol.SummaryMsg(
            state.round_counter, reply_wanted, encode_summary(self._progress)
        )
        return [SendTo(peer, protocol.encode(summary), MessageKind.SUMMARY)]

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
        out = state.outgoing
        actions: list[Action] = []
        if out is None or out.finished:
            return actions
        while len(out.in_flight) < self.config.window and not out.finished:
            raws = take_batch(
                out.lacking, self._reader, self.config.batch_size, self.config.max_batch_bytes
            )
            last = not out.lacking
            batch_no = out.next_batch_no
            out.next_batch_no += 1
            out.in_flight.add(batch_no)
            out.finished = last
            message = protocol.Batch(out.round, batch_no, last, tuple(raws))
            actions.append(SendTo(peer, protocol.encode(message), MessageKind.BATCH))
        return actions

    # ------------------------------------------------------------ validation

    def _accept(
        self, raws: Sequence[bytes], peer: str, now: Now, *, source: Source, verify_each: bool
    ) -> list[Action]:
        """Check entries from a peer; the good new ones become one Persist, placed first."""
        verdict = check_entries(
            raws,
            peer,
            progress=self._progress,
            reader=self._reader,
            verify_keys=self._verify_keys,
            allowed_origins=self._allowed_origins,
            verify_each=verify_each,
        )
        actions: list[Action] = []
        if verdict.accepted:
            next_own = self.next_own_seq()
            new_by_origin: dict[bytes, list[int]] = {}
            for accepted in verdict.accepted:
                entry = accepted.entry
                new_by_origin.setdefault(entry.origin, []).append(entry.seq)
                self._clock.observe(entry.hlc, now.wall_ms)
                if entry.origin == self.me and entry.seq >= next_own:
                    # Our own entries coming back (restored from a peer after data loss).
                    next_own = entry.seq + 1
                    self._head_hash = accepted.entry_hash()
            for origin, seqs in new_by_origin.items():
                self._progress.add(origin, seqs)
            progress = {origin: BitMap64(self._progress.held(origin)) for origin in new_by_origin}
            actions.append(Persist(tuple(verdict.accepted), progress, source, peer))
        actions.extend(verdict.rejected)
        return actions

    def _own_head(self) -> tuple[bytes, int]:
        """Hash and hlc of the last entry of our own log (zero hash, 0 if none)."""
        seq = self.next_own_seq() - 1
        if seq < 0:
            return ZERO_HASH, 0
        raw = self._reader.read_raw(self.me, [seq]).get(seq)
        if raw is None:
            raise LocalError(f"our own log entry {seq} is missing from the store")
        head = decode_entry(raw)
        return head.hash(), head.hlc
