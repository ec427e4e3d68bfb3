"""Our own ops that wait together share one durable commit (node/own_writes.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.core.actions import Persist
from p2psync.core.reasons import Source
from p2psync.core.store import StoreError
from p2psync.node.commit_placement import CommitPlacement
from p2psync.node.config import NodeConfig
from p2psync.node.node import Node
from p2psync.node.service import RecipeView, UserError
from p2psync.store.memory import MemoryStore


class SlowStore(MemoryStore):
    """Commits in the worker thread wait until released, so requests pile up."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[Persist] = []
        self.release = threading.Event()
        self.fail = False

    def commit(self, persist: Persist) -> None:
        self.commits.append(persist)
        self.release.wait(10)
        if self.fail:
            raise StoreError("could not store: disk is full; nothing was written")
        super().commit(persist)


def make_node(store: MemoryStore) -> Node:
    config = NodeConfig(data_dir=Path("/nonexistent"), mdns=False)
    node = Node(config, SigningKey(b"\x09" * 32), store, Metrics())
    # SlowStore's commits wait for the test's trio code: never in its thread.
    node.commit_placement = CommitPlacement(first_probe_after=1_000_000)
    return node


async def _create_many(node: Node, store: SlowStore, names: list[str]) -> dict[str, object]:
    results: dict[str, object] = {}

    async def create(name: str) -> None:
        try:
            results[name] = await node.create_recipe(name, "egg", "fry")
        except UserError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create, names[0])
        while not store.commits:  # the first request's commit is under way
            await trio.sleep(0.01)
        for name in names[1:]:
            nursery.start_soon(create, name)
        await trio.sleep(0.05)  # the others queue behind it
        store.release.set()
    return results


async def test_requests_that_wait_together_share_one_commit() -> None:
    store = SlowStore()
    node = make_node(store)
    names = [f"dish {i}" for i in range(6)]
    results = await _create_many(node, store, names)
    assert [len(p.entries) for p in store.commits] == [1, 5]
    assert all(p.source is Source.LOCAL for p in store.commits)
    recipes = [results[name] for name in names]
    assert all(isinstance(r, RecipeView) for r in recipes)
    assert {r.name for r in recipes if isinstance(r, RecipeView)} == set(names)
    assert len({r.id for r in recipes if isinstance(r, RecipeView)}) == 6
    assert sorted(node.engine._progress.held(node.engine.me)) == list(range(6))
    assert store.entry_count() == 6 and len(node.list_recipes()) == 6


async def test_a_refused_group_commit_refuses_every_op_of_it() -> None:
    store = SlowStore()
    node = make_node(store)
    store.fail = True
    results = await _create_many(node, store, ["a", "b", "c"])
    assert [len(p.entries) for p in store.commits] == [1, 2]
    assert all(isinstance(r, UserError) and r.status == 503 for r in results.values())
    assert node.engine.entry_count() == 0 and store.entry_count() == 0
    store.fail = False
    recipe = await node.create_recipe("after", "egg", "fry")
    assert recipe.name == "after"
    assert sorted(node.engine._progress.held(node.engine.me)) == [0]  # no hole left


async def test_an_op_too_large_to_sign_is_refused_alone() -> None:
    store = SlowStore()
    store.release.set()
    node = make_node(store)
    huge = "\U0001f372" * 8000  # within the character limits, past MAX_OP_BYTES
    results: dict[str, object] = {}

    async def create(name: str, instructions: str) -> None:
        try:
            results[name] = await node.create_recipe(name, "egg", instructions)
        except UserError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create, "fine", "fry")
        nursery.start_soon(create, "huge", huge)
        nursery.start_soon(create, "fine too", "fry")
    error = results["huge"]
    assert isinstance(error, UserError) and error.status == 400
    assert "too large" in str(error)
    assert isinstance(results["fine"], RecipeView) and isinstance(results["fine too"], RecipeView)
    assert store.entry_count() == 2


async def test_a_cancelled_request_leaves_nothing_queued() -> None:
    store = SlowStore()
    node = make_node(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.create_recipe, "first", "egg", "fry")
        while not store.commits:
            await trio.sleep(0.01)
        with trio.move_on_after(0.05):
            await node.create_recipe("given up", "egg", "fry")  # waits for the lock
        store.release.set()
    assert [r.name for r in node.list_recipes()] == ["first"]
    with pytest.raises(UserError):
        await node.publish_recipe("0" * 20)


async def test_status_during_a_commit_shows_the_book_of_the_last_commit_whole() -> None:
    # Our op counts in the engine before its commit (in a worker thread here) lands;
    # a status read meanwhile once paired that count with the old digest, a
    # state no node ever had (it made tests/e2e/test_crash_resume.py flaky).
    store = SlowStore()
    node = make_node(store)
    store.release.set()
    await node.create_recipe("first", "egg", "fry")
    before = node.status()
    store.release.clear()

    async def create_second() -> None:
        await node.create_recipe("second", "egg", "fry")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create_second)
        while len(store.commits) < 2:  # the second commit is under way
            await trio.sleep(0.01)
        during = node.status()
        store.release.set()
    after = node.status()
    assert (during.entries, during.recipes, during.digest) == (
        before.entries,
        before.recipes,
        before.digest,
    )
    assert after.entries == before.entries + 1 == 2 and after.digest != before.digest
