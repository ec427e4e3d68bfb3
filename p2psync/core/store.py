"""The store interface the node needs; sqlite and memory implement it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from pyroaring import BitMap64

from p2psync.core.actions import Persist
from p2psync.core.recipes import RecipeState


class StoreError(Exception):
    """The database could not do what was asked (read-only, disk full, ...)."""


class LogReader(Protocol):
    """Read access to the entries this node holds (the store implements it)."""

    def entry_links(self, origin: bytes, seqs: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
        """{seq: (hash, prev)} for those of `seqs` that are held."""
        ...

    def read_raw(self, origin: bytes, seqs: Iterable[int]) -> dict[int, bytes]:
        """{seq: raw entry bytes} for those of `seqs` that are stored; others are absent."""
        ...


class Store(LogReader, Protocol):
    def load_progress(self) -> dict[bytes, BitMap64]: ...

    def commit(self, persist: Persist) -> None:
        """Apply one Persist: log rows, recipe merges and bitmaps, atomically.

        Raises StoreError when the database refuses (nothing is written then).
        """
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
