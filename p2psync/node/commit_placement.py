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

The rule, from the durations of commits run in the trio thread only (a
worker's include its waits for the GIL, which sqlite3 drops and takes back
around each statement, so they would call a fast disk slow on a busy node):

- In the event loop, commits move to the worker once one took `STALL_S` or
  more, or `MAX_SLOW` of the last `WINDOW` took `LIMIT_S` or more. A share,
  not the slowest one: on a busy machine a fast commit sometimes takes long
  because its thread waited for a core, which another thread does not cure.
- In the worker, every so often one commit runs in the event loop as a
  probe; a probe under `LIMIT_S` brings them back. The first probe is the
  first commit (unless told otherwise); after each failed probe or each
  return to the worker within a window, the next comes twice as many
  commits later (`PROBE_AFTER` up to `MAX_PROBE_AFTER`): on a disk that
  stays slow, the loop waits for one commit in 1 025 once the probes have
  backed off, and a disk that stalls now and then sends commits back to the
  worker for longer each time.
- A group of more than `MAX_JUDGED_ENTRIES` ops (`--initial-ops` commits
  1 000 at a time) runs in the worker and is not judged: its merge work,
  not the disk, would make it slow, and it would keep the small ones that
  follow off the loop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from p2psync.core.actions import Persist
    from p2psync.core.store import StoreError
    from p2psync.node.executor import Executor
    from p2psync.node.observer import Observer

log = logging.getLogger(__name__)

LIMIT_S = 0.002
STALL_S = 0.02
WINDOW = 32
MAX_SLOW = 8
PROBE_AFTER = 16
MAX_PROBE_AFTER = 1024
MAX_JUDGED_ENTRIES = 32


class CommitPlacement:
    def __init__(
        self, limit_s: float = LIMIT_S, stall_s: float = STALL_S, first_probe_after: int = 0
    ) -> None:
        """`first_probe_after`: commits run in the worker before the first probe."""
        self._limit_s = limit_s
        self._stall_s = stall_s
        self._in_loop = False
        self._until_probe = first_probe_after  # worker commits left before the next probe
        self._probe_after = PROBE_AFTER // 2  # doubled before each use
        self._recent: deque[bool] = deque(maxlen=WINDOW)  # loop commits since the last move: slow?

    @property
    def in_event_loop(self) -> bool:
        """Run the next commit in the trio thread? (Else in a worker thread.)"""
        return self._in_loop or self._until_probe == 0

    def record(self, seconds: float, in_event_loop: bool) -> bool:
        """Note how long a commit took and where it ran; True if commits
        moved (into the event loop or out of it; a probe alone is no move)."""
        before = self._in_loop
        if not in_event_loop:
            self._until_probe = max(0, self._until_probe - 1)
        elif not self._in_loop:
            self._probed(seconds)
        else:
            self._took_in_loop(seconds)
        return self._in_loop != before

    @property
    def moved_in(self) -> bool:
        """Do commits run in the event loop now (not just the next probe)?"""
        return self._in_loop

    def _probed(self, seconds: float) -> None:
        if seconds < self._limit_s:
            self._in_loop = True
            self._recent.clear()
        else:
            self._back_off()

    def _took_in_loop(self, seconds: float) -> None:
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._probe_after = PROBE_AFTER // 2  # a whole window in the loop: probes start over
        recent.append(seconds >= self._limit_s)
        if seconds >= self._stall_s or sum(recent) >= MAX_SLOW:
            self._in_loop = False
            self._back_off()

    def _back_off(self) -> None:
        self._probe_after = min(2 * self._probe_after, MAX_PROBE_AFTER)
        self._until_probe = self._probe_after


async def commit_where_placed(
    executor: Executor, persist: Persist, placement: CommitPlacement, observer: Observer
) -> StoreError | None:
    """`executor.commit(persist)`, in the thread `placement` names, timed for it."""
    judged = len(persist.entries) <= MAX_JUDGED_ENTRIES
    in_event_loop = judged and placement.in_event_loop
    if in_event_loop:
        error, seconds = _timed_commit(executor, persist)
    else:
        error, seconds = await trio.to_thread.run_sync(_timed_commit, executor, persist)
    observer.own_commit(seconds, in_event_loop)
    if judged and placement.record(seconds, in_event_loop):
        where = "the event loop" if placement.moved_in else "a worker thread"
        log.debug("a durable commit took %.2f ms: commits now run in %s", seconds * 1e3, where)
    return error


def _timed_commit(executor: Executor, persist: Persist) -> tuple[StoreError | None, float]:
    start = time.perf_counter()
    error = executor.commit(persist)
    return error, time.perf_counter() - start
