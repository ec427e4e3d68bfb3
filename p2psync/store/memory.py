"""An in-memory Store for the simulator and unit tests."""

from __future__ import annotations

from collections.abc import Iterable

from pyroaring import BitMap64

from p2psync.core.engine import Persist
from p2psync.core.entry import entry_hash
from p2psync.core.recipes import RecipeState, digest_hex, merge, recipe_hash


class MemoryStore:
    def __init__(self) -> None:
        self.log: dict[tuple[bytes, int], tuple[bytes, bytes, bytes]] = {}  # raw, hash, prev
        self.recipes: dict[str, RecipeState] = {}
        self.bitmaps: dict[bytes, BitMap64] = {}
        self._last_hlc = 0
        self._digest_sum = 0
        self._visible = 0

    def entry_links(self, origin: bytes, seqs: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
        found = {}
        for seq in seqs:
            row = self.log.get((origin, seq))
            if row is not None:
                found[seq] = (row[1], row[2])
        return found

    def read_raw(self, origin: bytes, seqs: Iterable[int]) -> list[bytes]:
        return [self.log[(origin, seq)][0] for seq in seqs]

    def load_progress(self) -> dict[bytes, BitMap64]:
        return {origin: BitMap64(bitmap) for origin, bitmap in self.bitmaps.items()}

    def commit(self, persist: Persist) -> None:
        for accepted in persist.entries:
            entry = accepted.entry
            self.log[(entry.origin, entry.seq)] = (entry.raw, entry_hash(entry.raw), entry.prev)
            self._last_hlc = max(self._last_hlc, entry.hlc)
            if accepted.op is not None:
                recipe_id = accepted.op.recipe_id
                old = self.recipes.get(recipe_id)
                new = merge(old, entry, accepted.op)
                self.recipes[recipe_id] = new
                if old is not None and old.visible:
                    self._digest_sum -= recipe_hash(old)
                    self._visible -= 1
                if new.visible:
                    self._digest_sum += recipe_hash(new)
                    self._visible += 1
        for origin, bitmap in persist.progress.items():
            self.bitmaps[origin] = BitMap64(bitmap)

    def recipe(self, recipe_id: str) -> RecipeState | None:
        return self.recipes.get(recipe_id)

    def visible_recipes(self) -> list[RecipeState]:
        return [self.recipes[k] for k in sorted(self.recipes) if self.recipes[k].visible]

    def digest(self) -> str:
        return digest_hex(self._digest_sum)

    def recipe_count(self) -> int:
        return self._visible

    def entry_count(self) -> int:
        return len(self.log)

    def last_hlc(self) -> int:
        return self._last_hlc

    def close(self) -> None:
        pass
