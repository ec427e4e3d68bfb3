"""The store interface the node needs; sqlite and memory implement it."""

from __future__ import annotations

from typing import Protocol

from pyroaring import BitMap64

from p2psync.core.engine import LogReader, Persist
from p2psync.core.recipes import RecipeState


class Store(LogReader, Protocol):
    def load_progress(self) -> dict[bytes, BitMap64]: ...

    def commit(self, persist: Persist) -> None:
        """Apply one Persist: log rows, recipe merges and bitmaps, atomically."""
        ...

    def recipe(self, recipe_id: str) -> RecipeState | None: ...

    def visible_recipes(self) -> list[RecipeState]:
        """Visible recipes in id order."""
        ...

    def digest(self) -> str: ...

    def recipe_count(self) -> int:
        """Number of visible recipes."""
        ...

    def entry_count(self) -> int: ...

    def last_hlc(self) -> int: ...

    def close(self) -> None: ...
