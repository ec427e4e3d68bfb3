"""`ls r all`: ask connected peers for their published recipes, answer their asks.

One QUERY on the query topic reaches every peer; each answers with a
QUERY_REPLY on its pair topic with us, so only the asker sees the answers.
The wire types are core's (`p2psync.core.query`), not the HTTP API's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from p2psync.core import protocol
from p2psync.core.query import MAX_QUERY_REPLY_RECIPES, PublishedRecipe, Query, QueryReply
from p2psync.core.reasons import Drop
from p2psync.net.host import Libp2pHost
from p2psync.node.observer import Observer
from p2psync.node.service import RecipeView, UserError


@dataclass
class _PendingQuery:
    expected: set[str]
    answers: dict[str, tuple[PublishedRecipe, ...]] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)


class RecipeQueries:
    def __init__(
        self,
        host: Libp2pHost,
        topic: str,
        *,
        send: Callable[[str, bytes], bool],
        published: Callable[[], Sequence[RecipeView]],
        observer: Observer,
        version: Callable[[], object] | None = None,
    ) -> None:
        self._host = host
        self._topic = topic
        self._send = send
        self._published = published
        self._observer = observer
        self._limit = min(protocol.MAX_MESSAGE_BYTES, host.max_payload_bytes)
        self._pending: dict[int, _PendingQuery] = {}
        self._rng = random.Random()
        # `version()` changes whenever the recipes may have: answers between two
        # changes reuse one scan (a scan of 20,000 recipes took 127 ms).
        self._version = version
        self._cached: tuple[object, tuple[PublishedRecipe, ...]] | None = None

    def answer(self, peer: str, query_id: int) -> None:
        """Send `peer` our published recipes, halving the list until it fits a message."""
        version = self._version() if self._version is not None else None
        if version is not None and self._cached is not None and self._cached[0] == version:
            recipes = self._cached[1]
            data = protocol.encode(QueryReply(query_id, recipes))
        else:
            recipes = tuple(
                PublishedRecipe(r.id, r.name, r.ingredients, r.instructions, r.author, r.updated)
                for r in self._published()
                if r.published
            )[:MAX_QUERY_REPLY_RECIPES]
            data = protocol.encode(QueryReply(query_id, recipes))
            while len(data) > self._limit and recipes:
                recipes = recipes[: len(recipes) // 2]
                data = protocol.encode(QueryReply(query_id, recipes))
            if version is not None:
                self._cached = (version, recipes)
        if not self._send(peer, data):
            self._observer.dropped(Drop.QUERY_REPLY_NOT_SENT)

    def answered(self, peer: str, reply: QueryReply) -> None:
        pending = self._pending.get(reply.query_id)
        if pending is not None and peer in pending.expected:
            pending.answers[peer] = reply.recipes
            if set(pending.answers) >= pending.expected:
                pending.done.set()

    async def ask(
        self, connected: list[str], peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        """Ask every connected peer, or the one `peer_prefix` names; answers per peer."""
        if peer_prefix is not None:
            connected = [p for p in connected if p.startswith(peer_prefix)]
            if not connected:
                raise UserError(f"no connected peer id starts with {peer_prefix!r}", status=404)
            if len(connected) > 1:
                raise UserError(f"{peer_prefix!r} matches {len(connected)} peers; type more of it")
        if not connected:
            return {}
        query_id = self._rng.getrandbits(63)
        pending = _PendingQuery(set(connected))
        self._pending[query_id] = pending
        try:
            data = protocol.encode(Query(query_id))
            if peer_prefix is None:
                result = await self._host.publish(self._topic, data)
                if not result:
                    self._observer.dropped(f"publish_{result.reason}")
            elif not self._send(connected[0], data):
                self._observer.dropped(Drop.SEND_FAILED)
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            del self._pending[query_id]
        return {
            peer: [_view(recipe) for recipe in pending.answers[peer]]
            for peer in connected
            if peer in pending.answers
        }


def _view(recipe: PublishedRecipe) -> RecipeView:
    return RecipeView(
        id=recipe.id,
        name=recipe.name,
        ingredients=recipe.ingredients,
        instructions=recipe.instructions,
        author=recipe.author,
        published=True,
        updated=recipe.updated,
    )
