"""The recipe query (`ls r all`): a peer asks, the others list their published recipes.

Its own validated types, independent of the HTTP API's JSON: the wire body
of a QUERY_REPLY is an orjson list of objects with the keys below, each
checked for type and length before anything uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from p2psync.core.errors import RemoteError
from p2psync.core.ops import MAX_INGREDIENTS_CHARS, MAX_INSTRUCTIONS_CHARS, MAX_NAME_CHARS
from p2psync.core.reasons import Reason

MAX_QUERY_REPLY_RECIPES = 2_000
MAX_ID_CHARS = 64  # recipe ids are 20 characters, peer ids about 52
_STRING_LIMITS = {
    "id": MAX_ID_CHARS,
    "name": MAX_NAME_CHARS,
    "ingredients": MAX_INGREDIENTS_CHARS,
    "instructions": MAX_INSTRUCTIONS_CHARS,
    "author": MAX_ID_CHARS,
}
_MAX_HLC = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class PublishedRecipe:
    """One published recipe as a peer describes it (unsigned: for display only)."""

    id: str
    name: str
    ingredients: str
    instructions: str
    author: str  # peer id
    updated: int  # hlc


@dataclass(frozen=True, slots=True)
class Query:
    """Ask a peer for its published recipes."""

    query_id: int


@dataclass(frozen=True, slots=True)
class QueryReply:
    query_id: int
    recipes: tuple[PublishedRecipe, ...]


def encode_recipes(recipes: Sequence[PublishedRecipe]) -> bytes:
    return orjson.dumps(
        [
            {
                "id": r.id,
                "name": r.name,
                "ingredients": r.ingredients,
                "instructions": r.instructions,
                "author": r.author,
                "published": True,
                "updated": r.updated,
            }
            for r in recipes
        ]
    )


def decode_recipes(body: bytes) -> tuple[PublishedRecipe, ...]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RemoteError("query reply is not JSON", reason=Reason.MALFORMED) from exc
    if not isinstance(items, list) or len(items) > MAX_QUERY_REPLY_RECIPES:
        raise RemoteError("query reply is not a bounded list", reason=Reason.MALFORMED)
    return tuple(_decode_recipe(item) for item in items)


def _decode_recipe(item: object) -> PublishedRecipe:
    if not isinstance(item, dict):
        raise RemoteError("query reply holds a non-object", reason=Reason.MALFORMED)
    strings: dict[str, str] = {}
    for key, limit in _STRING_LIMITS.items():
        value = item.get(key)
        if not isinstance(value, str) or len(value) > limit:
            raise RemoteError(f"query reply recipe has no valid {key!r}", reason=Reason.MALFORMED)
        strings[key] = value
    updated = item.get("updated", 0)
    if type(updated) is not int or not 0 <= updated <= _MAX_HLC:
        raise RemoteError("query reply recipe has no valid 'updated'", reason=Reason.MALFORMED)
    return PublishedRecipe(updated=updated, **strings)
