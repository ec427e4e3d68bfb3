"""An in-memory Store for the simulator and unit tests."""

from __future__ import annotations

from collections.abc import Iterable

from pyroaring import BitMap64

from p2psync.core.actions import Persist
from p2psync.core.recipe_book import BookTotals, merge_entries
from p2psync.core.recipes import RecipeState


class MemoryStore:
    def __init__(self) -> None:
        self.log: dict[tuple[bytes, int], tuple[bytes, bytes, bytes]] = {}  # raw, hash, prev
        self.recipes: dict[str, RecipeState] = {}
        self.bitmaps: dict[bytes, BitMap64] = {}
        self._last_hlc = 0
        self._totals = BookTotals()

    def entry_links(self, origin: bytes, seqs: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
        found = {}
        for seq in seqs:
            row = self.log.get((origin, seq))
            if row is not None:
                found[seq] = (row[1], row[2])
        return found

    def read_raw(self, origin: bytes, seqs: Iterable[int]) -> dict[int, bytes]:
        found = {}
        for seq in seqs:
            row = self.log.get((origin, seq))
            if row is not None:
                found[seq] = row[0]
        return found

    def load_progress(self) -> dict[bytes, BitMap64]:
        return {origin: BitMap64(bitmap) for origin, bitmap in self.bitmaps.items()}

    def commit(self, persist: Persist) -> None:
        # Merged first: should it raise, nothing has changed yet.
        change = merge_entries(persist.entries, self.recipes, self._totals)
        for accepted in persist.entries:
            entry = accepted.entry
            self.log[(entry.origin, entry.seq)] = (entry.raw, accepted.entry_hash(), entry.prev)
            self._last_hlc = max(self._last_hlc, entry.hlc)
        self.recipes.update(change.recipes)
        self._totals = change.totals
        for origin, bitmap in persist.progress.items():
            self.bitmaps[origin] = BitMap64(bitmap)

    def recipe(self, recipe_id: str) -> RecipeState | None:
        return self.recipes.get(recipe_id)

    def visible_recipes(self) -> list[RecipeState]:
        return [self.recipes[k] for k in sorted(self.recipes) if self.recipes[k].visible]

    def digest(self) -> str:
        return self._totals.digest()

    def recipe_count(self) -> int:
        return self._totals.visible

    def entry_count(self) -> int:
        return len(self.log)

    def last_hlc(self) -> int:
        return self._last_hlc

    def close(self) -> None:
        pass
