"""Consistent copies of the store's database, for `p2psync backup` and `restore`.

SQLite's backup API copies the database page by page. Done in one step it
runs inside one read transaction, so the copy is a single consistent
snapshot even while the node commits: in WAL mode a reader neither blocks
the writer nor needs the node's data-dir lock. The source is opened
read-only (`mode=ro`), so a copy never writes to the database it reads.

Every copy is a new file, mode 0600 from the first byte, in rollback-journal
mode (one self-contained file, no -wal beside it), fsynced, and checked
before it is used: it must be a p2psync database (application_id, a known
schema version) and pass `PRAGMA quick_check`.

A backup is a directory (`write_backup`):

    PATH/                 mode 0700
      p2psync.db          the database copy, 0600
      identity.key        ... and any other file the caller adds, 0600

written under a temporary name next to PATH and renamed into place when
complete, so PATH holds a whole backup or nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from p2psync.core.store import StoreError
from p2psync.store.schema import check_database

BACKUP_DB_NAME = "p2psync.db"
# Files SQLite keeps beside a database; left over beside a replaced one, a
# stale -wal or -journal would be replayed onto the new database.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
_BUSY_TIMEOUT_MS = 5000


def side_files(db_name: str) -> list[str]:
    """Names of the files SQLite may keep next to database `db_name`."""
    return [db_name + suffix for suffix in SIDE_SUFFIXES]


def copy_database(source: Path, dest: Path) -> int:
    """Copy the p2psync database `source` (maybe live) to the new file `dest`.

    Returns the copy's entry count. StoreError if `source` is missing or not
    p2psync's, if the copy fails its check, or if SQLite fails; `dest` is
    then removed.
    """
    if not source.is_file():
        raise StoreError(f"no database at {source}")
    try:
        reader = sqlite3.connect(f"file:{quote(str(source))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {source}: {exc}") from exc
    try:
        reader.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        check_database(reader, source)
        _create_private(dest)
        try:
            _copy(reader, dest)
            return _checked_entry_count(dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
    except sqlite3.Error as exc:
        raise StoreError(f"cannot copy {source} to {dest}: {exc}") from exc
    finally:
        reader.close()


def write_backup(database: Path, dest_dir: Path, extra_files: Mapping[str, bytes]) -> int:
    """Write the backup directory `dest_dir`; returns the database's entry count.

    `dest_dir` must not exist or be an empty directory, and its parent must
    exist. It appears complete or not at all.
    """
    parent = dest_dir.parent
    temp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".partial", dir=parent))
    try:
        entries = copy_database(database, temp / BACKUP_DB_NAME)
        for name, data in extra_files.items():
            write_private_file(temp / name, data)
        fsync_directory(temp)
        # rename() replaces an empty directory and refuses anything else.
        os.rename(temp, dest_dir)
        fsync_directory(parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return entries


def write_private_file(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) with mode 0600 and `data`, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- helpers


def _create_private(path: Path) -> None:
    # An empty file is an empty database to SQLite, which keeps its mode, and
    # gives the journal files it makes next to it the same mode.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def _copy(reader: sqlite3.Connection, dest: Path) -> None:
    writer = sqlite3.connect(dest, isolation_level=None)
    try:
        reader.backup(writer)  # pages=-1: all at once, one read transaction
        mode = writer.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        if str(mode).lower() != "delete":
            raise StoreError(f"cannot take {dest} out of WAL mode (journal mode {mode})")
    finally:
        writer.close()
    with open(dest, "rb") as file:
        os.fsync(file.fileno())


def _checked_entry_count(path: Path) -> int:
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    try:
        check_database(conn, path)
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchmany(3)]
        if problems != ["ok"]:
            raise StoreError(f"the copy {path} is damaged: {'; '.join(problems)}")
        row = conn.execute("SELECT value FROM meta WHERE key = 'entry_count'").fetchone()
        if row is None:
            raise StoreError(f"{path} has no entry count: not a complete p2psync database")
        return int(row[0])
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
