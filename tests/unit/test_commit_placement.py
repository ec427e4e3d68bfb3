"""Our durable commits run in the trio thread only while the disk is fast
(node/commit_placement.py)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.core.actions import Persist
from p2psync.core.reasons import Source
from p2psync.core.store import StoreError
from p2psync.node.commit_placement import (
    LIMIT_S,
    MAX_JUDGED_ENTRIES,
    MAX_PROBE_AFTER,
    MAX_SLOW,
    PROBE_AFTER,
    STALL_S,
    WINDOW,
    CommitPlacement,
    commit_where_placed,
)
from p2psync.node.config import NodeConfig
from p2psync.node.node import Node
from p2psync.node.observer import NullObserver, Observer
from p2psync.node.service import UserError
from p2psync.store.memory import MemoryStore
from tests.store.store_helper import entry_stream

FAST, SLOW, STALL = LIMIT_S / 10, (LIMIT_S + STALL_S) / 2, STALL_S * 2


def _commit(placement: CommitPlacement, seconds: float) -> bool:
    """One commit of `seconds` where `placement` says; True if it ran in the loop."""
    in_loop = placement.in_event_loop
    placement.record(seconds, in_loop)
    return in_loop


def test_the_first_commit_probes_the_disk_in_the_loop() -> None:
    fast = CommitPlacement()
    assert fast.in_event_loop
    assert [_commit(fast, FAST) for _ in range(5)] == [True] * 5
    slow = CommitPlacement()
    assert [_commit(slow, SLOW) for _ in range(3)] == [True, False, False]


def test_one_stall_moves_them_off_the_loop_at_once() -> None:
    placement = CommitPlacement()
    for _ in range(2 * WINDOW):
        _commit(placement, FAST)
    assert placement.record(STALL, True)
    assert not placement.in_event_loop


def test_a_slow_commit_now_and_then_keeps_them_in_the_loop() -> None:
    # A fast commit whose thread waited for a core on a busy machine: wall
    # time says slow, but a worker thread would not have helped.
    placement = CommitPlacement()
    ran = [_commit(placement, SLOW if i % 8 == 7 else FAST) for i in range(8 * WINDOW)]
    assert all(ran)


def test_a_disk_turned_slow_moves_them_off_the_loop_after_max_slow() -> None:
    placement = CommitPlacement()
    for _ in range(WINDOW):
        _commit(placement, FAST)
    in_loop = 0
    while placement.in_event_loop:
        _commit(placement, SLOW)
        in_loop += 1
    assert in_loop == MAX_SLOW


def test_worker_timings_move_nothing() -> None:
    # They include waits for the GIL: only probes in the loop judge the disk.
    placement = CommitPlacement(first_probe_after=3)
    for _ in range(3):
        assert not placement.in_event_loop
        assert not placement.record(STALL, False)
    assert placement.in_event_loop and not placement.moved_in  # the next is a probe
    assert placement.record(FAST, True)
    assert placement.moved_in


def test_a_return_to_the_worker_within_a_window_doubles_the_gap() -> None:
    placement = CommitPlacement()
    waits = []
    for _ in range(3):
        assert _commit(placement, FAST)  # a probe: in
        for _ in range(WINDOW // 2):
            assert _commit(placement, FAST)
        _commit(placement, STALL)  # out again within the window
        waited = 0
        while not placement.in_event_loop:
            _commit(placement, FAST)
            waited += 1
        waits.append(waited)
    assert waits == [PROBE_AFTER, 2 * PROBE_AFTER, 4 * PROBE_AFTER]


def test_probes_back_off_on_a_disk_that_stays_slow_and_a_fast_one_brings_them_back() -> None:
    placement = CommitPlacement()
    probes = [i for i in range(20_000) if _commit(placement, SLOW)]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    expected = [min(PROBE_AFTER << k, MAX_PROBE_AFTER) + 1 for k in range(len(gaps))]
    assert probes[0] == 0 and gaps == expected
    while not placement.in_event_loop:
        _commit(placement, FAST)
    assert _commit(placement, FAST)  # the fast probe brought them back
    assert all(_commit(placement, FAST) for _ in range(WINDOW))


def test_a_window_in_the_loop_starts_the_probes_over() -> None:
    placement = CommitPlacement()
    for _ in range(5):  # probes back off
        while not placement.in_event_loop:
            _commit(placement, FAST)
        _commit(placement, STALL)  # the probe itself
    while not placement.in_event_loop:
        _commit(placement, FAST)
    assert _commit(placement, FAST)  # the probe
    for _ in range(WINDOW):
        assert _commit(placement, FAST)
    _commit(placement, STALL)
    waited = 0
    while not placement.in_event_loop:
        _commit(placement, FAST)
        waited += 1
    assert waited == PROBE_AFTER


@given(st.lists(st.sampled_from([FAST, SLOW, STALL]), max_size=4 * WINDOW))
def test_the_loop_never_keeps_a_stall_or_max_slow_of_a_window(durations: list[float]) -> None:
    placement = CommitPlacement()
    in_loop_run: list[float] = []  # loop commits since the last move to the loop
    worker_run = 0
    for seconds in durations:
        in_loop = placement.in_event_loop
        was_probe = in_loop and not placement.moved_in
        before = placement.moved_in
        changed = placement.record(seconds, in_loop)
        assert changed == (placement.moved_in != before)
        if not in_loop:
            worker_run += 1
            assert worker_run <= MAX_PROBE_AFTER
            continue
        worker_run = 0
        if was_probe:
            assert placement.in_event_loop == (seconds < LIMIT_S)
            in_loop_run = []
            continue
        in_loop_run.append(seconds)
        recent = in_loop_run[-WINDOW:]
        too_slow = seconds >= STALL_S or sum(s >= LIMIT_S for s in recent) >= MAX_SLOW
        assert placement.in_event_loop == (not too_slow)
        if too_slow:
            in_loop_run = []


class ThreadNotingStore(MemoryStore):
    """Notes which thread each commit ran in; takes `delay` seconds per commit."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.threads: list[int] = []
        self.fail = False

    def commit(self, persist: Persist) -> None:
        self.threads.append(threading.get_ident())
        time.sleep(self.delay)
        if self.fail:
            raise StoreError("could not store: disk is full; nothing was written")
        super().commit(persist)


