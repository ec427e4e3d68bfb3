"""The node over an in-memory store: local writes, errors, store failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.core.actions import Persist
from p2psync.core.store import StoreError
from p2psync.node.config import NodeConfig
from p2psync.node.node import Node
from p2psync.node.service import UserError
from p2psync.store.memory import MemoryStore


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def commit(self, persist: Persist) -> None:
        if self.fail:
            raise StoreError("could not store: disk is full; nothing was written")
        super().commit(persist)


def make_node(store: MemoryStore, key: SigningKey | None = None) -> Node:
    config = NodeConfig(data_dir=Path("/nonexistent"), mdns=False)
    return Node(config, key or SigningKey(b"\x07" * 32), store, Metrics())


async def test_create_publish_delete_round_trip() -> None:
    node = make_node(MemoryStore())
    recipe = await node.create_recipe(" Pancakes ", "flour,egg", "whisk")
    assert recipe.name == "Pancakes" and not recipe.published
    published = await node.publish_recipe(recipe.id)
    assert published.id == recipe.id and published.published
    await node.delete_recipe(recipe.id)
    assert node.list_recipes() == []
    with pytest.raises(UserError) as missing:
        await node.publish_recipe(recipe.id)
    assert missing.value.status == 404
    assert node.status().entries == 3


async def test_bad_fields_are_a_user_error() -> None:
    node = make_node(MemoryStore())
    with pytest.raises(UserError) as error:
        await node.create_recipe("", "x", "y")
    assert error.value.status == 400
    with pytest.raises(UserError):
        await node.create_recipe("x" * 201, "x", "y")
    assert node.status().entries == 0


async def test_only_the_author_may_change_a_recipe() -> None:
    store = MemoryStore()
    author = make_node(store, SigningKey(b"\x01" * 32))
    recipe = await author.create_recipe("Soup", "water", "boil")
    other = make_node(store, SigningKey(b"\x02" * 32))
    with pytest.raises(UserError) as error:
        await other.publish_recipe(recipe.id)
    assert error.value.status == 403


async def test_failed_commit_is_refused_and_leaves_progress_consistent() -> None:
    store = FlakyStore()
    node = make_node(store)
    await node.create_recipe("One", "a", "b")
    store.fail = True
    with pytest.raises(UserError) as error:
        await node.create_recipe("Two", "a", "b")
    assert error.value.status == 503 and "disk is full" in str(error.value)
    store.fail = False
    await node.create_recipe("Three", "a", "b")
    me = node.engine.me
    # The failed op left no hole: seqs are 0 and 1, and the chain links.
    assert sorted(seq for origin, seq in store.log if origin == me) == [0, 1]
    assert set(store.bitmaps[me]) == {0, 1}
    assert store.log[(me, 1)][2] == store.log[(me, 0)][1]
    assert [r.name for r in node.list_recipes()] in (["One", "Three"], ["Three", "One"])


async def test_closed_network_rejects_entries_of_unlisted_authors() -> None:
    from p2psync.core import protocol
    from p2psync.core.entry import ZERO_HASH, sign_entry
    from p2psync.core.ids import make_recipe_id, peer_id_from_seed
    from p2psync.core.ops import Op, RecipeFields, encode_op

    friend_seed, stranger_seed = b"\x11" * 32, b"\x12" * 32
    config = NodeConfig(
        data_dir=Path("/nonexistent"),
        mdns=False,
        allow_peers=frozenset({peer_id_from_seed(friend_seed)}),
    )
    metrics = Metrics()
    node = Node(config, SigningKey(b"\x07" * 32), MemoryStore(), metrics)

    def live_entry(seed: bytes) -> bytes:
        key = SigningKey(seed)
        op = Op(
            "create", make_recipe_id(bytes(key.verify_key), 0), None, RecipeFields("n", "i", "s")
        )
        entry = sign_entry(key, 0, ZERO_HASH, 1 << 40, encode_op(op))
        return protocol.encode(protocol.Live((entry.raw,)))

    node.run_actions(node.engine.live_received("relay", live_entry(stranger_seed), node.now()))
    assert node.status().entries == 0
    node.run_actions(node.engine.live_received("relay", live_entry(friend_seed), node.now()))
    assert node.status().entries == 1
    rendered = metrics.render()[0].decode()
    assert 'p2psync_entries_rejected_total{reason="not_allowed"} 1.0' in rendered


async def test_an_op_naming_a_huge_create_seq_harms_nothing(tmp_path: Path) -> None:
    """Found in review: c = 2**63 passed validation and crashed SQLite's int64."""
    import orjson

    from p2psync.core import protocol
    from p2psync.core.entry import ZERO_HASH, sign_entry
    from p2psync.core.ids import make_recipe_id
    from p2psync.store.sqlite import SqliteStore

    store = SqliteStore.open(tmp_path / "db")
    metrics = Metrics()
    node = Node(NodeConfig(data_dir=tmp_path, mdns=False), SigningKey(b"\x07" * 32), store, metrics)
    attacker = SigningKey(b"\x13" * 32)
    origin = bytes(attacker.verify_key)
    for create_seq in (2**63, 2**48, 5):
        op = orjson.dumps(
            {"k": "publish", "id": make_recipe_id(origin, create_seq), "c": create_seq}
        )
        entry = sign_entry(attacker, 0, ZERO_HASH, 1 << 40, op)
        node.run_actions(
            node.engine.live_received(
                "attacker", protocol.encode(protocol.Live((entry.raw,))), node.now()
            )
        )
        # Each is refused as an op (bad, or naming a create after itself) but
        # kept as a signed entry; the first one is the only new entry.
    assert node.status().entries == 1
    assert node.list_recipes() == []
    rendered = metrics.render()[0].decode()
    assert 'p2psync_entries_rejected_total{reason="bad_op"} 1.0' in rendered
    store.close()
