"""The engine's ledger: what this node holds and writes, apart from any peer.

It keeps the progress bitmaps, the reconcilable items, the fork proofs, our
own log's head and our hybrid clock; it signs local ops and applies the
verdict on received entries. `SyncEngine` (engine.py) adds the peers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nacl.signing import SigningKey, VerifyKey
from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.acceptance import check_entries
from p2psync.core.actions import (
    Accepted,
    Action,
    BudgetExceeded,
    Persist,
    PublishLive,
    RecordFork,
    Rejected,
)
from p2psync.core.budgets import DEFAULT_BUDGETS, BudgetKind, BudgetRate, PeerBudgets
from p2psync.core.entry import ZERO_HASH, CheckedSignatures, decode_entry, sign_entry
from p2psync.core.errors import LocalError, OwnLogForked
from p2psync.core.forks import ForkProof
from p2psync.core.hlc import MAX_FORWARD_MS, HybridClock, Now, pack
from p2psync.core.ids import make_recipe_id
from p2psync.core.items import ItemIndex
from p2psync.core.ops import Op, encode_op
from p2psync.core.progress import Progress
from p2psync.core.reasons import Reason, Source
from p2psync.core.store import LogReader

# A lower fork proof of an already forked origin rewrites the author's recipes;
# no more than one such rewrite per this many seconds (see Ledger._learn_fork).
FORK_REWRITE_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    batch_size: int = 1000  # ~280 KB messages: few commits, well under 1 MiB
    max_batch_bytes: int = 900 * 1024
    window: int = 4  # unacknowledged batches in flight per peer
    sync_interval: float = 30.0
    round_timeout: float = 15.0  # a round with no progress for this long fails
    # A closed network accepts entries of these origins only (ours always); None: any.
    allowed_origins: frozenset[bytes] | None = None
    # What one peer may make us do (budgets.DEFAULT_BUDGETS); a kind left out is unlimited.
    budgets: Mapping[BudgetKind, BudgetRate] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))


class Ledger:
    """What this node holds and writes: progress, items, forks, its own log and clock.

    The part of the engine that does not talk to peers (see engine.py).
    """

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
        self._verify_keys: dict[bytes, VerifyKey] = {}
        self.checked_signatures = CheckedSignatures()  # the live validator and BATCH checker add
        self._forks: dict[bytes, ForkProof] = {proof.origin: proof for proof in forks}
        self._rewrites_due: dict[bytes, ForkProof] = {}  # lower proofs not yet recorded
        self._budgets = PeerBudgets(dict(self.config.budgets))
        self._store_full = False
        self._next_rewrite = float("-inf")
        self._index = ItemIndex(progress, reader)
        for proof in self._forks.values():
            self._index.set_forked(proof.origin, proof.seq)

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

    def forked_origins(self) -> dict[bytes, int]:
        """Origins proven forked, and the seq from which their entries are hidden."""
        return {origin: proof.seq for origin, proof in self._forks.items()}

    # ------------------------------------------------------------ local writes

    def append_local(self, now: Now, ops: Sequence[Op], *, publish: bool = True) -> list[Action]:
        """Sign `ops` as the next entries of our own log, persisted in ONE Persist.

        A create op's recipe id must be the one its seq gives
        (`make_recipe_id(me, next_own_seq() + i)`). Every op is checked and
        encoded before anything changes, so a LocalError leaves no trace.
        """
        if self.me in self._forks:
            raise OwnLogForked(
                f"this node's own log is proven forked at seq {self._forks[self.me].seq} (a"
                " restored old backup wrote seqs its peers already held): it can no longer"
                " write; see OPERATIONS.md, 'A forked log'"
            )
        first_seq = self.next_own_seq()
        encoded = []
        for i, op in enumerate(ops):
            if op.kind == "create" and op.recipe_id != make_recipe_id(self.me, first_seq + i):
                raise LocalError(f"create op {i} names a recipe id its seq does not give")
            encoded.append(encode_op(op))
        if not ops:
            return []
        accepted: list[Accepted] = []
        head = self._head_hash
        for i, (op, payload) in enumerate(zip(ops, encoded, strict=True)):
            hlc = self._clock.tick(now.wall_ms)
            entry = sign_entry(self._key, first_seq + i, head, hlc, payload)
            head = entry.hash()
            accepted.append(Accepted(entry, op, head))
        # Ops written together travel together: one gossipsub message per run,
        # where each message costs every node of the mesh far more than an entry.
        live: list[Action] = []
        if publish:
            runs = protocol.live_runs([a.entry.raw for a in accepted])
            live = [PublishLive(protocol.encode(run)) for run in runs]
        self._head_hash = head
        self._progress.add(self.me, [a.entry.seq for a in accepted])
        self._index.refresh(self.me, {a.entry.seq: a.entry_hash() for a in accepted})
        held = BitMap64(self._progress.held(self.me))
        return [Persist(tuple(accepted), {self.me: held}, Source.LOCAL, None), *live]

    def persist_failed(self, persist: Persist) -> list[Action]:
        """The driver could not write `persist`: forget what it claimed.

        Without this, a later successful commit would store progress bitmaps
        claiming entries that never reached the log.
        """
        for accepted in persist.entries:
            entry = accepted.entry
            self._progress.discard(entry.origin, entry.seq)
        for origin in {a.entry.origin for a in persist.entries}:
            self._index.refresh(origin)
        own = [a.entry for a in persist.entries if a.entry.origin == self.me]
        if own:
            first = min(own, key=lambda e: e.seq)
            if self.next_own_seq() <= first.seq:
                self._head_hash = first.prev
        return []

    # ------------------------------------------------------------ received entries

    def _accept(
        self,
        raws: Sequence[bytes],
        peer: str,
        now: Now,
        *,
        source: Source,
        verify_each: bool,
        budget_of: str | None = None,
    ) -> list[Action]:
        """Check entries from a peer; the good new ones become one Persist, placed first.

        New origins are charged to `budget_of` (a live entry's publisher) and
        an overrun scores it down; without it (backfill: the peer serves what
        we asked for) they are charged to `peer` and an overrun only waits.
        """
        verdict = check_entries(
            raws,
            peer,
            progress=self._progress,
            reader=self._reader,
            verify_keys=self._verify_keys,
            allowed_origins=self._allowed_origins,
            forked_at=self._index.forked_at,
            verify_each=verify_each,
            checked=self.checked_signatures,
        )
        actions: list[Action] = []
        verdict.accepted = self._admit(
            verdict.accepted, budget_of or peer, now, actions, penalize=budget_of is not None
        )
        if verdict.accepted:
            next_own = self.next_own_seq()
            new_by_origin: dict[bytes, dict[int, bytes]] = {}  # origin -> {seq: hash}
            for accepted in verdict.accepted:
                entry = accepted.entry
                new_by_origin.setdefault(entry.origin, {})[entry.seq] = accepted.entry_hash()
                self._clock.observe(entry.hlc, now.wall_ms)
                if entry.origin == self.me and entry.seq >= next_own:
                    # Our own entries coming back (restored from a peer after data loss).
                    next_own = entry.seq + 1
                    self._head_hash = accepted.entry_hash()
            for origin, hashes in new_by_origin.items():
                self._progress.add(origin, list(hashes))
                self._index.refresh(origin, hashes)
            progress = {origin: BitMap64(self._progress.held(origin)) for origin in new_by_origin}
            actions.append(Persist(tuple(verdict.accepted), progress, source, peer))
        actions.extend(verdict.rejected)
        for proof in verdict.proofs:
            actions.extend(self._learn_fork(proof, now, source=None))
        return actions

    def set_store_full(self, full: bool) -> None:
        """The driver measured the store against --max-store-mb: past it, entries of
        other origins are refused (`store_full`) until it is below again."""
        self._store_full = full

    @property
    def store_full(self) -> bool:
        return self._store_full

    def _admit(
        self,
        accepted: list[Accepted],
        peer: str,
        now: Now,
        actions: list[Action],
        *,
        penalize: bool,
    ) -> list[Accepted]:
        """Authentic entries the store budget and the peer's new-origins budget let in.

        The refused wait: anti-entropy offers them again later (or another peer does).
        """
        if not accepted:
            return accepted
        refused: dict[Reason, int] = {}
        kept: list[Accepted] = []
        admitted: dict[bytes, bool] = {}
        for item in accepted:
            origin = item.entry.origin
            if origin == self.me:
                kept.append(item)
                continue
            if self._store_full:
                refused[Reason.STORE_FULL] = refused.get(Reason.STORE_FULL, 0) + 1
                continue
            ok = admitted.get(origin)
            if ok is None:
                new = self._progress.get(origin) is None
                ok = admitted[origin] = not new or self._budgets.spend(
                    peer, BudgetKind.NEW_ORIGINS, now.monotonic
                )
            if ok:
                kept.append(item)
            else:
                refused[Reason.BUDGET] = refused.get(Reason.BUDGET, 0) + 1
        if Reason.STORE_FULL in refused:
            count = refused[Reason.STORE_FULL]
            detail = "the store is past --max-store-mb: only our own entries are kept"
            actions.append(Rejected(peer, Reason.STORE_FULL, count, detail))
        if Reason.BUDGET in refused:
            count = refused[Reason.BUDGET]
            detail = f"{count} entries of origins new to us, past the peer's new-origins budget"
            actions.append(Rejected(peer, Reason.BUDGET, count, detail))
            actions.append(BudgetExceeded(peer, BudgetKind.NEW_ORIGINS, penalize=penalize))
        return kept

    def _learn_fork(self, proof: ForkProof, now: Now, *, source: str | None) -> list[Action]:
        """Hold a checked proof: hide the origin from its seq on, and record it.

        Recording rewrites the author's recipes from its log, a cost the
        origin chooses (its log's length). A first proof is recorded at once;
        a lower proof of an origin already forked (an origin can sign a new
        one for every seq) is recorded at most once per FORK_REWRITE_INTERVAL,
        all origins together, the lowest waiting proof of each origin last in.
        Acceptance and items follow the lowest proof at once either way.
        """
        known = self._forks.get(proof.origin)
        if known is not None and known.seq <= proof.seq:
            return []
        self._forks[proof.origin] = proof
        self._index.set_forked(proof.origin, proof.seq)
        if known is None:
            return [RecordFork(proof, new_origin=True)]
        self._rewrites_due[proof.origin] = proof
        return self._due_rewrites(now)

    def _due_rewrites(self, now: Now) -> list[Action]:
        """The one waiting lower proof to record now, if the interval allows."""
        if not self._rewrites_due or now.monotonic < self._next_rewrite:
            return []
        origin = next(iter(self._rewrites_due))
        proof = self._rewrites_due.pop(origin)
        self._next_rewrite = now.monotonic + FORK_REWRITE_INTERVAL
        return [RecordFork(proof, new_origin=False)]

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
