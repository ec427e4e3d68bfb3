"""merge_entries: one batch's effect on the recipe book, whatever the order and batching."""

from __future__ import annotations

import itertools
import random
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.core.actions import Accepted
from p2psync.core.recipe_book import BookChange, BookTotals, merge_entries, touched_recipe_ids
from p2psync.core.recipes import RecipeState, digest
from tests.store.store_helper import entry_stream

Book = dict[str, RecipeState]


@cache
def _stream(seed: int) -> tuple[Accepted, ...]:
    # Signing is the slow part: sign each seed's entries once for all examples.
    return tuple(itertools.islice(entry_stream(seed), 120))


def _commit(book: Book, totals: BookTotals, batch: list[Accepted]) -> BookTotals:
    """Do what a store does: load the touched rows, merge, save the result."""
    stored = {rid: book[rid] for rid in touched_recipe_ids(batch) if rid in book}
    change = merge_entries(batch, stored, totals)
    assert list(change.recipes) == touched_recipe_ids(batch)
    book.update(change.recipes)
    return change.totals


def _assert_totals_from_scratch(book: Book, totals: BookTotals) -> None:
    assert totals.digest() == digest(book.values())
    assert totals.visible == sum(state.visible for state in book.values())


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 3),
    size=st.integers(0, 120),
    rng=st.randoms(use_true_random=False),
    cut_every=st.integers(1, 40),
    duplicates=st.lists(st.integers(0, 119), max_size=20),
)
def test_book_is_independent_of_order_and_batching(
    seed: int, size: int, rng: random.Random, cut_every: int, duplicates: list[int]
) -> None:
    entries = list(_stream(seed)[:size])
    in_order: Book = {}
    in_order_totals = _commit(in_order, BookTotals(), entries)
    _assert_totals_from_scratch(in_order, in_order_totals)

    # Shuffled (ops before their create, updates out of hlc order), with
    # entries delivered twice, and cut into batches of any size.
    shuffled = entries + [entries[i % size] for i in duplicates if size]
    rng.shuffle(shuffled)
    book: Book = {}
    totals = BookTotals()
    for start in range(0, len(shuffled), cut_every):
        totals = _commit(book, totals, shuffled[start : start + cut_every])
        _assert_totals_from_scratch(book, totals)
    assert book == in_order
    assert totals == in_order_totals


def test_totals_follow_a_recipe_that_appears_and_is_deleted() -> None:
    entries = list(_stream(0))
    delete = next(a for a in entries if a.op is not None and a.op.kind == "delete")
    assert delete.op is not None
    origin, create_seq = delete.entry.origin, delete.op.create_seq
    create = next(a for a in entries if (a.entry.origin, a.entry.seq) == (origin, create_seq))
    assert create.op is not None and create.op.recipe_id == delete.op.recipe_id

    book: Book = {}
    totals = _commit(book, BookTotals(), [create])
    assert totals.visible == 1 and totals.digest() == digest(book.values()) != digest([])
    # Deleting takes its hash back out of the sum: the empty book again.
    assert _commit(book, totals, [delete]) == BookTotals()
    # Create and delete in one batch never count the recipe at all.
    assert merge_entries([create, delete], {}, BookTotals()).totals == BookTotals()


def test_entries_without_ops_change_nothing_and_inputs_stay_untouched() -> None:
    entries = list(_stream(1))
    blank = [a for a in entries if a.op is None]
    assert blank  # the stream mixes in op-less entries
    totals = BookTotals(digest_sum=12345, visible=7)
    assert touched_recipe_ids(blank) == []
    assert merge_entries(blank, {}, totals) == BookChange({}, totals)

    book: Book = {}
    before_totals = _commit(book, BookTotals(), entries[:60])
    stored = dict(book)
    change = merge_entries(entries[60:], stored, before_totals)
    assert stored == book  # nothing written through the mapping it was given
    # Recipes the batch does not touch are neither returned nor counted again.
    assert change.recipes.keys() == set(touched_recipe_ids(entries[60:]))
    book.update(change.recipes)
    _assert_totals_from_scratch(book, change.totals)
