"""Executor.run_grouped: live entries that arrive together share one commit."""

from __future__ import annotations

from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.core import protocol
from p2psync.core.actions import Action, Persist, Rejected
from p2psync.core.engine import EngineConfig, SyncEngine
from p2psync.core.entry import ZERO_HASH, sign_entry
from p2psync.core.hlc import Now, pack
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, RecipeFields, encode_op
from p2psync.core.progress import Progress
from p2psync.core.reasons import Reason, Source
from p2psync.core.store import StoreError
from p2psync.node.executor import Executor
from p2psync.store.memory import MemoryStore

NOW = Now(100.0, 1_760_000_000_000)


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.commits: list[Persist] = []
        self.fail = False

    def commit(self, persist: Persist) -> None:
        self.commits.append(persist)
        if self.fail:
            raise StoreError("disk is full; nothing was written")
        super().commit(persist)


def _live_messages(key: SigningKey, count: int) -> list[bytes]:
    origin = bytes(key.verify_key)
    prev, out = ZERO_HASH, []
    for seq in range(count):
        fields = RecipeFields(f"dish {seq}", "egg", "fry")
        op = Op("create", make_recipe_id(origin, seq), None, fields)
        entry = sign_entry(key, seq, prev, pack(NOW.wall_ms - 1000, seq), encode_op(op))
        prev = entry.hash()
        out.append(protocol.encode(protocol.Live((entry.raw,))))
    return out


def _setup() -> tuple[SyncEngine, CountingStore, Executor, Metrics]:
    store = CountingStore()
    engine = SyncEngine(SigningKey(b"\x05" * 32), Progress({}), store, NOW, EngineConfig())
    metrics = Metrics()
    return engine, store, Executor(engine, store, metrics), metrics


def test_a_backlog_of_live_entries_is_one_commit() -> None:
    engine, store, executor, _ = _setup()
    author = SigningKey(b"\x06" * 32)
    messages = _live_messages(author, 5)
    batches = [engine.live_received("relay", m, NOW) for m in messages]
    batches.append(engine.live_received("relay", b"\xffjunk", NOW))  # no Persist: runs as is
    executor.run_grouped(batches, NOW)
    assert len(store.commits) == 1
    assert [a.entry.seq for a in store.commits[0].entries] == [0, 1, 2, 3, 4]
    assert store.commits[0].source is Source.LIVE
    origin = bytes(author.verify_key)
    assert store.load_progress() == {origin: engine._progress.held(origin)}
    assert len(store.visible_recipes()) == 5 and store.entry_count() == 5
    assert executor.store_error is None


def test_a_failed_group_commit_forgets_every_entry_of_it() -> None:
    engine, store, executor, _ = _setup()
    author = SigningKey(b"\x06" * 32)
    messages = _live_messages(author, 3)
    store.fail = True
    executor.run_grouped([engine.live_received("relay", m, NOW) for m in messages], NOW)
    assert len(store.commits) == 1 and store.entry_count() == 0
    assert engine.entry_count() == 0  # the engine forgot them: anti-entropy brings them again
    assert executor.store_error is not None
    store.fail = False
    executor.run_grouped([engine.live_received("relay", m, NOW) for m in messages], NOW)
    assert store.entry_count() == 3 and engine.entry_count() == 3


def test_lists_of_other_shapes_run_one_by_one() -> None:
    engine, store, executor, _ = _setup()
    author = SigningKey(b"\x06" * 32)
    first, second = (engine.live_received("relay", m, NOW) for m in _live_messages(author, 2))
    # A Persist that is not first in its list: grouping would run the action
    # before it after it, so nothing is grouped.
    reordered: list[Action] = [Rejected("relay", Reason.BAD_OP, 1, "an op"), *second]
    executor.run_grouped([first, reordered], NOW)
    assert len(store.commits) == 2 and store.entry_count() == 2
    # Our own entries are never grouped: each is acknowledged to a user on its own.
    own = [engine.append_local(NOW, [_op(engine, i)], publish=False) for i in range(2)]
    executor.run_grouped(own, NOW)
    assert len(store.commits) == 4 and store.entry_count() == 4


def _op(engine: SyncEngine, i: int) -> Op:
    recipe_id = make_recipe_id(engine.me, engine.next_own_seq())
    return Op("create", recipe_id, None, RecipeFields(f"mine {i}", "salt", "stir"))
