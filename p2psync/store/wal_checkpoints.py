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
second, if anything was committed since the last look, a checkpoint in a
worker thread; after one that copied a lot (a backfill) or did not
complete, the next look comes sooner. An idle node only wakes to compare a
counter.

A PASSIVE checkpoint never blocks the writer nor waits for it. The WAL
starts over (at the next commit) only once a checkpoint has copied all of
it; one that a commit overtook copied all but that commit's pages, so a
few more passes follow at once, each shorter than the last. While
checkpoints run here the writer still checkpoints by itself, past
`FALLBACK_PAGES`: if they stop, or a writer that never pauses keeps them
from completing, the WAL stays bounded all the same, and that checkpoint
copies only what was not copied here.
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
# The writer's own checkpoints while these run elsewhere: 16 MiB of 4 KiB
# pages. One then copies only what the checkpoints here did not yet copy.
FALLBACK_PAGES = 4096
# A checkpoint that a commit overtook copied all but that commit's pages;
# the next pass copies those and usually completes (the WAL can start over).
MAX_PASSES = 4
LOOK_EVERY_S = 1.0
# After a checkpoint that copied at least BUSY_PAGES pages or did not
# complete, look again after LOOK_BUSY_S: a backfill writes ~15 MB/s here.
LOOK_BUSY_S = 0.25
BUSY_PAGES = 1000


class Checkpointed(NamedTuple):
    wal_frames: int  # frames in the WAL at the last pass
    copied: int  # pages this call copied into the database
    complete: bool  # every frame is in the database: the next commit starts the WAL over


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
        self._frames = self._backfilled = 0  # the WAL as the last pass left it

    @classmethod
    def open(cls, path: Path) -> WalCheckpoints:
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path} for checkpoints: {describe(exc)}") from exc
        try:
            # A checkpoint syncs the WAL before it copies and the database after,
            # at NORMAL as at FULL; this connection commits nothing.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open {path} for checkpoints: {describe(exc)}") from exc
        return cls(conn, path)

    def run(self) -> Checkpointed:
        """PASSIVE checkpoints until the WAL is all copied, at most MAX_PASSES
        (blocking: call it from a worker thread)."""
        copied = 0
        for _ in range(MAX_PASSES):
            try:
                busy, frames, backfilled = self._conn.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)"
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"checkpoint of {self.path} failed: {describe(exc)}") from exc
            if busy or frames < 0 or backfilled < 0:
                # Another checkpoint runs (the writer's own): SQLite says -1, -1.
                return Checkpointed(self._frames, copied, False)
            # `frames` in the WAL, `backfilled` of them in the database: the
            # work of every pass on this WAL so far, not this pass's alone. The
            # first commit after a complete checkpoint starts the WAL over
            # (unless a reader, a backup, still reads it: then this counts high).
            unchanged = (frames, backfilled) == (self._frames, self._backfilled)
            complete_before = self._backfilled == self._frames and not unchanged
            started_over = frames < self._frames or backfilled < self._backfilled
            if started_over or complete_before:
                copied += backfilled
            else:
                copied += backfilled - self._backfilled
            self._frames, self._backfilled = frames, backfilled
            if backfilled == frames:
                break
        return Checkpointed(self._frames, copied, self._backfilled == self._frames)

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
    except StoreError as exc:
        checkpoints.close()
        log.warning("%s; commits will checkpoint the WAL themselves", exc)
        task_status.started()
        return
    try:
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
            busy = done is not None and (not done.complete or done.copied >= BUSY_PAGES)
            pause = min(LOOK_BUSY_S, look_every_s) if busy else look_every_s
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
        # Nothing is lost: the WAL holds the pages, and a commit past
        # FALLBACK_PAGES tries a checkpoint of its own.
        log.warning("%s; will try again after the next commit", exc)
        return None
    observer.wal_checkpoint(time.perf_counter() - start, done.copied)
    return done
