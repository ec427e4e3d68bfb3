"""Core microbenchmarks, one process: verify+apply into SQLite, item encode/decode.

`apply_per_s`: entries of 4 origins, signed beforehand, fed as encoded BATCH
messages (the node's batch size) to a `SyncEngine` over a `SqliteStore` in a
temporary directory, every `Persist` committed as the daemon does, with the
daemon's two helpers beside it: the next BATCH's signatures checked in a
thread (node/batch_checks.py) and the WAL checkpoints in another
(store/wal_checkpoints.py). The time is split into the engine's part
(decode, hash links, the signatures not checked ahead, bitmaps, op decode)
and the store's part (one transaction per batch).

`live_apply_us`: what a receiver spends on one live op that arrives alone
(the live scenario's common case), a LIVE of one entry through the engine and
the node's executor (its commit, metrics and gauges); `live_validate_us`:
the live topic's validator before it (decode and the one signature check).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey
from pyroaring import BitMap64

from benchmarks.common import Context
from benchmarks.entries import make_log, make_logs, origin_key
from p2psync.api.metrics import Metrics
from p2psync.core import protocol
from p2psync.core.actions import Persist
from p2psync.core.batch_signatures import verified_in_batch
from p2psync.core.engine import EngineConfig, SyncEngine
from p2psync.core.hlc import Now
from p2psync.core.items import Item, decode_item
from p2psync.core.progress import Progress, contiguous_prefix
from p2psync.node.executor import Executor
from p2psync.node.observer import NullObserver
from p2psync.node.validation import TopicChecks
from p2psync.store.sqlite import SqliteStore
from p2psync.store.wal_checkpoints import serve_wal_checkpoints

KEYS = ("apply_per_s",)


class _Clock:
    def instant(self) -> Now:
        return Now(time.monotonic(), time.time_ns() // 1_000_000)


def _engine(seed_byte: bytes, store: SqliteStore, clock: _Clock) -> SyncEngine:
    """A node's engine over `store`, as the daemon builds it, with key `seed_byte` * 32."""
    return SyncEngine(
        SigningKey(seed_byte * 32),
        Progress(store.load_progress()),
        store,
        clock.instant(),
        EngineConfig(),
    )


def _batches(logs: list[list[Any]], batch_size: int) -> list[bytes]:
    messages: list[bytes] = []
    for log in logs:
        raws = [entry.raw for entry, _ in log]
        for start in range(0, len(raws), batch_size):
            chunk = tuple(raws[start : start + batch_size])
            batch = protocol.Batch(1, len(messages), False, chunk)
            messages.append(protocol.encode(batch))
    return messages


@contextlib.contextmanager
def _daemon_checkpoints(store: SqliteStore) -> Iterator[None]:
    """The daemon's WAL checkpoints (`serve_wal_checkpoints`), in a thread of their own."""
    started = threading.Event()
    handle: list[tuple[trio.lowlevel.TrioToken, trio.CancelScope]] = []
    failed: list[BaseException] = []

    async def serve() -> None:
        with trio.CancelScope() as scope:
            handle.append((trio.lowlevel.current_trio_token(), scope))
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_wal_checkpoints, store, NullObserver())
                started.set()

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # handed to the benchmark's thread below
            failed.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="checkpoints")
    thread.start()
    if not started.wait(30) or failed:
        raise RuntimeError(f"the checkpoint task did not start: {failed}")
    try:
        yield
    finally:
        token, scope = handle[0]
        with contextlib.suppress(trio.RunFinishedError):  # it may have ended by itself
            trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join()
    if failed:
        raise RuntimeError(f"the checkpoint task failed: {failed[0]!r}") from failed[0]


def _apply(messages: list[bytes], workdir: Path) -> dict[str, float]:
    store = SqliteStore.open(workdir / "p2psync.db")
    try:
        with _daemon_checkpoints(store):
            return _apply_to(store, messages)
    finally:
        store.close()


def _apply_to(store: SqliteStore, messages: list[bytes]) -> dict[str, float]:
    clock = _Clock()
    engine = _engine(b"\x42", store, clock)
    engine.peer_connected("peer", clock.instant())  # batches come within a session
    engine_s = commit_s = 0.0
    applied = 0
    # As the daemon does (node/batch_checks.py): the next BATCH's signatures
    # are checked in a thread while this one is applied.
    with concurrent.futures.ThreadPoolExecutor(1) as ahead:
        checked = ahead.submit(verified_in_batch, messages[0]) if messages else None
        for i, data in enumerate(messages):
            assert checked is not None
            verified = checked.result()
            if i + 1 < len(messages):
                checked = ahead.submit(verified_in_batch, messages[i + 1])
            t0 = time.perf_counter()
            engine.checked_signatures.note_verified(verified)
            actions = engine.message_received("peer", data, clock.instant())
            t1 = time.perf_counter()
            for action in actions:
                if isinstance(action, Persist):
                    store.commit(action)
                    applied += len(action.entries)
            t2 = time.perf_counter()
            engine_s += t1 - t0
            commit_s += t2 - t1
    return {"applied": applied, "engine_s": engine_s, "commit_s": commit_s}


