"""An in-memory Store for the simulator and unit tests."""

from __future__ import annotations

from collections.abc import Iterable

from pyroaring import BitMap64

from p2psync.core.actions import Persist
from p2psync.core.forks import ForkProof
from p2psync.core.hlc import wall_ms_of
from p2psync.core.recipe_book import (
    BookTotals,
    StoreSummary,
    counted_entries,
    merge_entries,
    rebuild_author,
)
from p2psync.core.recipes import RecipeState


class MemoryStore:
    def __init__(self) -> None:
        self.log: dict[tuple[bytes, int], tuple[bytes, bytes, bytes]] = {}  # raw, hash, prev
        self.recipes: dict[str, RecipeState] = {}
        self.bitmaps: dict[bytes, BitMap64] = {}
        self._last_hlc = 0
        self._hlcs: dict[tuple[bytes, int], int] = {}
        self._totals = BookTotals()
        self._summary = StoreSummary(0, self._totals)  # replaced whole, as SqliteStore does
        self.forks: dict[bytes, ForkProof] = {}
        self._raw_bytes = 0  # of the entries in `log`: the size_bytes estimate

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
            self._last_hlc = max(self._last_hlc, entry.hlc)
            key = (entry.origin, entry.seq)
            if key in self.log:
                continue  # the first entry stored for a seq stays (SQLite: INSERT OR IGNORE)
            self._raw_bytes += len(entry.raw)
            self.log[key] = (entry.raw, accepted.entry_hash(), entry.prev)
            self._hlcs[key] = entry.hlc
        self.recipes.update(change.recipes)
        self._totals = change.totals
        self._summary = StoreSummary(len(self.log), self._totals)
        # Like SqliteStore: what it held plus the entries, in any commit order.
        for accepted in persist.entries:
            entry = accepted.entry
            self.bitmaps.setdefault(entry.origin, BitMap64()).add(entry.seq)

    def record_fork(self, proof: ForkProof) -> None:
        raws = [
            self.log[(proof.origin, seq)][0]
            for seq in sorted(s for o, s in self.log if o == proof.origin and s < proof.seq)
        ]
        stored = {k: v for k, v in self.recipes.items() if v.author == proof.origin}
        rebuild = rebuild_author(counted_entries(raws), stored, self._totals)
        for recipe_id in rebuild.removed:
            del self.recipes[recipe_id]
        self.recipes.update(rebuild.recipes)
        self._totals = rebuild.totals
        self._summary = StoreSummary(len(self.log), self._totals)
        self.forks[proof.origin] = proof

    def load_forks(self) -> list[ForkProof]:
        return list(self.forks.values())

    def recipe(self, recipe_id: str) -> RecipeState | None:
        return self.recipes.get(recipe_id)

    def visible_recipes(self) -> list[RecipeState]:
        return [self.recipes[k] for k in sorted(self.recipes) if self.recipes[k].visible]

    def summary(self) -> StoreSummary:
        return self._summary

    def digest(self) -> str:
        return self._totals.digest()

    def recipe_count(self) -> int:
        return self._totals.visible

    def entry_count(self) -> int:
        return len(self.log)

    def size_bytes(self) -> int:
        """An estimate: the raw bytes of the stored entries, kept current by commit."""
        return self._raw_bytes

    def last_hlc(self, ceiling_ms: int) -> int:
        if wall_ms_of(self._last_hlc) <= ceiling_ms:
            return self._last_hlc
        return max((h for h in self._hlcs.values() if wall_ms_of(h) <= ceiling_ms), default=0)

    def close(self) -> None:
        pass
