"""The recipe book: a state-based CRDT folded from log entries.

Only a recipe's author writes it (checked before merge, see ops.py), so the
author's own HLC order decides: fields are last-writer-wins by (hlc, seq),
published is last-writer-wins by seq among publish and unpublish ops (one
author's ops are ordered by its seq), and delete is a tombstone that
hides the recipe for good. Each rule is a max or an or, hence commutative,
associative and idempotent: any arrival order, with any duplicates, gives the
same state, which is what lets every node converge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import NamedTuple

import orjson

from p2psync.core.entry import Entry
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, RecipeFields

DIGEST_BYTES = 16
DIGEST_MODULUS = 1 << (8 * DIGEST_BYTES)


class RecipeState(NamedTuple):
    id: str
    author: bytes
    create_seq: int  # seq of the author's create entry; every later op names it
    fields: RecipeFields | None  # None until a create or update has been seen
    fields_version: tuple[int, int]  # (hlc, seq) of the op that set `fields`
    published: bool
    deleted: bool
    updated: int  # greatest hlc of any op merged
    published_seq: int = -1  # seq of the publish/unpublish op that set `published`; -1: none

    @property
    def visible(self) -> bool:
        return self.fields is not None and not self.deleted


def is_by_author(entry: Entry, op: Op) -> bool:
    """True when the op's recipe id was made by this entry's origin."""
    create_seq = entry.seq if op.kind == "create" else op.create_seq
    assert create_seq is not None  # decode_op guarantees it for non-create ops
    if create_seq > entry.seq:
        return False  # an author's create always comes before its other ops
    return op.recipe_id == make_recipe_id(entry.origin, create_seq)


def merge(state: RecipeState | None, entry: Entry, op: Op) -> RecipeState:
    """Fold one authorised op into a recipe's state (pure, order-independent)."""
    if state is None and op.kind == "create":
        # The common case by far (a backfill of fresh recipes): build it directly.
        return RecipeState(
            op.recipe_id, entry.origin, entry.seq, op.fields, (entry.hlc, entry.seq),
            False, False, entry.hlc,
        )  # fmt: skip
    if state is None:
        create_seq = entry.seq if op.kind == "create" else op.create_seq
        assert create_seq is not None
        state = RecipeState(
            id=op.recipe_id,
            author=entry.origin,
            create_seq=create_seq,
            fields=None,
            fields_version=(-1, -1),
            published=False,
            deleted=False,
            updated=0,
        )
    fields, version = state.fields, state.fields_version
    if op.fields is not None and (entry.hlc, entry.seq) > version:
        fields, version = op.fields, (entry.hlc, entry.seq)
    published, published_seq = state.published, state.published_seq
    if op.kind in ("publish", "unpublish") and entry.seq > published_seq:
        published, published_seq = op.kind == "publish", entry.seq
    return RecipeState(
        state.id,
        state.author,
        state.create_seq,
        fields,
        version,
        published,
        state.deleted or op.kind == "delete",
        max(state.updated, entry.hlc),
        published_seq,
    )


def recipe_hash(recipe: RecipeState) -> int:
    """A 128-bit hash of what a user sees of one visible recipe."""
    assert recipe.fields is not None
    canonical = orjson.dumps(
        [
            recipe.id,
            recipe.fields.name,
            recipe.fields.ingredients,
            recipe.fields.instructions,
            recipe.author.hex(),
            recipe.published,
        ]
    )
    raw = hashlib.blake2b(canonical, digest_size=DIGEST_BYTES, person=b"p2psync-digest").digest()
    return int.from_bytes(raw, "big")


def digest_hex(accumulator: int) -> str:
    return f"{accumulator % DIGEST_MODULUS:032x}"


def digest(visible: Iterable[RecipeState]) -> str:
    """Hash of what a user sees: equal digests mean identical recipe books.

    The sum (mod 2**128) of per-recipe hashes: independent of order, so the
    stores keep it up to date per change (see `recipe_book.merge_entries`)
    instead of rehashing a million recipes for every status request.
    """
    return digest_hex(sum(recipe_hash(r) for r in visible if r.visible))
