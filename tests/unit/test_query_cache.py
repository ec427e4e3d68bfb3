"""`ls r all` answers reuse one scan of the recipes until they change (issue 12):
each 10-byte QUERY used to scan every recipe (127 ms at 20,000 recipes)."""

from __future__ import annotations

from typing import Any, cast

from p2psync.core import protocol
from p2psync.core.query import QueryReply
from p2psync.net.host import Libp2pHost
from p2psync.node.observer import NullObserver
from p2psync.node.queries import RecipeQueries
from p2psync.node.service import RecipeView


class _Host:
    max_payload_bytes = protocol.MAX_MESSAGE_BYTES


def _recipe(i: int) -> RecipeView:
    return RecipeView(f"r{i:019d}", f"Dish {i}", "rice", "steam", "12D3KooW", True, i)


def test_answers_reuse_one_scan_per_state_version() -> None:
    scans: list[int] = []
    version = ["v1"]
    recipes = [_recipe(i) for i in range(50)]

    def published() -> list[RecipeView]:
        scans.append(1)
        return list(recipes)

    sent: list[tuple[str, bytes]] = []
    queries = RecipeQueries(
        cast(Libp2pHost, _Host()),
        "topic",
        send=lambda peer, data: sent.append((peer, data)) is None,
        published=published,
        observer=NullObserver(),
        version=lambda: version[0],
    )
    for i in range(20):
        queries.answer(f"peer-{i % 3}", i)
    assert len(scans) == 1
    replies: list[Any] = [protocol.decode(data) for _, data in sent]
    assert all(isinstance(r, QueryReply) and len(r.recipes) == 50 for r in replies)
    assert [r.query_id for r in replies] == list(range(20))
    recipes.append(_recipe(99))
    version[0] = "v2"
    queries.answer("peer-0", 100)
    assert len(scans) == 2
    last = protocol.decode(sent[-1][1])
    assert isinstance(last, QueryReply) and len(last.recipes) == 51
