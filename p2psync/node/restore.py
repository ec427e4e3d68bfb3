"""Replacing a stopped node's files by a backup's: all of them, or none.

A restore first writes each new file under a staging name (`.restore.NAME`)
in the data dir. `commit_restore` fsyncs them, then writes the marker file
`restore-pending` naming what to install and what to remove (temp file,
rename, directory fsync): that rename is the commit point. Finishing removes
the files that must not survive (the old database's -wal, -shm and
-journal, which SQLite would otherwise replay onto the new database),
renames each staged file over its real name, and deletes the marker.

- A crash before the commit point leaves the old files as they were; the
  next restore clears the staged leftovers (`clear_staged`).
- A crash after it leaves the marker, and the next `p2psync run` or
  `p2psync restore` on that dir finishes the job (`finish_pending_restore`)
  before anything is opened.

So a node never starts with the backup's identity and its old database, or
the other way round. Callers hold the data dir's lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

MARKER_NAME = "restore-pending"
UNSYNCED_NAME = "restored-unsynced"  # removed by the node after its first round with a peer
STAGE_PREFIX = ".restore."


class RestoreError(Exception):
    """A pending restore cannot be finished; the message names the file."""


def staged_path(data_dir: Path, name: str) -> Path:
    """Where a restore writes the new `name` before the commit point."""
    return data_dir / f"{STAGE_PREFIX}{_plain(name)}"


def clear_staged(data_dir: Path) -> None:
    """Remove what an uncommitted restore left (there is no marker then)."""
    for path in data_dir.glob(f"{STAGE_PREFIX}*"):
        path.unlink(missing_ok=True)


def commit_restore(data_dir: Path, install: Sequence[str], remove: Sequence[str]) -> None:
    """Make the staged `install` files the real ones, first deleting `remove`."""
    for name in install:
        _fsync_file(staged_path(data_dir, name))
    plan = json.dumps({"remove": list(remove), "install": list(install)}).encode()
    temp = staged_path(data_dir, MARKER_NAME)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(plan)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, data_dir / MARKER_NAME)
    _fsync_directory(data_dir)  # the commit point
    finish_pending_restore(data_dir)


def finish_pending_restore(data_dir: Path) -> bool:
    """Complete a committed restore if one is pending; True if there was one."""
    marker = data_dir / MARKER_NAME
    try:
        plan = json.loads(marker.read_bytes())
        remove = [_plain(name) for name in plan["remove"]]
        install = [_plain(name) for name in plan["install"]]
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError) as exc:
        raise RestoreError(
            f"{marker} is damaged ({exc}); restore the backup again to replace it"
        ) from exc
    for name in remove:
        (data_dir / name).unlink(missing_ok=True)
    for name in install:
        staged = staged_path(data_dir, name)
        if staged.exists():  # else renamed before a crash
            os.replace(staged, data_dir / name)
    # Until it has met a peer, the restored node must not write: it may be
    # behind its own log (see Node.wait_for_own_head).
    (data_dir / UNSYNCED_NAME).touch()
    _fsync_directory(data_dir)
    marker.unlink()
    _fsync_directory(data_dir)
    return True


def _plain(name: object) -> str:
    if not isinstance(name, str) or not name or name != Path(name).name or name[0] == ".":
        raise ValueError(f"not a plain file name: {name!r}")
    return name


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    _fsync_file(directory)
