"""The outermost wiring: opens the store, builds the node and runs its faces and loops.

This is the one module that brings the pieces together: the SQLite store,
the libp2p network (node/network.py), the HTTP API and metrics (api/) and
the REPL (cli/repl). Nothing below it imports the faces.

Structure (one nursery, owned here):

    run_node
      ├─ signals        SIGINT/SIGTERM -> graceful stop
      ├─ ticker         engine.tick(now) once a second (timeouts, periodic sync)
      ├─ network        libp2p host, topics, peer sessions, discovery
      ├─ HTTP API       hypercorn trio worker, if --api-port
      ├─ metrics        hypercorn trio worker, if --metrics-port
      ├─ workload       synthetic ops, if --initial-ops / --op-interval
      └─ REPL           stdin in a worker thread, unless --no-repl

A stop (signal, `quit`, Ctrl-D on a terminal) cancels the nursery; the store
is closed after every task has ended, so nothing writes to a closed store.

`p2psync backup` and `restore` come here too (`backup_data_dir`,
`restore_data_dir`): they join the store's database copy (store/backup.py)
to the node's identity file and the all-or-nothing swap (node/restore.py).
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import trio
from nacl.signing import SigningKey

from p2psync.api.http import make_api_app, make_metrics_app, serve_http
from p2psync.api.metrics import Metrics
from p2psync.cli.logs import flush_repeated, join_library_loggers
from p2psync.cli.progress import watch_backfill
from p2psync.cli.repl import PROMPT, serve_repl
from p2psync.core.ids import peer_id_from_seed
from p2psync.core.store import StoreError
from p2psync.node.config import NodeConfig
from p2psync.node.identity import IDENTITY_FILE_NAME, load_or_create_seed, read_seed
from p2psync.node.node import Node, data_file
from p2psync.node.profiles import DataDirLock
from p2psync.node.restore import (
    clear_staged,
    commit_restore,
    finish_pending_restore,
    staged_path,
)
from p2psync.node.workload import run_workload
from p2psync.store.backup import (
    BACKUP_DB_NAME,
    copy_database,
    side_files,
    write_backup,
    write_private_file,
)
from p2psync.store.sqlite import SqliteStore
from p2psync.store.wal_checkpoints import serve_wal_checkpoints

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


def say(message: str) -> None:
    """One line for the person (or script) watching stderr."""
    print(f"p2psync: {message}", file=sys.stderr, flush=True)


async def run_node(config: NodeConfig, *, lock: DataDirLock) -> int:
    """Run a node until it is asked to stop; return the process exit code.

    `lock` is held by the caller for as long as this runs.
    """
    # Imported here, not at the top: `p2psync backup` and `restore` use this
    # module too, and need not load libp2p.
    from p2psync.node.network import NetworkStartError

    join_library_loggers()  # py-libp2p, just imported, detached its logger
    try:
        seed = load_or_create_seed(config.data_dir)
        store = SqliteStore.open(data_file(config.data_dir))
    except (OSError, StoreError) as exc:
        say(f"cannot open {config.data_dir}: {exc}")
        return 1
    try:
        metrics = Metrics()
        node = Node(config, SigningKey(seed), store, metrics)
        say(f"peer id {node.peer_id}")
        say(f"data dir {config.data_dir} ({node.engine.entry_count()} entries)")
        failure: str | None = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_wal_checkpoints, store, metrics)
                await _start_services(nursery, node, config, metrics, seed)
                await node.stop_requested.wait()
                say("stopping")
                nursery.cancel_scope.cancel()
        except* NetworkStartError as group:
            failure = str(group.exceptions[0])
        if failure is not None:
            say(failure)
            return 1
    finally:
        store.close()
    return 0


async def _start_services(
    nursery: trio.Nursery, node: Node, config: NodeConfig, metrics: Metrics, seed: bytes
) -> None:
    from p2psync.node.network import serve_network  # see run_node

    nursery.start_soon(_stop_on_signals, node)
    nursery.start_soon(_tick_forever, node)
    prompt = PROMPT if config.repl and sys.stdin.isatty() else None
    nursery.start_soon(functools.partial(watch_backfill, node.engine, prompt=prompt))
    addrs = await nursery.start(serve_network, node, config, metrics, seed)
    for addr in addrs:
        say(f"listening on {addr}")
    if config.api_port is not None:
        app = make_api_app(node, metrics, token=config.api_token)
        port = await nursery.start(serve_http, app, config.api_host, config.api_port)
        say(f"API on http://{_url_host(config.api_host)}:{port}/api/v0/status")
    if config.metrics_port is not None:
        port = await nursery.start(
            serve_http, make_metrics_app(metrics), config.api_host, config.metrics_port
        )
        say(f"metrics on http://{_url_host(config.api_host)}:{port}/metrics")
    if config.initial_ops or config.op_interval is not None:
        nursery.start_soon(run_workload, node, config, say)
    _freeze_startup_heap()
    if config.repl:
        history = config.data_dir / "repl_history"
        await nursery.start(functools.partial(serve_repl, node, history_path=history))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _stop_on_signals(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            await node.stop()


async def _tick_forever(node: Node) -> None:
    while True:
        await trio.sleep(TICK_SECONDS)
        node.run_actions(node.engine.tick(node.now()))
        flush_repeated()


# --- backup and restore (the store's copy, the node's identity) ---------------


@dataclass(frozen=True, slots=True)
class DataDirCopy:
    """What `backup_data_dir` wrote or `restore_data_dir` installed."""

    peer_id: str
    entries: int
    files: tuple[str, ...]


def backup_data_dir(data_dir: Path, dest: Path) -> DataDirCopy:
    """Copy a data dir's database and identity into the new directory `dest`.

    Takes no lock: the node may be running (store/backup.py says why that is safe).
    """
    database = data_file(data_dir)
    if not database.is_file():
        raise StoreError(f"no p2psync database in {data_dir}: nothing to back up")
    seed = read_seed(data_dir)
    entries = write_backup(database, dest, {IDENTITY_FILE_NAME: seed})
    return DataDirCopy(peer_id_from_seed(seed), entries, (BACKUP_DB_NAME, IDENTITY_FILE_NAME))


def restore_data_dir(backup: Path, lock: DataDirLock) -> DataDirCopy:
    """Replace the locked (so stopped) data dir's database and identity by the backup's.

    Everything is copied and checked under staging names first; node/restore.py
    then swaps all files or none.
    """
    data_dir = lock.data_dir
    finish_pending_restore(data_dir)
    clear_staged(data_dir)
    db_name = data_file(data_dir).name
    try:
        seed = read_seed(backup)
        entries = copy_database(backup / BACKUP_DB_NAME, staged_path(data_dir, db_name))
        write_private_file(staged_path(data_dir, IDENTITY_FILE_NAME), seed)
    except BaseException:
        clear_staged(data_dir)
        raise
    commit_restore(data_dir, install=(IDENTITY_FILE_NAME, db_name), remove=side_files(db_name))
    return DataDirCopy(peer_id_from_seed(seed), entries, (db_name, IDENTITY_FILE_NAME))


def _freeze_startup_heap() -> None:
    """Keep what start-up built (modules, libp2p, the API app: ~100 000
    objects) out of every later full garbage collection, each of which would
    otherwise walk them all again and stall the event loop ~40 ms here: a
    live entry that arrives meanwhile waits that long (issue 13)."""
    gc.collect()
    gc.freeze()