class OwnCommits(NullObserver):
    def __init__(self) -> None:
        self.commits: list[tuple[float, bool]] = []

    def own_commit(self, seconds: float, in_event_loop: bool) -> None:
        self.commits.append((seconds, in_event_loop))


def _node(store: MemoryStore, placement: CommitPlacement, observer: Observer | None = None) -> Node:
    config = NodeConfig(data_dir=Path("/nonexistent"), mdns=False)
    node = Node(config, SigningKey(b"\x0a" * 32), store, observer or Metrics())
    node.commit_placement = placement
    return node


async def test_on_a_fast_disk_our_commits_run_in_the_trio_thread() -> None:
    store = ThreadNotingStore(delay=0)
    observer = OwnCommits()
    node = _node(store, CommitPlacement(limit_s=1.0, stall_s=10.0), observer)
    for i in range(6):
        await node.create_recipe(f"dish {i}", "egg", "fry")
    assert store.threads == [threading.get_ident()] * 6
    assert [in_loop for _, in_loop in observer.commits] == [True] * 6
    assert len(node.list_recipes()) == 6


async def test_on_a_slow_disk_our_commits_leave_the_trio_thread_after_the_probe() -> None:
    store = ThreadNotingStore(delay=STALL)
    node = _node(store, CommitPlacement())
    for i in range(6):
        await node.create_recipe(f"dish {i}", "egg", "fry")
    trio_thread = threading.get_ident()
    assert store.threads[0] == trio_thread
    assert trio_thread not in store.threads[1:] and len(store.threads) == 6


async def test_a_refused_commit_in_the_trio_thread_refuses_its_op_and_leaves_no_gap() -> None:
    store = ThreadNotingStore(delay=0)
    node = _node(store, CommitPlacement(limit_s=1.0, stall_s=10.0))
    await node.create_recipe("first", "egg", "fry")
    store.fail = True
    with pytest.raises(UserError) as refused:
        await node.create_recipe("refused", "egg", "fry")
    assert refused.value.status == 503
    assert store.threads == [threading.get_ident()] * 2
    store.fail = False
    await node.create_recipe("after", "egg", "fry")
    assert {r.name for r in node.list_recipes()} == {"first", "after"}
    assert sorted(node.engine._progress.held(node.engine.me)) == [0, 1]


class ThreadNotingExecutor:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def commit(self, persist: Persist) -> StoreError | None:
        self.threads.append(threading.get_ident())
        return None


def _persist(entries: int) -> Persist:
    accepted = tuple(itertools.islice(entry_stream(3, authors=1), entries))
    return Persist(accepted, {}, Source.LOCAL, None)


async def test_a_big_group_runs_in_the_worker_and_is_not_judged() -> None:
    # `--initial-ops` commits 1 000 ops at once: its merge work, not the
    # disk, makes it slow, and it must not keep small commits off the loop.
    placement = CommitPlacement()
    executor = ThreadNotingExecutor()
    observer = OwnCommits()
    big, small = _persist(MAX_JUDGED_ENTRIES + 1), _persist(1)
    for persist in (big, big, small, small):
        await commit_where_placed(executor, persist, placement, observer)  # type: ignore[arg-type]
    trio_thread = threading.get_ident()
    assert [t == trio_thread for t in executor.threads] == [False, False, True, True]
    assert [in_loop for _, in_loop in observer.commits] == [False, False, True, True]
    assert placement.moved_in


def test_metrics_count_own_commits_by_thread() -> None:
    metrics = Metrics()
    metrics.own_commit(0.0002, True)
    metrics.own_commit(0.03, False)
    text = metrics.render()[0].decode()
    assert 'p2psync_own_commit_seconds_count{thread="event_loop"} 1.0' in text
    assert 'p2psync_own_commit_seconds_bucket{le="0.025",thread="worker"} 0.0' in text
    assert 'p2psync_own_commit_seconds_bucket{le="0.05",thread="worker"} 1.0' in text
