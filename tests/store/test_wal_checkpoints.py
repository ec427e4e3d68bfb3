"""WAL checkpoints from a connection of their own (store/wal_checkpoints.py):
commits stop doing them, nothing is lost."""

from __future__ import annotations

import functools
import itertools
import logging
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from p2psync.core.reasons import Source
from p2psync.node.observer import NullObserver
from p2psync.store.sqlite import SqliteStore
from p2psync.store.wal_checkpoints import (
    DEFAULT_AUTOCHECKPOINT_PAGES,
    FALLBACK_PAGES,
    MAX_PASSES,
    Checkpointed,
    WalCheckpoints,
    serve_wal_checkpoints,
)
from tests.store.store_helper import entry_stream, persists

SEED = 11
# Live commits of one entry each write ~5 pages: 400 of them pass SQLite's default 1 000.
LIVE_COMMITS = 400


def _autocheckpoint(store: SqliteStore) -> int:
    value: int = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    return value


def _commit_live(store: SqliteStore, count: int, seed: int = SEED) -> None:
    accepted = itertools.islice(entry_stream(seed), count)
    for persist in persists(accepted, batch=1, source=Source.LIVE):
        store.commit(persist)


def test_commits_leave_the_wal_to_the_checkpoints(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "store.db") as store:
        checkpoints = WalCheckpoints.open(store.path)
        try:
            store.set_wal_autocheckpoint(FALLBACK_PAGES)
            _commit_live(store, LIVE_COMMITS)
            done = checkpoints.run()
            # With SQLite's default a commit would have copied them at 1 000.
            assert done.wal_frames > DEFAULT_AUTOCHECKPOINT_PAGES
            assert done.copied == done.wal_frames and done.complete
            _commit_live(store, 5, seed=SEED + 1)  # this commit starts the WAL over
            again = checkpoints.run()
            assert 0 < again.wal_frames < 100
            assert again.copied == again.wal_frames and again.complete
            assert checkpoints.run().copied == 0  # nothing new
        finally:
            checkpoints.close()


def test_checkpoints_beside_a_writer_lose_nothing(tmp_path: Path) -> None:
    """A thread checkpointing in a loop while commits go on: the same store."""
    accepted = list(itertools.islice(entry_stream(SEED), 600))
    with SqliteStore.open(tmp_path / "plain.db") as plain:
        for persist in persists(accepted, batch=3):
            plain.commit(persist)
        expected = (plain.entry_count(), plain.digest(), plain.load_progress())
    stop = threading.Event()
    runs: list[int] = []
    with SqliteStore.open(tmp_path / "store.db") as store:
        checkpoints = WalCheckpoints.open(store.path)
        store.set_wal_autocheckpoint(FALLBACK_PAGES)

        def checkpoint_forever() -> None:
            while not stop.is_set():
                runs.append(checkpoints.run().copied)

        thread = threading.Thread(target=checkpoint_forever)
        thread.start()
        try:
            for persist in persists(accepted, batch=3):
                store.commit(persist)
        finally:
            stop.set()
            thread.join()
            checkpoints.close()
    assert sum(runs) > 0
    with SqliteStore.open(tmp_path / "store.db") as reopened:
        assert (reopened.entry_count(), reopened.digest(), reopened.load_progress()) == expected
        assert reopened._conn.execute("PRAGMA quick_check").fetchone() == ("ok",)


class Checkpoints(NullObserver):
    def __init__(self) -> None:
        self.pages: list[int] = []

    def wal_checkpoint(self, seconds: float, pages: int) -> None:
        assert seconds >= 0
        self.pages.append(pages)


async def test_the_node_task_checkpoints_after_commits_and_hands_back(tmp_path: Path) -> None:
    seen = Checkpoints()
    with SqliteStore.open(tmp_path / "store.db") as store:
        async with trio.open_nursery() as nursery:
            serve = functools.partial(serve_wal_checkpoints, look_every_s=0.02)
            await nursery.start(serve, store, seen)
            assert _autocheckpoint(store) == FALLBACK_PAGES
            await trio.sleep(0.1)
            assert seen.pages == []  # nothing committed: no checkpoint
            _commit_live(store, 50)
            with trio.fail_after(10):
                while not seen.pages:
                    await trio.sleep(0.02)
            assert seen.pages[0] > 0
            nursery.cancel_scope.cancel()
        assert _autocheckpoint(store) == DEFAULT_AUTOCHECKPOINT_PAGES


async def test_the_node_task_leaves_checkpoints_to_commits_when_it_cannot_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    with SqliteStore.open(tmp_path / "store.db") as store:
        monkeypatch.setattr(sqlite3, "connect", refuse)
        with caplog.at_level(logging.WARNING, logger="p2psync.store.wal_checkpoints"):
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_wal_checkpoints, store, NullObserver())
        assert _autocheckpoint(store) == DEFAULT_AUTOCHECKPOINT_PAGES
    assert "commits will checkpoint the WAL themselves" in caplog.text


class ScriptedCheckpoints:
    """A connection whose `PRAGMA wal_checkpoint(PASSIVE)` answers from a script."""

    def __init__(self, answers: list[tuple[int, int, int]]) -> None:
        self.answers = answers
        self.calls = 0

    def execute(self, sql: str) -> ScriptedCheckpoints:
        assert sql == "PRAGMA wal_checkpoint(PASSIVE)"
        self.calls += 1
        return self

    def fetchone(self) -> tuple[int, int, int]:
        return self.answers.pop(0)


def _scripted(answers: list[tuple[int, int, int]]) -> tuple[WalCheckpoints, ScriptedCheckpoints]:
    conn = ScriptedCheckpoints(answers)
    return WalCheckpoints(conn, Path("scripted.db")), conn  # type: ignore[arg-type]


def test_a_checkpoint_a_commit_overtook_passes_again_until_complete() -> None:
    checkpoints, conn = _scripted([(0, 1000, 900), (0, 1040, 1040), (0, 60, 60)])
    assert checkpoints.run() == Checkpointed(1040, 1040, True)
    assert conn.calls == 2
    assert checkpoints.run() == Checkpointed(60, 60, True)  # the WAL started over


def test_passes_stop_at_the_limit_or_when_another_checkpoint_runs() -> None:
    overtaken = [(0, 1000 + 100 * i, 900 + 100 * i) for i in range(MAX_PASSES + 1)]
    checkpoints, conn = _scripted(overtaken)
    last = overtaken[MAX_PASSES - 1]
    assert checkpoints.run() == Checkpointed(last[1], last[2], False)
    assert conn.calls == MAX_PASSES
    # SQLITE_BUSY (another checkpoint runs): SQLite gives no figures; try later.
    checkpoints, conn = _scripted([(0, 500, 300), (1, -1, -1), (0, 520, 520)])
    assert checkpoints.run() == Checkpointed(500, 300, False)
    assert conn.calls == 2
    assert checkpoints.run() == Checkpointed(520, 220, True)


def test_a_wal_started_over_by_the_writer_is_counted_afresh() -> None:
    # Between two looks the writer's own checkpoint completed, the WAL started
    # over and grew past its old length: nothing here may count below zero.
    checkpoints, _ = _scripted([(0, 1000, 600), (1, -1, -1), (0, 1200, 300), (0, 1200, 1200)])
    assert checkpoints.run() == Checkpointed(1000, 600, False)
    assert checkpoints.run() == Checkpointed(1200, 1200, True)
