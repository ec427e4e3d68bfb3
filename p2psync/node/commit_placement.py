"""Where our own durable commits run: in the trio thread while the disk is
fast, in a worker thread while it is slow.

An op a user asks for is acknowledged only once its commit has reached the
disk (synchronous=FULL: one fdatasync of the WAL). On a slow disk (an SD
card, a busy network volume: 10-100 ms an fsync) that wait in the trio
thread would stall every peer session and the API, so it goes to a worker
thread. On a fast one (about 0.2 ms here, 0.4 ms at p99) the hand-off costs
more than the wait: the worker thread and then the trio thread each have to
be woken, and on a busy machine each wake-up waits for a core. Issue 13,
round 13 measured it: the live creator's way from an op's start to its
durable commit was 2.2 ms at p50 for 0.2 ms of disk.

So each commit's duration is recorded, wherever it ran, and a commit runs in
the trio thread while fewer than a quarter of the last `WINDOW` (at least
`MIN_SAMPLES` of them) took `LIMIT_S` or more. A share, not the slowest one:
the duration is wall time, and on a busy machine a fast commit sometimes
takes long because its thread waited for a core, which moving it to another
thread does not cure; a slow disk is slow most of the time. A disk that
turns slow costs the loop at most a quarter of a window of slow commits.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import trio

from p2psync.core.actions import Persist
from p2psync.core.store import StoreError
from p2psync.node.executor import Executor
from p2psync.node.observer import Observer

log = logging.getLogger(__name__)

LIMIT_S = 0.002
MIN_SAMPLES = 8
WINDOW = 32
MAX_SLOW_SHARE = 0.25


class CommitPlacement:
    def __init__(
        self, limit_s: float = LIMIT_S, min_samples: int = MIN_SAMPLES, window: int = WINDOW
    ) -> None:
        if not 0 < min_samples <= window:
            raise ValueError(f"need 0 < min_samples <= window, got {min_samples} and {window}")
        self._limit_s = limit_s
        self._min_samples = min_samples
        self._recent: deque[float] = deque(maxlen=window)
        self._slow_in_window = 0  # how many of `_recent` took `limit_s` or more

    @property
    def in_event_loop(self) -> bool:
        """Run the next commit in the trio thread? (Else in a worker thread.)"""
        recent = len(self._recent)
        return recent >= self._min_samples and self._slow_in_window < MAX_SLOW_SHARE * recent

    def record(self, seconds: float) -> bool:
        """Note how long a commit took; True if this changed where the next one runs."""
        before = self.in_event_loop
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0] >= self._limit_s:
            self._slow_in_window -= 1
        recent.append(seconds)
        if seconds >= self._limit_s:
            self._slow_in_window += 1
        return self.in_event_loop != before


async def commit_where_placed(
    executor: Executor, persist: Persist, placement: CommitPlacement, observer: Observer
) -> StoreError | None:
    """`executor.commit(persist)`, in the thread `placement` names, timed for it."""
    in_event_loop = placement.in_event_loop
    if in_event_loop:
        error, seconds = _timed_commit(executor, persist)
    else:
        error, seconds = await trio.to_thread.run_sync(_timed_commit, executor, persist)
    observer.own_commit(seconds, in_event_loop)
    if placement.record(seconds):
        where = "the event loop" if placement.in_event_loop else "a worker thread"
        log.debug("a durable commit took %.2f ms: the next ones run in %s", seconds * 1e3, where)
    return error


def _timed_commit(executor: Executor, persist: Persist) -> tuple[StoreError | None, float]:
    start = time.perf_counter()
    error = executor.commit(persist)
    return error, time.perf_counter() - start
