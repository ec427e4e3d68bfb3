"""Our durable commits run in the trio thread only while the disk is fast
(node/commit_placement.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.core.actions import Persist
from p2psync.node.commit_placement import (
    LIMIT_S,
    MAX_SLOW_SHARE,
    MIN_SAMPLES,
    WINDOW,
    CommitPlacement,
)
from p2psync.node.config import NodeConfig
from p2psync.node.node import Node
from p2psync.node.observer import NullObserver, Observer
from p2psync.store.memory import MemoryStore

FAST, SLOW = LIMIT_S / 10, LIMIT_S * 5


def test_commits_start_in_a_worker_thread_until_the_disk_proved_fast() -> None:
    placement = CommitPlacement()
    for _ in range(MIN_SAMPLES - 1):
        assert not placement.in_event_loop
        assert not placement.record(FAST)
    assert not placement.in_event_loop
    assert placement.record(FAST)  # the MIN_SAMPLES-th fast one moves them
    assert placement.in_event_loop


def test_a_slow_commit_now_and_then_keeps_them_in_the_loop() -> None:
    # A fast commit whose thread waited for a core on a busy machine: wall
    # time says slow, but a worker thread would not have helped.
    placement = CommitPlacement()
    for i in range(4 * WINDOW):
        placement.record(SLOW if i % 8 == 7 else FAST)
        if i >= MIN_SAMPLES:
            assert placement.in_event_loop


def test_a_disk_turned_slow_moves_them_off_the_loop_within_a_quarter_window() -> None:
    placement = CommitPlacement()
    for _ in range(WINDOW):
        placement.record(FAST)
    slow_in_loop = 0
    while placement.in_event_loop:
        placement.record(SLOW)
        slow_in_loop += 1
    assert slow_in_loop == int(MAX_SLOW_SHARE * WINDOW)
    for _ in range(WINDOW):  # slow in the worker thread too: they stay there
        placement.record(SLOW)
        assert not placement.in_event_loop
    fast_until_back = 0
    while not placement.in_event_loop:
        placement.record(FAST)
        fast_until_back += 1
    assert fast_until_back == WINDOW - int(MAX_SLOW_SHARE * WINDOW) + 1


@given(st.lists(st.booleans(), max_size=3 * WINDOW))
def test_in_the_loop_exactly_while_few_of_the_recent_window_were_slow(slow: list[bool]) -> None:
    placement = CommitPlacement()
    for i, is_slow in enumerate(slow):
        before = placement.in_event_loop
        changed = placement.record(SLOW if is_slow else FAST)
        recent = slow[max(0, i + 1 - WINDOW) : i + 1]
        expected = len(recent) >= MIN_SAMPLES and sum(recent) < MAX_SLOW_SHARE * len(recent)
        assert placement.in_event_loop == expected
        assert changed == (expected != before)


class ThreadNotingStore(MemoryStore):
    """Notes which thread each commit ran in; takes `delay` seconds per commit."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.threads: list[int] = []

    def commit(self, persist: Persist) -> None:
        self.threads.append(threading.get_ident())
        time.sleep(self.delay)
        super().commit(persist)


class OwnCommits(NullObserver):
    def __init__(self) -> None:
        self.commits: list[tuple[float, bool]] = []

    def own_commit(self, seconds: float, in_event_loop: bool) -> None:
        self.commits.append((seconds, in_event_loop))


def _node(store: MemoryStore, observer: Observer | None = None) -> Node:
    config = NodeConfig(data_dir=Path("/nonexistent"), mdns=False)
    return Node(config, SigningKey(b"\x0a" * 32), store, observer or Metrics())


async def test_on_a_fast_disk_our_commits_run_in_the_trio_thread() -> None:
    store = ThreadNotingStore(delay=0)
    observer = OwnCommits()
    node = _node(store, observer)
    for i in range(MIN_SAMPLES + 4):
        await node.create_recipe(f"dish {i}", "egg", "fry")
    trio_thread = threading.get_ident()
    assert all(t != trio_thread for t in store.threads[:MIN_SAMPLES])
    assert store.threads[MIN_SAMPLES:] == [trio_thread] * 4
    assert [in_loop for _, in_loop in observer.commits] == [False] * MIN_SAMPLES + [True] * 4
    assert len(node.list_recipes()) == MIN_SAMPLES + 4


def test_metrics_count_own_commits_by_thread() -> None:
    metrics = Metrics()
    metrics.own_commit(0.0002, True)
    metrics.own_commit(0.03, False)
    text = metrics.render()[0].decode()
    assert 'p2psync_own_commit_seconds_count{thread="event_loop"} 1.0' in text
    assert 'p2psync_own_commit_seconds_bucket{le="0.025",thread="worker"} 0.0' in text
    assert 'p2psync_own_commit_seconds_bucket{le="0.05",thread="worker"} 1.0' in text


async def test_on_a_slow_disk_our_commits_stay_off_the_trio_thread() -> None:
    store = ThreadNotingStore(delay=SLOW)
    node = _node(store)
    for i in range(MIN_SAMPLES + 4):
        await node.create_recipe(f"dish {i}", "egg", "fry")
    assert threading.get_ident() not in store.threads
    assert len(store.threads) == MIN_SAMPLES + 4