def _live_apply(count: int, workdir: Path) -> dict[str, float]:
    """Per-op cost of single-entry LIVEs from one origin, applied one at a time."""
    log = make_log(origin_key(9), count, seed=9)
    messages = [protocol.encode(protocol.Live((entry.raw,))) for entry, _ in log]
    store = SqliteStore.open(workdir / "live.db")
    try:
        clock = _Clock()
        engine = _engine(b"\x43", store, clock)
        executor = Executor(engine, store, Metrics())
        checks = TopicChecks(engine.checked_signatures)
        warm = count // 10
        verify_s = apply_s = 0.0
        for i, data in enumerate(messages):
            t0 = time.perf_counter()
            if checks.live(data) is not None:
                raise RuntimeError(f"live: the validator refused entry {i}")
            t1 = time.perf_counter()
            now = clock.instant()
            executor.run_grouped([engine.live_received("peer", data, now)], now)
            t2 = time.perf_counter()
            if i >= warm:
                verify_s += t1 - t0
                apply_s += t2 - t1
        if store.entry_count() != count:
            raise RuntimeError(f"live: stored {store.entry_count()} of {count} entries")
        measured = count - warm
        return {"apply_us": apply_s / measured * 1e6, "validate_us": verify_s / measured * 1e6}
    finally:
        store.close()


def _time_it(fn: Any, repeat: int) -> float:
    """Best of `repeat` runs, in microseconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def _items_of(progress: Progress) -> list[Item]:
    items = []
    for origin in progress.origins():
        held = progress.held(origin)
        prefix = contiguous_prefix(held)
        beyond = BitMap64(held)
        if prefix:
            beyond.remove_range(0, prefix)
        items.append(Item(origin, prefix, b"\x01" * 32, beyond))
    return items


def _decode_all(data: bytes, count: int) -> None:
    view, offset = memoryview(data), 0
    for _ in range(count):
        _, offset = decode_item(view, offset)


def _summary_case(progress: Progress) -> dict[str, Any]:
    """What a node says of these holdings at a reconciliation leaf: its items."""
    items = _items_of(progress)
    data = b"".join(item.encode() for item in items)
    return {
        "bytes": len(data),
        "encode_us": round(_time_it(lambda: [i.encode() for i in _items_of(progress)], 20), 1),
        "decode_us": round(_time_it(lambda: _decode_all(data, len(items)), 20), 1),
    }


def _summaries(entries: int) -> dict[str, Any]:
    origins = [bytes([i]) * 32 for i in range(4)]
    per = entries // len(origins)
    contiguous = Progress({o: BitMap64(range(per)) for o in origins})
    rng = random.Random(5)
    # Every origin with 1% of its seqs missing at random: a bitmap beyond the prefix.
    holes = Progress(
        {o: BitMap64(s for s in range(per) if rng.random() >= 0.01 or s == 0) for o in origins}
    )
    # One origin, every other seq held: the worst case for run-length containers.
    alternate = Progress({origins[0]: BitMap64(range(0, 2 * entries, 2))})
    return {
        "entries": entries,
        "contiguous": _summary_case(contiguous),
        "one_percent_holes": _summary_case(holes),
        "alternate_seqs": _summary_case(alternate),
    }


def run(ctx: Context) -> dict[str, Any]:
    total = ctx.sizes.core_entries
    t0 = time.perf_counter()
    logs = make_logs(total, 4, seed=21)
    sign_s = time.perf_counter() - t0
    size = sum(len(entry.raw) for log in logs for entry, _ in log)
    messages = _batches(logs, EngineConfig().batch_size)
    workdir = Path(tempfile.mkdtemp(prefix="core-", dir=ctx.workdir))
    try:
        t0 = time.perf_counter()
        result = _apply(messages, workdir)
        elapsed = time.perf_counter() - t0
        db_bytes = sum(p.stat().st_size for p in workdir.glob("p2psync.db*"))
        live = _live_apply(ctx.sizes.core_live_ops, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if result["applied"] != total:
        raise RuntimeError(f"applied {result['applied']} of {total} entries")
    ctx.log(f"core: applied {total} entries in {elapsed:.2f} s")
    summaries = _summaries(ctx.sizes.summary_entries)
    return {
        "entries": total,
        "apply_per_s": round(total / elapsed),
        "engine_per_s": round(total / result["engine_s"]),
        "commit_per_s": round(total / result["commit_s"]),
        "engine_share": round(result["engine_s"] / elapsed, 3),
        "live_ops": ctx.sizes.core_live_ops,
        "live_apply_us": round(live["apply_us"], 1),
        "live_validate_us": round(live["validate_us"], 1),
        "sign_per_s": round(total / sign_s),
        "avg_entry_bytes": round(size / total, 1),
        "batch_messages": len(messages),
        "db_mb": round(db_bytes / (1 << 20), 2),
        "summary": summaries,
        "summary_encode_us": summaries["one_percent_holes"]["encode_us"],
        "summary_decode_us": summaries["one_percent_holes"]["decode_us"],
    }
