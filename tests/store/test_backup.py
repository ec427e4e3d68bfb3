"""store/backup.py: consistent online copies, private files, refusals."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from p2psync.core.store import StoreError
from p2psync.store.backup import BACKUP_DB_NAME, copy_database, write_backup
from p2psync.store.memory import MemoryStore
from p2psync.store.sqlite import SqliteStore
from tests.store.store_helper import BATCH, entry_stream, persists

HELPER = Path(__file__).with_name("store_helper.py")
ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _small_db(path: Path, batches: int = 2) -> int:
    with SqliteStore.open(path) as store:
        for persist in itertools.islice(persists(entry_stream(5)), batches):
            store.commit(persist)
        return store.entry_count()


def test_copies_taken_while_another_process_commits_are_consistent(tmp_path: Path) -> None:
    live, seed = tmp_path / "live.db", 21
    writer = subprocess.Popen(
        [sys.executable, str(HELPER), "writer", str(live), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert writer.stdout is not None
    copies: list[tuple[Path, int]] = []
    try:
        for number in range(3):
            for _ in range(2):  # at least one more commit before each copy
                assert writer.stdout.readline(), "writer died early"
            copy = tmp_path / f"copy{number}.db"
            copies.append((copy, copy_database(live, copy)))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=10)
    counts = [entries for _, entries in copies]
    assert counts == sorted(set(counts)), counts  # each copy saw later commits
    batches = list(itertools.islice(persists(entry_stream(seed)), max(counts) // BATCH))
    for copy, entries in copies:
        assert _mode(copy) == 0o600
        assert not Path(f"{copy}-wal").exists() and not Path(f"{copy}-journal").exists()
        # Whole transactions only: the copy equals the first N batches replayed.
        assert entries % BATCH == 0
        memory = MemoryStore()
        for persist in batches[: entries // BATCH]:
            memory.commit(persist)
        with SqliteStore.open(copy) as store:
            assert store.entry_count() == entries == memory.entry_count()
            assert store._conn.execute("SELECT count(*) FROM log").fetchone()[0] == entries
            assert store.load_progress() == memory.load_progress()
            assert store.digest() == memory.digest()
            assert store.visible_recipes() == memory.visible_recipes()


def test_copy_of_a_closed_database_leaves_the_source_untouched(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    entries = _small_db(source)
    before = source.read_bytes()
    assert copy_database(source, tmp_path / "copy.db") == entries
    assert source.read_bytes() == before
    # A read-only reader may leave an empty WAL index beside it, nothing else.
    others = {p.name for p in tmp_path.iterdir()} - {"copy.db", "source.db"}
    assert others <= {"source.db-wal", "source.db-shm"}
    assert (
        not (tmp_path / "source.db-wal").exists() or not (tmp_path / "source.db-wal").stat().st_size
    )


def test_backup_directory_is_private_and_appears_whole(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    entries = _small_db(source)
    target = tmp_path / "backup"
    assert write_backup(source, target, {"identity.key": b"k" * 32}) == entries
    assert _mode(target) == 0o700
    assert sorted(p.name for p in target.iterdir()) == ["identity.key", BACKUP_DB_NAME]
    for path in target.iterdir():
        assert _mode(path) == 0o600, path
    assert (target / "identity.key").read_bytes() == b"k" * 32
    # Not over an existing backup; nothing half-written is left behind.
    with pytest.raises(OSError):
        write_backup(source, target, {})
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert sorted(p.name for p in target.iterdir()) == ["identity.key", BACKUP_DB_NAME]
    # An empty directory is taken (and made private).
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    write_backup(source, empty, {})
    assert _mode(empty) == 0o700 and (empty / BACKUP_DB_NAME).is_file()


def test_refuses_what_is_not_a_p2psync_database(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    cases = [
        (foreign, "not a p2psync database"),
        (junk, "not an SQLite database"),
        (tmp_path / "missing.db", "no database"),
    ]
    for source, message in cases:
        with pytest.raises(StoreError, match=message):
            copy_database(source, tmp_path / "copy.db")
        assert not (tmp_path / "copy.db").exists()


def test_refuses_a_damaged_database(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    _small_db(source, batches=4)
    with open(source, "r+b") as file:  # a b-tree page header of the log, scrambled
        file.seek(4096 + 0)
        file.write(b"\xff" * 16)
    with pytest.raises(StoreError, match=r"malformed|damaged"):
        copy_database(source, tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()
