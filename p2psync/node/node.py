"""The node: the engine, the store and the metrics behind the NodeService API.

It owns no tasks: the daemon (daemon.py) runs the loops. Every engine
action is carried out here, synchronously and in order, so that the store
has committed an entry before anyone is told about it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import trio
from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.core.engine import (
    Action,
    Dropped,
    EngineConfig,
    Persist,
    PublishLive,
    QueryAnswered,
    QueryReceived,
    Rejected,
    RoundFinished,
    SendTo,
    SyncEngine,
)
from p2psync.core.errors import LocalError
from p2psync.core.hlc import wall_ms_of
from p2psync.core.ids import make_recipe_id, peer_id_from_public_key, public_key_from_peer_id
from p2psync.core.ops import Op, OpKind, validate_fields
from p2psync.core.progress import Progress
from p2psync.core.recipes import RecipeState
from p2psync.core.store import Store
from p2psync.node.config import NodeConfig
from p2psync.node.service import PeerView, RecipeView, StatusView, UserError
from p2psync.store.sqlite import StoreError

log = logging.getLogger(__name__)

# Rejections that only a broken or hostile sender produces (see core.entry).
MALFORMED_ENTRY_REASONS = frozenset({"malformed", "oversized", "version"})


class SystemTime:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


class Transport:
    """What the node needs from the network; the daemon plugs libp2p in.

    Without a network (tests, or before peers connect) sends go nowhere and
    are counted as dropped.
    """

    def send(self, peer: str, data: bytes) -> bool:
        return False

    def publish_live(self, data: bytes) -> bool:
        return False

    def listen_addrs(self) -> list[str]:
        return []

    def peers(self) -> list[PeerView]:
        return []

    def on_action(self, action: object) -> None:
        """Network-level actions (queries); nothing to do without a network."""

    def round_finished(self, peer: str, ok: bool, seconds: float) -> None:
        pass

    def penalize(self, peer: str, reason: str) -> None:
        """The peer sent something bad; the network may cut it off."""

    async def remote_published(
        self, peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        if peer_prefix is not None:
            raise UserError(f"no connected peer id starts with {peer_prefix!r}", status=404)
        return {}


class Node:
    def __init__(
        self,
        config: NodeConfig,
        signing_key: SigningKey,
        store: Store,
        metrics: Metrics,
        *,
        time_source: SystemTime | None = None,
        origin_allowed: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.time = time_source or SystemTime()
        self.transport = Transport()
        if origin_allowed is None and config.allow_peers:
            origin_allowed = allowed_origins(config.allow_peers, bytes(signing_key.verify_key))
        self.engine = SyncEngine(
            signing_key,
            Progress(store.load_progress()),
            store,
            self.time,
            EngineConfig(batch_size=config.batch_size, sync_interval=config.sync_interval),
            last_hlc=store.last_hlc(),
            origin_allowed=origin_allowed,
        )
        self.peer_id = peer_id_from_public_key(self.engine.me)
        self.stop_requested = trio.Event()
        self.local_writes = trio.Lock()  # one local append (sign + durable commit) at a time
        self.store_error: str | None = None
        self.changed = trio.Event()  # set after every commit, then replaced
        self._refresh_entry_gauges()

    # ------------------------------------------------------------ running actions

    def run_actions(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Persist):
                self._persist(action)
            elif isinstance(action, SendTo):
                if not self.transport.send(action.peer, action.data):
                    self.metrics.dropped("send_failed")
            elif isinstance(action, PublishLive):
                if not self.transport.publish_live(action.data):
                    # Nobody to tell, or the queue was full: anti-entropy repairs it.
                    self.metrics.dropped("live_not_sent")
            elif isinstance(action, Rejected):
                log.info(
                    "rejected %d entries from %s: %s", action.count, action.peer, action.detail
                )
                self.metrics.entries_rejected(action.reason, action.count)
                if action.peer is not None and action.reason in MALFORMED_ENTRY_REASONS:
                    # Only broken structure is surely the sender's doing: an
                    # honest relay may carry a third party's forks, ignored ops
                    # or entries vouched for by a chain but not by their own
                    # signature.
                    self.transport.penalize(action.peer, action.reason)
            elif isinstance(action, Dropped):
                log.info("dropped a message from %s: %s", action.peer, action.detail)
                self.metrics.dropped(action.reason)
                if action.peer is not None and action.reason != "ack_timeout":
                    self.transport.penalize(action.peer, action.reason)
            elif isinstance(action, RoundFinished):
                self.metrics.sync_round(action.ok, action.seconds)
                self.transport.round_finished(action.peer, action.ok, action.seconds)
            elif isinstance(action, QueryReceived | QueryAnswered):
                self.transport.on_action(action)

    def attach_transport(self, transport: Transport) -> None:
        self.transport = transport

    def detach_transport(self) -> None:
        self.transport = Transport()

    def _persist(self, persist: Persist) -> None:
        self._settle(persist, self._commit(persist))

    async def run_local_actions(self, actions: list[Action]) -> None:
        """Like run_actions, but fsync our own ops off the event loop.

        A durable commit waits ~10 ms for the disk; done in the trio thread it
        would stall every peer session and the API meanwhile. Callers hold
        `local_writes`, so our entries reach the disk in seq order.
        """
        for action in actions:
            if not isinstance(action, Persist):
                self.run_actions([action])
                continue
            # Shielded: the engine already counts the entry as ours, so the
            # commit must finish (or fail and roll back), never be skipped.
            with trio.CancelScope(shield=True):
                error = await trio.to_thread.run_sync(self._commit, action)
            self._settle(action, error)

    def _commit(self, persist: Persist) -> StoreError | None:
        """Write one Persist; any failure comes back as a StoreError, never raised.

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

    def _settle(self, persist: Persist, error: StoreError | None) -> None:
        if error is None:
            self._persisted(persist)
        else:
            self._persist_failed(persist, error)

    def _persist_failed(self, persist: Persist, exc: StoreError) -> None:
        self.engine.persist_failed(persist)
        self.metrics.dropped("store_failed")
        log.error("%s", exc)
        if persist.source == "local":
            raise UserError(f"not saved: {exc}", status=503) from exc
        # Received entries: anti-entropy brings them again once the store recovers.
        self.store_error = str(exc)

    def _persisted(self, persist: Persist) -> None:
        self.store_error = None
        count = len(persist.entries)
        self.metrics.entries_applied(count)
        if persist.source == "live":
            self.metrics.live_ops_received(count)
        elif persist.source == "backfill":
            self.metrics.backfill_entries_received(count)
        if persist.source != "local":
            now_ms = self.time.wall_ms()
            for accepted in persist.entries:
                self.metrics.observe_apply_latency(
                    max(0.0, (now_ms - wall_ms_of(accepted.entry.hlc)) / 1000)
                )
        self._refresh_entry_gauges()
        self.changed.set()
        self.changed = trio.Event()

    def _refresh_entry_gauges(self) -> None:
        own = self.engine.progress.count(self.engine.me)
        self.metrics.set_entries(own, self.engine.progress.total() - own)

    # ------------------------------------------------------------ local writes

    async def append(self, kind: OpKind, make_op: Callable[[int], Op]) -> RecipeState:
        async with self.local_writes:
            try:
                _, op, actions = self.engine.append_local(make_op)
            except LocalError as exc:
                raise UserError(str(exc)) from exc
            await self.run_local_actions(actions)
        state = self.store.recipe(op.recipe_id)
        assert state is not None
        return state

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

    # ------------------------------------------------------------ NodeService

    def status(self) -> StatusView:
        return StatusView(
            peer_id=self.peer_id,
            profile=self.config.profile,
            data_dir=str(self.config.data_dir),
            network=self.config.network,
            listen_addrs=self.transport.listen_addrs(),
            peers=sum(1 for p in self.transport.peers() if p.connected),
            entries=self.engine.progress.total(),
            recipes=self.store.recipe_count(),
            digest=self.store.digest(),
        )

    def list_recipes(self) -> list[RecipeView]:
        return [recipe_view(state) for state in self.store.visible_recipes()]

    async def create_recipe(self, name: str, ingredients: str, instructions: str) -> RecipeView:
        try:
            fields = validate_fields(name, ingredients, instructions)
        except LocalError as exc:
            raise UserError(str(exc)) from exc
        me = self.engine.me

        def make(seq: int) -> Op:
            return Op("create", make_recipe_id(me, seq), None, fields)

        return recipe_view(await self.append("create", make))

    async def publish_recipe(self, recipe_id: str) -> RecipeView:
        state = self._own_recipe(recipe_id)
        if state.published:
            return recipe_view(state)
        op = Op("publish", state.id, state.create_seq)
        return recipe_view(await self.append("publish", lambda _seq: op))

    async def delete_recipe(self, recipe_id: str) -> None:
        state = self._own_recipe(recipe_id)
        op = Op("delete", state.id, state.create_seq)
        await self.append("delete", lambda _seq: op)

    def list_peers(self) -> list[PeerView]:
        return self.transport.peers()

    def sync_progress(self) -> dict[str, dict[str, dict[str, int]]]:
        progress = self.engine.progress
        mine = {
            peer_id_from_public_key(origin): {
                "held": progress.count(origin),
                "known": progress.count(origin),
            }
            for origin in progress.origins()
            if progress.count(origin)
        }
        answer: dict[str, dict[str, dict[str, int]]] = {"self": mine}
        claims = self.engine.peer_claims()
        for peer in self.engine.connected_peers():
            theirs = claims.get(peer, {})
            origins = set(theirs) | {o for o in progress.origins() if progress.count(o)}
            answer[peer] = {
                peer_id_from_public_key(origin): {
                    "held": theirs.get(origin, 0),
                    "known": max(theirs.get(origin, 0), progress.count(origin)),
                }
                for origin in origins
            }
        return answer

    async def remote_published(
        self, peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        return await self.transport.remote_published(peer_prefix, timeout)

    async def stop(self) -> None:
        self.stop_requested.set()


def allowed_origins(allow_peers: frozenset[str], me: bytes) -> Callable[[bytes], bool]:
    """In a closed network, accept entries authored by listed peers (and us) only."""
    allowed = {public_key_from_peer_id(peer) for peer in allow_peers} | {me}
    return allowed.__contains__


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
