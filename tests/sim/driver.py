"""Drive one engine from tests: a fake clock, and the engine's events with the time filled in.

The actions still run through the node's one `Executor` (see simulator.py and
test_core_engine.py); this module only saves each test from spelling `now`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from p2psync.core.actions import Action, Persist
from p2psync.core.engine import SyncEngine
from p2psync.core.entry import Entry
from p2psync.core.hlc import Now
from p2psync.core.ops import Op
from p2psync.core.reasons import Source


class FakeTime:
    """Monotonic seconds (`now`, advanced by hand) and a wall clock that follows it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.wall_offset_ms = 1_800_000_000_000

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return self.wall_offset_ms + int(self.now * 1000)

    def instant(self) -> Now:
        return Now(self.monotonic(), self.wall_ms())


class TimedEngine:
    """A SyncEngine whose events are stamped with `time`; everything else passes through."""

    def __init__(self, engine: SyncEngine, time: FakeTime) -> None:
        self.inner = engine
        self.time = time

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def peer_connected(self, peer: str) -> list[Action]:
        return self.inner.peer_connected(peer, self.time.instant())

    def peer_disconnected(self, peer: str) -> list[Action]:
        return self.inner.peer_disconnected(peer, self.time.instant())

    def request_sync(self, peer: str) -> list[Action]:
        return self.inner.request_sync(peer, self.time.instant())

    def tick(self) -> list[Action]:
        return self.inner.tick(self.time.instant())

    def message_received(self, peer: str, data: bytes) -> list[Action]:
        return self.inner.message_received(peer, data, self.time.instant())

    def live_received(self, peer: str, data: bytes) -> list[Action]:
        return self.inner.live_received(peer, data, self.time.instant())

    def backfill_received(self, peer: str, raws: list[bytes]) -> list[Action]:
        """Entries as a backfill batch from `peer` brings them (runs checked by signature)."""
        now = self.time.instant()
        return self.inner._accept(raws, peer, now, source=Source.BACKFILL, verify_each=False)

    def append_one(self, make_op: Callable[[int], Op]) -> tuple[Entry, Op, list[Action]]:
        """Append the op `make_op` builds for the next own seq; its entry, op and actions."""
        op = make_op(self.inner.next_own_seq())
        actions = self.inner.append_local(self.time.instant(), [op])
        persist = actions[0]
        assert isinstance(persist, Persist)
        return persist.entries[0].entry, op, actions
