"""A yamux connection's secured stream wrapped to note when bytes arrive.

``liveness.watch`` puts it under a yamux connection; ``yamux_reads`` looks
beneath it (``unwatched``). A module of its own so that neither imports the
other's dependencies.
"""

from __future__ import annotations

from typing import Any

import trio


class ReadWatch:
    """A yamux connection's secured stream, as yamux reads it, noting when
    bytes arrive and waking whoever waits for the next ones."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.heard = trio.current_time()
        self._next = trio.Event()
        self._armed = False

    async def read(self, n: int | None = None) -> bytes:
        data: bytes = await self._inner.read(n)
        if data:
            self.heard = trio.current_time()
            if self._armed:  # someone waits for these bytes
                self._armed = False
                self._next.set()
                self._next = trio.Event()
        return data

    def next_bytes(self) -> trio.Event:
        """An event set when the connection next delivers bytes."""
        self._armed = True
        return self._next

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def unwatched(secured: Any) -> Any:
    """The secured connection under our read watch (``secured`` if unwatched)."""
    return secured._inner if isinstance(secured, ReadWatch) else secured
