"""Hybrid logical clock, packed in one int: wall milliseconds << 16 | counter.

The wall time is handed in by the caller (the core reads no clock), which is
also how tests fake skew. The clock never goes backwards, whatever the wall
clock does, and follows remote clocks forward, but only up to MAX_FORWARD_MS
ahead of our wall time so that one peer with a wild clock cannot drag ours.
"""

from __future__ import annotations

from dataclasses import dataclass

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_HLC = (1 << 64) - 1
MAX_FORWARD_MS = 24 * 3600 * 1000


def pack(wall_ms: int, counter: int) -> int:
    return (wall_ms << LOGICAL_BITS) | counter


def wall_ms_of(hlc: int) -> int:
    return hlc >> LOGICAL_BITS


class HybridClock:
    __slots__ = ("_last",)

    def __init__(self, last: int = 0) -> None:
        self._last = last

    @property
    def last(self) -> int:
        return self._last

    def tick(self, wall_ms: int) -> int:
        """A new timestamp for a local event, greater than every one seen before."""
        last_wall = self._last >> LOGICAL_BITS
        if wall_ms > last_wall:
            self._last = pack(wall_ms, 0)
        else:
            # Wall clock stalled or went back: keep the old wall part and count.
            self._last += 1
        return self._last

    def observe(self, remote: int, wall_ms: int) -> None:
        """Fold in a timestamp seen on a remote entry."""
        if remote <= self._last or remote > MAX_HLC:
            return
        if (remote >> LOGICAL_BITS) > wall_ms + MAX_FORWARD_MS:
            return
        self._last = remote


@dataclass(frozen=True, slots=True)
class Now:
    """The time an event happened, handed to the engine by its driver.

    `monotonic` (seconds) times rounds and timeouts; `wall_ms` (Unix
    milliseconds) feeds the hybrid clock. The core never reads a clock.
    """

    monotonic: float
    wall_ms: int
