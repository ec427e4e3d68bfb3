"""The node: the engine, the store and the executor behind the NodeService API.

It owns no tasks: the app (p2psync/app.py) and the network (network.py) run
the loops and feed it events. Every engine action is carried out by the one
`Executor`, synchronously and in order, so the store has committed an entry
before anyone is told about it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import trio
from nacl.signing import SigningKey

from p2psync.core.actions import Action, Persist, RoundFinished
from p2psync.core.budgets import DEFAULT_BUDGETS, BudgetKind, BudgetRate
from p2psync.core.engine import EngineConfig, SyncEngine
from p2psync.core.errors import LocalError, OwnLogForked
from p2psync.core.hlc import MAX_FORWARD_MS, Now
from p2psync.core.ids import make_recipe_id, peer_id_from_public_key, public_key_from_peer_id
from p2psync.core.ops import Op, validate_fields
from p2psync.core.progress import Progress
from p2psync.core.recipes import RecipeState
from p2psync.core.store import Store, StoreError
from p2psync.node.commit_placement import CommitPlacement, commit_where_placed
from p2psync.node.config import NodeConfig
from p2psync.node.executor import Executor
from p2psync.node.observer import Observer
from p2psync.node.own_writes import OwnWrites
from p2psync.node.restore import UNSYNCED_NAME
from p2psync.node.service import PeerView, RecipeView, StatusView, UserError
from p2psync.node.transport import Transport

log = logging.getLogger(__name__)

OWN_HEAD_WAIT_SECONDS = 10.0  # a started node with static peers, or a connected peer
RESTORED_WAIT_SECONDS = 60.0  # a restored node, before it has met any peer


class SystemClock:
    """The node's source of `Now`; tests substitute a fake."""

    def now(self) -> Now:
        return Now(time.monotonic(), time.time_ns() // 1_000_000)


# The store is measured after commits, at most once a second unless this many
# entries arrived since (a backfill batch): ~20 us against a commit's milliseconds.
STORE_MEASURE_SECONDS = 1.0
STORE_MEASURE_ENTRIES = 256
# Refusing starts at the limit and ends only below 95 % of it: no flapping.
STORE_BUDGET_CLEAR_FRACTION = 0.95


class StoreBudget:
    """--max-store-mb: measures the store after commits and tells the engine
    (`set_store_full`) when the size crosses the limit, in either direction."""

    def __init__(
        self, store: Store, engine: SyncEngine, observer: Observer, config: NodeConfig
    ) -> None:
        self.store, self.engine, self.observer = store, engine, observer
        self.limit = config.max_store_bytes
        self.limit_mb = config.max_store_mb
        self.size: int | None = None  # bytes, as last measured
        self._measured_at = float("-inf")
        self._measured_entries = -1
        self._dirty = True

    @property
    def hit(self) -> bool:
        return self.engine.store_full

    def after_commit(self, monotonic: float) -> None:
        self._dirty = True
        grown = self.engine.entry_count() - self._measured_entries
        if grown >= STORE_MEASURE_ENTRIES or monotonic - self._measured_at >= STORE_MEASURE_SECONDS:
            self.measure(monotonic)

    def catch_up(self, monotonic: float) -> None:
        """A commit not measured yet (rate limit) is measured once the second is over."""
        if self._dirty and monotonic - self._measured_at >= STORE_MEASURE_SECONDS:
            self.measure(monotonic)

    def measure(self, monotonic: float) -> None:
        self._measured_at, self._dirty = monotonic, False
        self._measured_entries = self.engine.entry_count()
        try:
            self.size = size = self.store.size_bytes()
        except StoreError as exc:
            log.debug("could not measure the store: %s", exc)
            return
        limit = self.limit
        if limit is not None:
            if not self.engine.store_full and size >= limit:
                self.engine.set_store_full(True)
                log.warning(
                    "store is past --max-store-mb %g (%s): entries of other origins are refused"
                    " until it is below %s again (start with a larger --max-store-mb);"
                    " own writes still work",
                    self.limit_mb, _mib(size), _mib(self._clear_below(limit)),
                )  # fmt: skip
            elif self.engine.store_full and size < self._clear_below(limit):
                self.engine.set_store_full(False)
                log.info(
                    "store is below --max-store-mb %g again (%s): entries of other origins"
                    " are accepted again",
                    self.limit_mb, _mib(size),
                )  # fmt: skip
        self.observer.set_store_size(size, limit, self.engine.store_full)

    @staticmethod
    def _clear_below(limit: int) -> int:
        return int(limit * STORE_BUDGET_CLEAR_FRACTION)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.2f} MiB"


