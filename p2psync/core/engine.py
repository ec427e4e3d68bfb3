"""The sans-I/O sync engine: events in, actions out.

One engine per node. The driver (the trio daemon, or the test simulator)
feeds it events (`peer_connected`, `message_received`, `live_received`,
`tick`, `append_local`) and carries out the actions each call returns, in
order, before feeding the next event:

- `Persist`: write these entries and progress bitmaps in ONE transaction;
- `SendTo`: send bytes to one peer on the pair's sync topic;
- `PublishLive`: broadcast bytes on the live topic;
- `Rejected` / `Dropped`: count (and maybe score down the peer);
- `RoundFinished`: one anti-entropy round with a peer ended, ok or not.

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

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from nacl.signing import SigningKey, VerifyKey
from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.entry import (
    ZERO_HASH,
    Entry,
    decode_entry,
    entry_hash,
    sign_entry,
    verify_signature,
)
from p2psync.core.errors import RemoteError
from p2psync.core.hlc import MAX_FORWARD_MS, HybridClock, pack
from p2psync.core.ops import Op, decode_op, encode_op
from p2psync.core.progress import Progress, Summary, decode_summary, encode_summary
from p2psync.core.recipes import is_by_author

# ---------------------------------------------------------------- ports


class LogReader(Protocol):
    """Read access to the entries this node holds (the store implements it)."""

    def entry_links(self, origin: bytes, seqs: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
        """{seq: (hash, prev)} for those of `seqs` that are held."""
        ...

    def read_raw(self, origin: bytes, seqs: Iterable[int]) -> list[bytes]:
        """Raw entry bytes for `seqs` (all held), in the order given."""
        ...


class TimeSource(Protocol):
    def monotonic(self) -> float: ...

    def wall_ms(self) -> int: ...


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Accepted:
    entry: Entry
    op: Op | None  # None: kept in the log (it is validly signed) but changes no recipe
    hash: bytes = b""  # entry_hash(entry.raw) when already computed; the store reuses it

    def entry_hash(self) -> bytes:
        return self.hash or entry_hash(self.entry.raw)


@dataclass(frozen=True, slots=True)
class Persist:
    entries: tuple[Accepted, ...]
    progress: dict[bytes, BitMap64]  # full held bitmap of every origin touched
    source: str  # "local" | "live" | "backfill"
    peer: str | None


@dataclass(frozen=True, slots=True)
class SendTo:
    peer: str
    data: bytes
    kind: str  # message kind, for metrics


@dataclass(frozen=True, slots=True)
class PublishLive:
    data: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    peer: str | None
    reason: str
    count: int
    detail: str


@dataclass(frozen=True, slots=True)
class Dropped:
    peer: str | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class RoundFinished:
    peer: str
    ok: bool
    seconds: float
    entries_received: int
    detail: str


@dataclass(frozen=True, slots=True)
class QueryReceived:
    """A peer asked for our published recipes; the driver answers it."""

    peer: str
    query_id: int


@dataclass(frozen=True, slots=True)
class QueryAnswered:
    peer: str
    query_id: int
    recipes: list[dict[str, object]]


Action = (
    Persist
    | SendTo
    | PublishLive
    | Rejected
    | Dropped
    | RoundFinished
    | QueryReceived
    | QueryAnswered
)


# ---------------------------------------------------------------- config and per-peer state


@dataclass(frozen=True, slots=True)
class EngineConfig:
    batch_size: int = 1000  # ~280 KB messages: few commits, well under 1 MiB
    max_batch_bytes: int = 900 * 1024
    window: int = 4  # unacknowledged batches in flight per peer
    sync_interval: float = 30.0
    round_timeout: float = 15.0  # a round with no progress for this long fails


@dataclass(slots=True)
class _Incoming:
    """Our round with a peer: we sent a summary, they stream what we lack."""

    round: int
    started: float
    last_activity: float
    received_batches: set[int] = field(default_factory=set)
    total_batches: int | None = None
    entries: int = 0
    new_entries: int = 0


@dataclass(slots=True)
class _Outgoing:
    """Their round: we stream what their summary lacks."""

    round: int
    lacking: dict[bytes, BitMap64]
    next_batch_no: int = 0
    in_flight: set[int] = field(default_factory=set)
    last_activity: float = 0.0
    finished: bool = False


@dataclass(slots=True)
class _Peer:
    connected: bool = True
    claim: Summary = field(default_factory=dict)
    incoming: _Incoming | None = None
    outgoing: _Outgoing | None = None
    resync_wanted: bool = False
    last_round_started: float = float("-inf")
    round_counter: int = 0


# ---------------------------------------------------------------- the engine


class SyncEngine:
    def __init__(
        self,
        signing_key: SigningKey,
        progress: Progress,
        reader: LogReader,
        time: TimeSource,
        config: EngineConfig | None = None,
        *,
        head_hash: bytes | None = None,
        last_hlc: int = 0,
        origin_allowed: Callable[[bytes], bool] | None = None,
    ) -> None:
        self._key = signing_key
        self.me = bytes(signing_key.verify_key)
        self.progress = progress
        self._reader = reader
        self._time = time
        self.config = config or EngineConfig()
        # The store's greatest hlc may come from a peer with a wild clock; never
        # start further ahead of our own wall time than observe() would follow.
        # Our own head entry, though, is ours and was capped when made: never
        # start below it, or a wall clock set back would lose our next edits.
        ceiling = pack(time.wall_ms() + MAX_FORWARD_MS, 0)
        own_head = self._own_head()
        self._head_hash = head_hash if head_hash is not None else own_head[0]
        self.clock = HybridClock(max(min(last_hlc, ceiling), own_head[1]))
        self._origin_allowed = origin_allowed
        self._peers: dict[str, _Peer] = {}
        self._verify_keys: dict[bytes, VerifyKey] = {}

    # ------------------------------------------------------------ queries

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

    def append_local(self, make_op: Callable[[int], Op]) -> tuple[Entry, Op, list[Action]]:
        """Sign the next entry of our own log. `make_op` gets its seq."""
        seq = self.progress.next_seq(self.me)
        op = make_op(seq)
        hlc = self.clock.tick(self._time.wall_ms())
        entry = sign_entry(self._key, seq, self._head_hash, hlc, encode_op(op))
        self._head_hash = entry.hash()
        self.progress.add(self.me, [seq])
        persist = Persist(
            (Accepted(entry, op, self._head_hash),),
            {self.me: BitMap64(self.progress.held(self.me))},
            "local",
            None,
        )
        return entry, op, [persist, PublishLive(protocol.encode(protocol.Live(entry.raw)))]

    def append_local_many(
        self, makers: list[Callable[[int], Op]], *, publish: bool
    ) -> tuple[list[Op], list[Action]]:
        """Sign several entries of our own log and persist them in one Persist."""
        accepted: list[Accepted] = []
        live: list[Action] = []
        head = self._head_hash  # committed to self only once every op is signed
        for make_op in makers:
            seq = self.progress.next_seq(self.me) + len(accepted)
            op = make_op(seq)
            hlc = self.clock.tick(self._time.wall_ms())
            entry = sign_entry(self._key, seq, head, hlc, encode_op(op))
            head = entry.hash()
            accepted.append(Accepted(entry, op, head))
            if publish:
                live.append(PublishLive(protocol.encode(protocol.Live(entry.raw))))
        if not accepted:
            return [], []
        self._head_hash = head
        self.progress.add(self.me, [a.entry.seq for a in accepted])
        held = BitMap64(self.progress.held(self.me))
        persist = Persist(tuple(accepted), {self.me: held}, "local", None)
        return [a.op for a in accepted if a.op is not None], [persist, *live]

    def persist_failed(self, persist: Persist) -> None:
        """The driver could not write `persist`: forget what it claimed.

        Without this, a later successful commit would store progress bitmaps
        claiming entries that never reached the log.
        """
        for accepted in persist.entries:
            entry = accepted.entry
            self.progress.held(entry.origin).discard(entry.seq)
        own = [a.entry for a in persist.entries if a.entry.origin == self.me]
        if own:
            first = min(own, key=lambda e: e.seq)
            if self.progress.next_seq(self.me) <= first.seq:
                self._head_hash = first.prev

    def peer_connected(self, peer: str) -> list[Action]:
        state = self._peers.setdefault(peer, _Peer())
        state.connected = True
        return self._start_round(peer, state, reply_wanted=True)

    def peer_disconnected(self, peer: str) -> list[Action]:
        state = self._peers.get(peer)
        if state is None:
            return []
        state.connected = False
        actions: list[Action] = []
        if state.incoming is not None:
            actions.append(self._finish_incoming(peer, state, ok=False, detail="peer disconnected"))
        state.outgoing = None
        state.resync_wanted = False
        return actions

    def request_sync(self, peer: str) -> list[Action]:
        state = self._peers.get(peer)
        if state is None or not state.connected:
            return []
        if state.incoming is not None:
            state.resync_wanted = True
            return []
        return self._start_round(peer, state, reply_wanted=True)

    def tick(self) -> list[Action]:
        """Time passed: fail stalled rounds, start periodic ones."""
        now = self._time.monotonic()
        actions: list[Action] = []
        for peer, state in self._peers.items():
            if not state.connected:
                continue
            incoming = state.incoming
            if incoming is not None and now - incoming.last_activity > self.config.round_timeout:
                actions.append(
                    self._finish_incoming(peer, state, ok=False, detail="round timed out")
                )
                state.resync_wanted = True
            out = state.outgoing
            if (
                out is not None
                and not out.finished
                and now - out.last_activity > self.config.round_timeout
            ):
                # Our batches or their acks were lost; their next round repairs it.
                actions.append(Dropped(peer, "ack_timeout", f"round {out.round} stalled"))
                state.outgoing = None
            if state.incoming is None and (
                state.resync_wanted or now - state.last_round_started >= self.config.sync_interval
            ):
                actions.extend(self._start_round(peer, state, reply_wanted=True))
        return actions

    # ------------------------------------------------------------ inbound messages

    def message_received(self, peer: str, data: bytes) -> list[Action]:
        """A message from `peer` on our pair's sync topic."""
        try:
            message = protocol.decode(data)
        except RemoteError as exc:
            return [Dropped(peer, exc.reason, str(exc))]
        state = self._peers.setdefault(peer, _Peer())
        if isinstance(message, protocol.SummaryMsg):
            return self._on_summary(peer, state, message)
        if isinstance(message, protocol.Batch):
            return self._on_batch(peer, state, message)
        if isinstance(message, protocol.Ack):
            return self._on_ack(peer, state, message)
        if isinstance(message, protocol.Query):
            return [QueryReceived(peer, message.query_id)]
        if isinstance(message, protocol.QueryReply):
            return [QueryAnswered(peer, message.query_id, message.recipes)]
        return [Dropped(peer, "unexpected", "live entry sent on a sync topic")]

    def live_received(self, peer: str, data: bytes) -> list[Action]:
        """A message on the live topic, forwarded to us by `peer`."""
        try:
            message = protocol.decode(data)
        except RemoteError as exc:
            return [Dropped(peer, exc.reason, str(exc))]
        if not isinstance(message, protocol.Live):
            return [Dropped(peer, "unexpected", "non-live message on the live topic")]
        actions = self._accept([message.entry], peer, source="live", verify_each=True)
        try:
            entry = decode_entry(message.entry)
        except RemoteError:
            return actions
        if entry.seq > 0 and not self.progress.has(entry.origin, entry.seq - 1):
            # A gap: we missed earlier live entries. Ask the author if it is a
            # direct peer, else any direct peer (gossip relays across hops).
            state = self._peers.get(peer)
            if state is not None and state.connected:
                actions.extend(self.request_sync(peer))
            else:
                for other in self.connected_peers():
                    actions.extend(self.request_sync(other))
                    break
        return actions

    def _on_summary(self, peer: str, state: _Peer, message: protocol.SummaryMsg) -> list[Action]:
        try:
            claim = decode_summary(message.summary)
        except RemoteError as exc:
            return [Dropped(peer, exc.reason, str(exc))]
        state.claim = claim
        lacking: dict[bytes, BitMap64] = {}
        for origin in list(self.progress.origins()):
            held = self.progress.held(origin)
            if not held:
                continue
            their = claim.get(origin)
            missing = their.missing_from(held) if their is not None else BitMap64(held)
            if missing:
                lacking[origin] = missing
        state.outgoing = _Outgoing(message.round, lacking, last_activity=self._time.monotonic())
        actions = self._pump(peer, state)
        if message.reply_wanted and state.incoming is None:
            actions.extend(self._start_round(peer, state, reply_wanted=False))
        return actions

    def _on_batch(self, peer: str, state: _Peer, message: protocol.Batch) -> list[Action]:
        actions = self._accept(list(message.entries), peer, source="backfill", verify_each=False)
        ack = protocol.encode(protocol.Ack(message.round, message.batch_no))
        actions.append(SendTo(peer, ack, "ack"))
        incoming = state.incoming
        if incoming is None or incoming.round != message.round:
            return actions  # a late batch of an old round: its entries still count
        incoming.last_activity = self._time.monotonic()
        if message.batch_no in incoming.received_batches:
            return actions
        incoming.received_batches.add(message.batch_no)
        incoming.entries += len(message.entries)
        incoming.new_entries += sum(len(a.entries) for a in actions if isinstance(a, Persist))
        if message.last:
            incoming.total_batches = message.batch_no + 1
        if (
            incoming.total_batches is not None
            and len(incoming.received_batches) >= incoming.total_batches
            and all(n in incoming.received_batches for n in range(incoming.total_batches))
        ):
            new_entries = incoming.new_entries
            finished = self._finish_incoming(peer, state, ok=True, detail="")
            actions.append(finished)
            if state.resync_wanted:
                actions.extend(self._start_round(peer, state, reply_wanted=True))
            if new_entries:
                actions.extend(self._offer_to_others(peer))
        return actions

    def _offer_to_others(self, source: str) -> list[Action]:
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
                actions.extend(self._start_round(other, state, reply_wanted=True))
        return actions

    def _on_ack(self, peer: str, state: _Peer, message: protocol.Ack) -> list[Action]:
        out = state.outgoing
        if out is None or out.round != message.round:
            return []
        out.in_flight.discard(message.batch_no)
        out.last_activity = self._time.monotonic()
        return self._pump(peer, state)

    # ------------------------------------------------------------ rounds

    def _start_round(self, peer: str, state: _Peer, *, reply_wanted: bool) -> list[Action]:
        now = self._time.monotonic()
        state.round_counter += 1
        state.incoming = _Incoming(state.round_counter, now, now)
        state.last_round_started = now
        state.resync_wanted = False
        summary = protocol.SummaryMsg(
            state.round_counter, reply_wanted, encode_summary(self.progress)
        )
        return [SendTo(peer, protocol.encode(summary), "summary")]

    def _finish_incoming(self, peer: str, state: _Peer, *, ok: bool, detail: str) -> RoundFinished:
        incoming = state.incoming
        assert incoming is not None
        state.incoming = None
        seconds = self._time.monotonic() - incoming.started
        return RoundFinished(peer, ok, seconds, incoming.entries, detail)

    def _pump(self, peer: str, state: _Peer) -> list[Action]:
        """Send batches of what the peer lacks while the window has room."""
        out = state.outgoing
        actions: list[Action] = []
        if out is None or out.finished:
            return actions
        while len(out.in_flight) < self.config.window and not out.finished:
            raws = self._next_batch(out.lacking)
            last = not out.lacking
            batch_no = out.next_batch_no
            out.next_batch_no += 1
            out.in_flight.add(batch_no)
            out.finished = last
            message = protocol.Batch(out.round, batch_no, last, tuple(raws))
            actions.append(SendTo(peer, protocol.encode(message), "batch"))
        return actions

    def _next_batch(self, lacking: dict[bytes, BitMap64]) -> list[bytes]:
        """Take up to batch_size entries (and max_batch_bytes) off `lacking`."""
        raws: list[bytes] = []
        size = 0
        for origin in list(lacking):
            seqs_left = lacking[origin]
            room = self.config.batch_size - len(raws)
            seqs = list(itertools.islice(seqs_left, room))
            taken = 0
            try:
                found = self._reader.read_raw(origin, seqs)
            except KeyError:
                # Some are held in memory but not (yet) on disk: a local commit
                # in flight, or one that failed. Send what is stored; skip the
                # rest, which the next round offers again.
                stored = set(self._reader.entry_links(origin, seqs))
                seqs_left.difference_update(BitMap64([q for q in seqs if q not in stored]))
                seqs = [q for q in seqs if q in stored]
                found = self._reader.read_raw(origin, seqs)
            for raw in found:
                if raws and size + len(raw) > self.config.max_batch_bytes:
                    break
                raws.append(raw)
                size += len(raw) + 4
                taken += 1
            if taken:
                seqs_left.difference_update(BitMap64(seqs[:taken]))
            if not seqs_left:
                del lacking[origin]
            if len(raws) >= self.config.batch_size or taken < len(seqs):
                break
        return raws

    # ------------------------------------------------------------ validation

    def _accept(
        self, raws: list[bytes], peer: str | None, *, source: str, verify_each: bool
    ) -> list[Action]:
        """Check entries from a peer and turn the good new ones into a Persist."""
        actions: list[Action] = []
        by_origin: dict[bytes, dict[int, Entry]] = {}
        for raw in raws:
            try:
                entry = decode_entry(raw)
            except RemoteError as exc:
                actions.append(Rejected(peer, exc.reason, 1, str(exc)))
                continue
            seen = by_origin.setdefault(entry.origin, {})
            other = seen.get(entry.seq)
            if other is not None and other.raw != entry.raw:
                actions.append(Rejected(peer, "fork", 1, "two different entries for one seq"))
                continue
            seen[entry.seq] = entry
        accepted: list[Accepted] = []
        touched: dict[bytes, BitMap64] = {}
        wall_ms = self._time.wall_ms()
        for origin, entries in by_origin.items():
            if self._origin_allowed is not None and not self._origin_allowed(origin):
                actions.append(Rejected(peer, "not_allowed", len(entries), "origin not allowed"))
                continue
            for run in _contiguous_runs(sorted(entries.values(), key=lambda e: e.seq)):
                new, problem = self._check_run(run, verify_each)
                if problem is not None:
                    actions.append(Rejected(peer, problem.reason, len(run), str(problem)))
                    continue
                for entry, digest in new:
                    op = self._authorised_op(entry, peer, actions)
                    accepted.append(Accepted(entry, op, digest))
                if new:
                    self.clock.observe(max(e.hlc for e, _ in new), wall_ms)
                if new and origin == self.me and new[-1][0].seq >= self.progress.next_seq(self.me):
                    # Our own entries coming back (e.g. restored from a peer after data loss).
                    self._head_hash = new[-1][1]
                if new:
                    self.progress.add(origin, [e.seq for e, _ in new])
                    touched[origin] = self.progress.held(origin)
        if accepted:
            progress = {origin: BitMap64(held) for origin, held in touched.items()}
            actions.insert(0, Persist(tuple(accepted), progress, source, peer))
        return actions

    def _check_run(
        self, run: list[Entry], verify_each: bool
    ) -> tuple[list[tuple[Entry, bytes]], RemoteError | None]:
        """Authenticate one contiguous run; return the entries not yet held, with hashes."""
        hashes = [entry_hash(e.raw) for e in run]
        for i in range(1, len(run)):
            if run[i].prev != hashes[i - 1]:
                return [], RemoteError("broken hash link inside a run", reason="chain")
        origin = run[0].origin
        held = self.progress.held(origin)
        first, last = run[0].seq, run[-1].seq
        neighbours = [s for s in (first - 1, last + 1) if s >= 0 and s in held]
        already = [e.seq for e in run if e.seq in held]
        if len(already) == len(run) and not verify_each:
            # Nothing new: still make sure it is not a fork of what we hold.
            links = self._reader.entry_links(origin, already[-1:])
            stored = links.get(already[-1])
            if stored is not None and stored[0] != hashes[-1]:
                return [], RemoteError("entry differs from the one held", reason="fork")
            return [], None
        links = self._reader.entry_links(origin, neighbours + already)
        # A held successor that links to this run authenticates it as well as
        # a signature would: it was itself authenticated when we took it.
        vouched = last + 1 in links and links[last + 1][1] == hashes[-1]
        try:
            if verify_each and not vouched:
                for entry in run:
                    verify_signature(entry, self._verify_keys)
            elif not vouched:
                verify_signature(run[-1], self._verify_keys)
        except RemoteError as exc:
            return [], exc
        if first - 1 in links and links[first - 1][0] != run[0].prev:
            return [], RemoteError("entry does not link to the one held before it", reason="fork")
        if last + 1 in links and links[last + 1][1] != hashes[-1]:
            return [], RemoteError("entry does not link to the one held after it", reason="fork")
        for i, entry in enumerate(run):
            stored = links.get(entry.seq)
            if stored is not None and stored[0] != hashes[i]:
                return [], RemoteError("entry differs from the one held", reason="fork")
        return [(e, hashes[i]) for i, e in enumerate(run) if e.seq not in held], None

    def _authorised_op(self, entry: Entry, peer: str | None, actions: list[Action]) -> Op | None:
        try:
            op = decode_op(entry.op)
        except RemoteError as exc:
            actions.append(Rejected(peer, "bad_op", 1, str(exc)))
            return None
        if not is_by_author(entry, op):
            actions.append(
                Rejected(peer, "not_author", 1, f"{op.kind} on a recipe of another author")
            )
            return None
        return op

    def _own_head(self) -> tuple[bytes, int]:
        """Hash and hlc of the last entry of our own log (zero hash, 0 if none)."""
        seq = self.progress.next_seq(self.me) - 1
        if seq < 0:
            return ZERO_HASH, 0
        head = decode_entry(self._reader.read_raw(self.me, [seq])[0])
        return head.hash(), head.hlc


def _contiguous_runs(entries: list[Entry]) -> list[list[Entry]]:
    runs: list[list[Entry]] = []
    for entry in entries:
        if runs and runs[-1][-1].seq + 1 == entry.seq:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs
