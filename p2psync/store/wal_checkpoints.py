"""WAL checkpoints on a connection of their own, so the writer's commits skip them.

In WAL mode SQLite appends each commit's pages to the -wal file; a
checkpoint copies them back into the database, after an fsync of the WAL
and followed by one of the database. By default the writer does it itself,
inside the commit that takes the WAL past 1 000 pages: one commit in a few
hundred waits several milliseconds longer, in whatever thread commits (the
event loop, for live entries and, on a fast disk, for our own ops).

`WalCheckpoints` copies them from a second connection instead, in a call
meant for a worker thread: sqlite3 lets go of the GIL for the whole
checkpoint (one statement), so it runs on another core while the event
loop goes on. `serve_wal_checkpoints` is the daemon's task for it: once a
second, if anything was committed since the last look, one checkpoint in a
worker thread; after one that copied a lot (a backfill) the next look comes
sooner. An idle node only wakes to compare a counter.

A PASSIVE checkpoint never blocks the writer nor waits for it. While
checkpoints run elsewhere the writer still checkpoints by itself, but only
past `FALLBACK_PAGES`: if the checkpoints stop (or cannot keep up with a
writer that never pauses, since the WAL only starts over once a
checkpoint has copied all of it) the WAL stays bounded all the same.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import trio

from p2psync.core.store import StoreError
from p2psync.store.rows import describe

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from p2psync.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

# SQLite's own default, which the writer goes back to when the checkpoints close.
DEFAULT_AUTOCHECKPOINT_PAGES = 1000
# The writer's own checkpoints while these run elsewhere: 64 MiB of 4 KiB pages.
FALLBACK_PAGES = 16 * 1024
_BUSY_TIMEOUT_MS = 5000
LOOK_EVERY_S = 1.0
# After a checkpoint that copied at least BUSY_FRAMES pages (or could not copy
# them all), look again after LOOK_BUSY_S: a backfill writes ~15 MB/s here,
# and the WAL stays a few MB.
LOOK_BUSY_S = 0.25
BUSY_FRAMES = 1000


class Checkpointed(NamedTuple):
    wal_frames: int  # frames in the WAL when the checkpoint began
    copied: int  # of them, how many are now in the database
    busy: bool  # it could not copy them all (a reader or the writer was in the way)


class WalCheckpoints:
    """Checkpoints of the database at `path`, from a connection opened for them.

    `run` may be called from any one thread at a time (a worker thread); the
    caller also sets the writer's own threshold (`FALLBACK_PAGES` while this
    is open, `DEFAULT_AUTOCHECKPOINT_PAGES` once it is closed).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        # Use `WalCheckpoints.open`.
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> WalCheckpoints:
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path} for checkpoints: {describe(exc)}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            # A checkpoint syncs the WAL before it copies and the database after,
            # at NORMAL as at FULL; this connection commits nothing.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open {path} for checkpoints: {describe(exc)}") from exc
        return cls(conn, path)

    def run(self) -> Checkpointed:
        """One PASSIVE checkpoint (blocking: call it from a worker thread)."""
        try:
            busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint of {self.path} failed: {describe(exc)}") from exc
        # -1 frames: the database is not in WAL mode (it always is here).
        return Checkpointed(max(frames, 0), max(copied, 0), bool(busy))

    def close(self) -> None:
        self._conn.close()


class CheckpointObserver(Protocol):
    def wal_checkpoint(self, seconds: float, pages: int) -> None: ...


async def serve_wal_checkpoints(
    store: SqliteStore,
    observer: CheckpointObserver,
    *,
    look_every_s: float = LOOK_EVERY_S,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Checkpoint `store`'s WAL off the event loop until cancelled.

    If a second connection cannot be had, say so and leave the checkpoints to
    the writer, as SQLite does by default.
    """
    try:
        checkpoints = WalCheckpoints.open(store.path)
    except StoreError as exc:
        log.warning("%s; commits will checkpoint the WAL themselves", exc)
        task_status.started()
        return
    try:
        store.set_wal_autocheckpoint(FALLBACK_PAGES)
        task_status.started()
        seen = store.commit_count
        pause = look_every_s
        while True:
            await trio.sleep(pause)
            if store.commit_count == seen:
                pause = look_every_s
                continue
            seen = store.commit_count
            done = await _checkpoint(checkpoints, observer)
            busy = done is not None and (done.busy or done.copied >= BUSY_FRAMES)
            pause = LOOK_BUSY_S if busy else look_every_s
    finally:
        # A checkpoint under way was not abandoned: to_thread waited for its end.
        checkpoints.close()
        try:
            store.set_wal_autocheckpoint(DEFAULT_AUTOCHECKPOINT_PAGES)
        except StoreError as exc:  # closed meanwhile: it checkpoints as it closes
            log.debug("%s", exc)


async def _checkpoint(
    checkpoints: WalCheckpoints, observer: CheckpointObserver
) -> Checkpointed | None:
    start = time.perf_counter()
    try:
        done = await trio.to_thread.run_sync(checkpoints.run)
    except StoreError as exc:
        # The writer checkpoints by itself past FALLBACK_PAGES: nothing is lost.
        log.warning("%s; the next commit past %d WAL pages will do it", exc, FALLBACK_PAGES)
        return None
    observer.wal_checkpoint(time.perf_counter() - start, done.copied)
    return done