class Node:
    def __init__(
        self,
        config: NodeConfig,
        signing_key: SigningKey,
        store: Store,
        observer: Observer,
        *,
        clock: SystemClock | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.observer = observer
        self.clock = clock or SystemClock()
        self.transport = Transport()
        allowed = None
        if config.allow_peers:
            allowed = frozenset(public_key_from_peer_id(peer) for peer in config.allow_peers)
        self.engine = SyncEngine(
            signing_key,
            Progress(store.load_progress()),
            store,
            self.clock.now(),
            EngineConfig(
                batch_size=config.batch_size,
                sync_interval=config.sync_interval,
                allowed_origins=allowed,
                budgets=budgets_for(config.new_origins_per_hour),
            ),
            last_hlc=store.last_hlc(self.clock.now().wall_ms + MAX_FORWARD_MS),
            forks=store.load_forks(),
        )
        self.peer_id = peer_id_from_public_key(self.engine.me)
        self.stop_requested = trio.Event()
        self.local_writes = trio.Lock()  # one local append (sign + durable commit) at a time
        self.own_writes = OwnWrites(self)  # user ops waiting together: one commit
        self.commit_placement = CommitPlacement()  # their commit: in this thread or a worker
        self.changed = trio.Event()  # set after every commit, then replaced
        self.commit_count = 0  # commits so far (wait_for_change)
        # Set once a round with a peer has finished: by then we know whether
        # peers hold more of our own log than we do (a restored old backup).
        self.own_head_settled = trio.Event()
        self._head_wait_done = False
        self.executor = Executor(
            self.engine,
            store,
            observer,
            self.transport,
            on_commit=self._announce_change,
            on_round_finished=self._round_finished,
        )
        self.store_budget = StoreBudget(store, self.engine, observer, config)
        self.store_budget.measure(self.clock.now().monotonic)  # past it already at start?

    @property
    def store_error(self) -> str | None:
        return self.executor.store_error

    # ------------------------------------------------------------ running actions

    def now(self) -> Now:
        return self.clock.now()

    def run_actions(self, actions: list[Action]) -> None:
        now = self.clock.now()
        self.executor.run(actions, now)
        self.store_budget.catch_up(now.monotonic)  # the ticker calls this every second

    def run_grouped(self, batches: list[list[Action]]) -> None:
        """Like run_actions for several received messages: one commit for their entries."""
        now = self.clock.now()
        self.executor.run_grouped(batches, now)
        self.store_budget.catch_up(now.monotonic)

    def attach_transport(self, transport: Transport) -> None:
        self.transport = transport
        self.executor.effects = transport

    def detach_transport(self) -> None:
        self.attach_transport(Transport())

    def _round_finished(self, finished: RoundFinished) -> None:
        if not finished.ok or self.own_head_settled.is_set():
            return
        restored = (self.config.data_dir / UNSYNCED_NAME).exists()
        if restored and not self.engine.peer_claims().get(finished.peer, {}).get(self.engine.me):
            return  # this peer holds none of our log: it cannot tell us our head
        self.own_head_settled.set()
        if restored:
            with contextlib.suppress(OSError):
                (self.config.data_dir / UNSYNCED_NAME).unlink(missing_ok=True)

    async def wait_for_own_head(self) -> None:
        """Before our first write, learn our own log's head from a peer if one is there.

        A node restored from an old backup would otherwise reuse seqs its
        peers already hold with other content. A restored node (marked by
        `p2psync restore`) waits up to RESTORED_WAIT_SECONDS for its first
        round; a node with static peers or a connected peer up to
        OWN_HEAD_WAIT_SECONDS, so a peer that never finishes a round cannot
        block our writes; a node with no peer at all writes at once.
        """
        if self.own_head_settled.is_set() or self._head_wait_done:
            return
        if (self.config.data_dir / UNSYNCED_NAME).exists():
            wait = RESTORED_WAIT_SECONDS  # restored: it is behind its own log, surely
        elif self.config.peers or any(peer.connected for peer in self.transport.peers()):
            wait = OWN_HEAD_WAIT_SECONDS  # a peer is there, or is being dialed
        else:
            return
        with trio.move_on_after(wait):
            await self.own_head_settled.wait()
        # Waited once: later writes of this process go ahead at once (the
        # restored mark stays until a round really finishes).
        self._head_wait_done = True

    def _announce_change(self) -> None:
        self.store_budget.after_commit(self.clock.now().monotonic)
        self.commit_count += 1
        self.changed.set()
        self.changed = trio.Event()

    async def run_local_actions(self, actions: list[Action]) -> None:
        """Like run_actions, for our own ops: the store makes their commit
        durable (fsync), and it runs off the event loop while the disk is
        slow (`commit_placement`).

        Callers hold `local_writes`, so our entries reach the disk in seq
        order. A refused commit becomes a 503 UserError.
        """
        for action in actions:
            if not isinstance(action, Persist):
                self.run_actions([action])
                continue
            # Shielded: the engine already counts the entry as ours, so the
            # commit must finish (or fail and roll back), never be skipped.
            with trio.CancelScope(shield=True):
                error = await commit_where_placed(
                    self.executor, action, self.commit_placement, self.observer
                )
            try:
                self.executor.settle(action, error, self.clock.now())
            except StoreError as exc:
                raise UserError(f"not saved: {exc}", status=503) from exc

    # ------------------------------------------------------------ local writes

    async def append_ops(self, ops: Sequence[Op], *, publish: bool = True) -> None:
        """Sign, durably store and (if `publish`) broadcast our own ops, in one commit.

        Callers hold `local_writes`, and call `wait_for_own_head()` before they
        read `engine.next_own_seq()` for the recipe ids of create ops.
        """
        try:
            actions = self.engine.append_local(self.clock.now(), ops, publish=publish)
        except OwnLogForked as exc:
            raise UserError(str(exc), status=409) from exc
        except LocalError as exc:
            raise UserError(str(exc)) from exc
        await self.run_local_actions(actions)

    def _own_recipe(self, recipe_id: str) -> RecipeState:
        state = self.store.recipe(recipe_id.strip())
        if state is None or not state.visible:
            raise UserError(f"no recipe with id {recipe_id!r}", status=404)
        if state.author != self.engine.me:
            raise UserError(
                f"recipe {recipe_id} belongs to {peer_id_from_public_key(state.author)}; "
                "only its author can change it",
                status=403,
            )
        return state

    def _stored_recipe(self, recipe_id: str) -> RecipeState:
        state = self.store.recipe(recipe_id)
        assert state is not None, "a committed op leaves its recipe in the store"
        return state

    # ------------------------------------------------------------ NodeService

    def status(self) -> StatusView:
        # Entries from the store, not the engine: our own ops count in the engine
        # before their commit (in a worker thread, on a slow disk) lands, and a status pairing
        # them with the digest of the commit before is one no peer ever had.
        stored = self.store.summary()
        return StatusView(
            peer_id=self.peer_id,
            profile=self.config.profile,
            data_dir=str(self.config.data_dir),
            network=self.config.network,
            listen_addrs=self.transport.listen_addrs(),
            peers=sum(1 for p in self.transport.peers() if p.connected),
            entries=stored.entries,
            recipes=stored.recipes,
            digest=stored.digest,
            forked_origins=len(self.engine.forked_origins()),
            store_bytes=self.store_budget.size,
            max_store_bytes=self.store_budget.limit,
            store_budget_hit=self.store_budget.hit,
        )

    def list_recipes(self) -> list[RecipeView]:
        return [recipe_view(state) for state in self.store.visible_recipes()]

    def get_recipe(self, recipe_id: str) -> RecipeView | None:
        state = self.store.recipe(recipe_id)
        return recipe_view(state) if state is not None and state.visible else None

    async def create_recipe(self, name: str, ingredients: str, instructions: str) -> RecipeView:
        try:
            fields = validate_fields(name, ingredients, instructions)
        except LocalError as exc:
            raise UserError(str(exc)) from exc
        me = self.engine.me
        seq = await self.own_writes.write(
            lambda seq: Op("create", make_recipe_id(me, seq), None, fields)
        )
        return recipe_view(self._stored_recipe(make_recipe_id(me, seq)))

    async def publish_recipe(self, recipe_id: str) -> RecipeView:
        state = self._own_recipe(recipe_id)
        if state.published:
            return recipe_view(state)
        await self.own_writes.write(lambda _: Op("publish", state.id, state.create_seq))
        return recipe_view(self._stored_recipe(state.id))

    async def update_recipe(
        self,
        recipe_id: str,
        name: str | None = None,
        ingredients: str | None = None,
        instructions: str | None = None,
    ) -> RecipeView:
        state = self._own_recipe(recipe_id)
        assert state.fields is not None  # _own_recipe returns visible recipes only
        old = state.fields
        try:
            fields = validate_fields(
                old.name if name is None else name,
                old.ingredients if ingredients is None else ingredients,
                old.instructions if instructions is None else instructions,
            )
        except LocalError as exc:
            raise UserError(str(exc)) from exc
        if fields == old:
            return recipe_view(state)
        await self.own_writes.write(lambda _: Op("update", state.id, state.create_seq, fields))
        return recipe_view(self._stored_recipe(state.id))

    async def unpublish_recipe(self, recipe_id: str) -> RecipeView:
        state = self._own_recipe(recipe_id)
        if not state.published:
            return recipe_view(state)
        await self.own_writes.write(lambda _: Op("unpublish", state.id, state.create_seq))
        return recipe_view(self._stored_recipe(state.id))

    async def wait_for_change(self, seen: int, timeout: float) -> int:
        if self.commit_count == seen:
            with trio.move_on_after(timeout):
                await self.changed.wait()
        return self.commit_count

    async def delete_recipe(self, recipe_id: str) -> None:
        state = self._own_recipe(recipe_id)
        await self.own_writes.write(lambda _: Op("delete", state.id, state.create_seq))

    def list_peers(self) -> list[PeerView]:
        return self.transport.peers()

    def sync_progress(self) -> dict[str, dict[str, dict[str, int]]]:
        mine = self.engine.held_counts()
        forked = self.engine.forked_origins()
        answer: dict[str, dict[str, dict[str, int]]] = {
            "self": {
                peer_id_from_public_key(origin): {"held": count, "known": count}
                for origin, count in mine.items()
            }
        }
        for origin, seq in forked.items():
            counts = answer["self"].setdefault(
                peer_id_from_public_key(origin), {"held": 0, "known": 0}
            )
            counts["forked_at"] = seq
        claims = self.engine.peer_claims()
        for peer in self.engine.connected_peers():
            theirs = claims.get(peer, {})
            answer[peer] = {
                peer_id_from_public_key(origin): {
                    "held": theirs.get(origin, 0),
                    "known": max(theirs.get(origin, 0), mine.get(origin, 0)),
                }
                for origin in set(theirs) | set(mine)
            }
        return answer

    async def remote_published(
        self, peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        return await self.transport.remote_published(peer_prefix, timeout)

    async def stop(self) -> None:
        self.stop_requested.set()


def recipe_view(state: RecipeState) -> RecipeView:
    assert state.fields is not None
    return RecipeView(
        id=state.id,
        name=state.fields.name,
        ingredients=state.fields.ingredients,
        instructions=state.fields.instructions,
        author=peer_id_from_public_key(state.author),
        published=state.published,
        updated=state.updated,
    )


def data_file(data_dir: Path) -> Path:
    return data_dir / "p2psync.db"


def budgets_for(new_origins_per_hour: int) -> dict[BudgetKind, BudgetRate]:
    """The engine's per-peer budgets, with --new-origins-per-hour (0: no limit)."""
    budgets = dict(DEFAULT_BUDGETS)
    if new_origins_per_hour <= 0:
        del budgets[BudgetKind.NEW_ORIGINS]
    else:
        n = float(new_origins_per_hour)
        budgets[BudgetKind.NEW_ORIGINS] = BudgetRate(burst=n, per_second=n / 3600)
    return budgets
