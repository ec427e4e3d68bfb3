"""The store interface the node needs; sqlite and memory implement it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from pyroaring import BitMap64

from p2psync.core.actions import Persist
from p2psync.core.forks import ForkProof
from p2psync.core.recipes import RecipeState

if TYPE_CHECKING:  # recipe_book -> acceptance -> store: only the annotation needs it
    from p2psync.core.recipe_book import StoreSummary


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

    def record_fork(self, proof: ForkProof) -> None:
        """Keep `proof` and make its author's recipes again from its entries below
        the proof's seq, atomically. Raises StoreError when the database refuses."""
        ...

    def load_forks(self) -> list[ForkProof]: ...

    def recipe(self, recipe_id: str) -> RecipeState | None: ...

    def visible_recipes(self) -> list[RecipeState]:
        """Visible recipes in id order."""
        ...

    def summary(self) -> StoreSummary:
        """Entries, visible recipes and digest of the last commit, never torn."""
        ...

    def digest(self) -> str: ...

    def recipe_count(self) -> int:
        """Number of visible recipes."""
        ...

    def entry_count(self) -> int: ...

    def size_bytes(self) -> int:
        """About how many bytes the store's data takes (for --max-store-mb); cheap
        enough to call after commits."""
        ...

    def last_hlc(self, ceiling_ms: int) -> int:
        """The greatest hlc held whose wall part is at most `ceiling_ms`; 0 if none.

        A restart starts its clock from this: with `ceiling_ms` = wall time +
        MAX_FORWARD_MS it trusts what `HybridClock.observe` would follow, never
        an entry a peer signed with a wild clock.
        """
        ...

    def close(self) -> None: ...
