"""Editing and unpublishing a recipe: the node's rules, the CRDT, the store."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.core.entry import ZERO_HASH, sign_entry
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, RecipeFields, decode_op, encode_op
from p2psync.core.recipes import RecipeState, merge
from p2psync.core.store import Store
from p2psync.node.config import NodeConfig
from p2psync.node.node import Node
from p2psync.node.service import UserError
from p2psync.store.memory import MemoryStore
from p2psync.store.sqlite import SqliteStore


def make_node(store: Store, key: SigningKey | None = None) -> Node:
    config = NodeConfig(data_dir=Path("/nonexistent"), mdns=False)
    return Node(config, key or SigningKey(b"\x07" * 32), store, Metrics())


async def test_update_changes_only_the_given_fields() -> None:
    node = make_node(MemoryStore())
    recipe = await node.create_recipe("Pancakes", "flour, egg", "whisk")
    renamed = await node.update_recipe(recipe.id, name=" Crêpes ")
    assert (renamed.id, renamed.name, renamed.ingredients, renamed.instructions) == (
        recipe.id,
        "Crêpes",
        "flour, egg",
        "whisk",
    )
    assert renamed.updated > recipe.updated
    both = await node.update_recipe(recipe.id, ingredients="flour, milk", instructions="fry")
    assert (both.name, both.ingredients, both.instructions) == ("Crêpes", "flour, milk", "fry")
    assert node.status().entries == 3
    # Nothing changes: no entry is written.
    same = await node.update_recipe(recipe.id, name="Crêpes")
    assert same == both
    assert node.status().entries == 3


async def test_update_and_unpublish_follow_the_author_rules() -> None:
    store = MemoryStore()
    author = make_node(store, SigningKey(b"\x01" * 32))
    recipe = await author.create_recipe("Soup", "water", "boil")
    other = make_node(store, SigningKey(b"\x02" * 32))
    for call in (
        other.update_recipe(recipe.id, name="Mine now"),
        other.unpublish_recipe(recipe.id),
    ):
        with pytest.raises(UserError) as error:
            await call
        assert error.value.status == 403
    for call in (author.update_recipe("nope", name="x"), author.unpublish_recipe("nope")):
        with pytest.raises(UserError) as error:
            await call
        assert error.value.status == 404
    with pytest.raises(UserError) as error:
        await author.update_recipe(recipe.id, name="  ")
    assert error.value.status == 400
    with pytest.raises(UserError) as error:
        await author.update_recipe(recipe.id, instructions="x" * 9000)
    assert error.value.status == 400
    await author.delete_recipe(recipe.id)
    with pytest.raises(UserError) as error:
        await author.update_recipe(recipe.id, name="back")
    assert error.value.status == 404


async def test_publish_unpublish_publish_survives_a_reopened_store(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "db")
    node = make_node(store)
    recipe = await node.create_recipe("Tea", "leaves", "steep")
    assert not (await node.unpublish_recipe(recipe.id)).published  # already: no entry
    assert node.status().entries == 1
    assert (await node.publish_recipe(recipe.id)).published
    digest_published = node.status().digest
    assert not (await node.unpublish_recipe(recipe.id)).published
    assert node.status().digest != digest_published
    assert node.status().entries == 3
    store.close()
    reopened = SqliteStore.open(tmp_path / "db")
    try:
        state = reopened.recipe(recipe.id)
        assert state is not None and not state.published and state.published_seq == 2
        again = make_node(reopened)
        assert (await again.publish_recipe(recipe.id)).published
        assert again.status().digest == digest_published
    finally:
        reopened.close()


def test_published_is_last_writer_wins_by_seq_in_any_order() -> None:
    key = SigningKey(b"\x31" * 32)
    origin = bytes(key.verify_key)
    fields = RecipeFields("a", "b", "c")
    kinds = ["create", "publish", "unpublish", "publish", "unpublish"]
    entries = []
    prev = ZERO_HASH
    for seq, kind in enumerate(kinds):
        rid = make_recipe_id(origin, 0)
        op = Op("create", rid, None, fields) if kind == "create" else Op(kind, rid, 0)  # type: ignore[arg-type]
        entry = sign_entry(key, seq, prev, 1000 + seq, encode_op(op))
        prev = entry.hash()
        entries.append((entry, decode_op(entry.op)))
    for cut in range(1, len(kinds) + 1):
        expected = next((k == "publish" for k in reversed(kinds[1:cut])), False)
        results = set()
        for order in itertools.permutations(entries[:cut]):
            state: RecipeState | None = None
            for entry, op in order:
                state = merge(state, entry, op)
            assert state is not None
            results.add((state.published, state.published_seq))
        assert len(results) == 1
        assert results.pop()[0] is expected


def test_unpublish_is_an_op_kind_peers_decode() -> None:
    rid = make_recipe_id(b"\x01" * 32, 0)
    op = Op("unpublish", rid, 0)
    assert decode_op(encode_op(op)) == op


async def test_wait_for_change_misses_no_commit() -> None:
    node = make_node(MemoryStore())
    seen = await node.wait_for_change(-1, 0)
    assert await node.wait_for_change(seen, 0.01) == seen  # nothing happened: timeout
    await node.create_recipe("Tea", "leaves", "steep")
    # The commit came before we waited: we return at once with the new count.
    with trio.fail_after(1):
        assert await node.wait_for_change(seen, 30) == seen + 1
