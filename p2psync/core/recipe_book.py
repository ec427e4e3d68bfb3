"""What one batch of accepted entries does to the recipe book, computed once for every store.

Next to the recipe states a store keeps two running totals, so that a status
request costs nothing instead of a scan of a million recipes: the digest
accumulator (see `recipes.digest`) and the number of visible recipes. A batch
changes them only through the recipes its ops touch, so a store loads those
(`touched_recipe_ids`), asks `merge_entries` for their new states and totals,
and writes the lot in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from p2psync.core.acceptance import authorised_op
from p2psync.core.actions import Accepted
from p2psync.core.entry import decode_entry
from p2psync.core.recipes import DIGEST_MODULUS, RecipeState, digest_hex, merge, recipe_hash


@dataclass(frozen=True, slots=True)
class BookTotals:
    """The running totals of a recipe book; all zero for an empty book."""

    digest_sum: int = 0  # sum (mod DIGEST_MODULUS) of recipe_hash over the visible recipes
    visible: int = 0  # number of visible recipes

    def digest(self) -> str:
        return digest_hex(self.digest_sum)


@dataclass(frozen=True, slots=True)
class StoreSummary:
    """Entry count and recipe totals as of one commit.

    Stores replace it in one assignment after each commit, so a reader on
    another thread (the API, while a commit runs in a worker) never pairs the
    entry count of one commit with the digest of the one before.
    """

    entries: int
    totals: BookTotals

    @property
    def recipes(self) -> int:
        return self.totals.visible

    @property
    def digest(self) -> str:
        return self.totals.digest()


@dataclass(frozen=True, slots=True)
class BookChange:
    recipes: dict[str, RecipeState]  # the new state of every recipe the batch touches
    totals: BookTotals  # the book's totals once those states replace the stored ones


def touched_recipe_ids(entries: Iterable[Accepted]) -> list[str]:
    """The ids of the recipes that `entries` change, each once: the rows to load."""
    return list(dict.fromkeys(a.op.recipe_id for a in entries if a.op is not None))


def merge_entries(
    entries: Iterable[Accepted], stored: Mapping[str, RecipeState], totals: BookTotals
) -> BookChange:
    """Merge the ops of `entries` into the book whose totals are `totals`.

    `stored` holds the current state of every touched recipe the store has
    (`touched_recipe_ids` names them; other recipes in it are ignored). Pure:
    nothing is written, and an exception leaves the book as it was.
    """
    merged: dict[str, RecipeState] = {}
    for accepted in entries:
        op = accepted.op
        if op is None:
            continue
        recipe_id = op.recipe_id
        state = merged[recipe_id] if recipe_id in merged else stored.get(recipe_id)
        merged[recipe_id] = merge(state, accepted.entry, op)
    # Each recipe as stored before and after the whole batch, not per op: the
    # states in between are never stored, so their hashes never enter the sum.
    digest_sum, visible = totals.digest_sum, totals.visible
    for recipe_id, after in merged.items():
        before = stored.get(recipe_id)
        if before is not None and before.visible:
            digest_sum -= recipe_hash(before)
            visible -= 1
        if after.visible:
            digest_sum += recipe_hash(after)
            visible += 1
    return BookChange(merged, BookTotals(digest_sum % DIGEST_MODULUS, visible))


@dataclass(frozen=True, slots=True)
class AuthorRebuild:
    recipes: dict[str, RecipeState]  # the author's recipes as its counted entries make them
    removed: list[str]  # the author's stored recipes no counted entry makes any more
    totals: BookTotals


def rebuild_author(
    counted: Iterable[Accepted], stored: Mapping[str, RecipeState], totals: BookTotals
) -> AuthorRebuild:
    """An author's recipes made again from the entries that still count.

    Used when the author is proven forked (see core/forks.py): only its
    entries below the forked seq count. `stored` holds every recipe of that
    author now in the book; only the author can change its recipes, so no
    other recipe moves.
    """
    merged: dict[str, RecipeState] = {}
    for accepted in counted:
        op = accepted.op
        if op is not None:
            merged[op.recipe_id] = merge(merged.get(op.recipe_id), accepted.entry, op)
    digest_sum, visible = totals.digest_sum, totals.visible
    for before in stored.values():
        if before.visible:
            digest_sum -= recipe_hash(before)
            visible -= 1
    for after in merged.values():
        if after.visible:
            digest_sum += recipe_hash(after)
            visible += 1
    removed = [recipe_id for recipe_id in stored if recipe_id not in merged]
    return AuthorRebuild(merged, removed, BookTotals(digest_sum % DIGEST_MODULUS, visible))


def counted_entries(raws: Iterable[bytes]) -> list[Accepted]:
    """Stored raw entries of one author as Accepted, their ops checked as on receipt."""
    counted = []
    for raw in raws:
        entry = decode_entry(raw)
        op, _ = authorised_op(entry, None)
        counted.append(Accepted(entry, op))
    return counted
