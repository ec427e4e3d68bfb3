"""--max-store-mb at the node: past the limit, other origins' entries are refused
(counted as store_full), our own writes go on, and the flag clears below it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.core import protocol
from p2psync.core.entry import ZERO_HASH, Entry, sign_entry
from p2psync.core.hlc import Now
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, RecipeFields, encode_op
from p2psync.node.config import NodeConfig
from p2psync.node.node import STORE_MEASURE_SECONDS, Node, SystemClock
from p2psync.store.memory import MemoryStore
from p2psync.store.sqlite import SqliteStore

MIB = 1 << 20
OTHER = SigningKey(b"\x21" * 32)


class FakeClock(SystemClock):
    def __init__(self) -> None:
        self.monotonic = 1000.0

    def now(self) -> Now:
        return Now(self.monotonic, 1_700_000_000_000 + int(self.monotonic * 1000))

    def advance(self, seconds: float = STORE_MEASURE_SECONDS) -> None:
        self.monotonic += seconds


def other_origin_chain(count: int) -> list[Entry]:
    """`count` signed entries of OTHER's log, each a create with a long name."""
    entries: list[Entry] = []
    prev = ZERO_HASH
    origin = bytes(OTHER.verify_key)
    for seq in range(count):
        fields = RecipeFields(f"recipe {seq} " + "x" * 150, "i", "s")
        op = Op("create", make_recipe_id(origin, seq), None, fields)
        entry = sign_entry(OTHER, seq, prev, (1 << 40) + seq, encode_op(op))
        entries.append(entry)
        prev = entry.hash()
    return entries


def deliver(node: Node, entry: Entry) -> None:
    live = protocol.encode(protocol.Live((entry.raw,)))
    node.run_actions(node.engine.live_received("relay", live, node.now()))


def metric(metrics: Metrics, line_start: str) -> float:
    for line in metrics.render()[0].decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start}")


def make_node(store: MemoryStore | SqliteStore, max_store_mb: float | None, clock: FakeClock,
              metrics: Metrics, data_dir: Path = Path("/nonexistent")) -> Node:  # fmt: skip
    config = NodeConfig(data_dir=data_dir, mdns=False, max_store_mb=max_store_mb)
    return Node(config, SigningKey(b"\x07" * 32), store, metrics, clock=clock)


STORE_FULL = 'p2psync_entries_rejected_total{reason="store_full"}'


async def test_past_the_budget_other_origins_are_refused_and_own_writes_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p2psync.node.node")
    store, clock, metrics = MemoryStore(), FakeClock(), Metrics()
    limit_bytes = 2000  # about ten of OTHER's entries (MemoryStore counts raw bytes)
    node = make_node(store, limit_bytes / MIB, clock, metrics)
    assert not node.status().store_budget_hit
    entries = other_origin_chain(40)

    for entry in entries:
        deliver(node, entry)
        clock.advance()
        node.run_actions([])  # the ticker: a commit not measured yet is measured now
        if node.status().store_budget_hit:
            break
    status = node.status()
    assert status.store_budget_hit, "never reached 2000 bytes"
    held = status.entries
    assert 5 <= held < 20 and status.store_bytes is not None and status.store_bytes >= limit_bytes
    assert status.max_store_bytes == limit_bytes
    assert node.engine.store_full
    assert metric(metrics, STORE_FULL) == 0
    assert metric(metrics, "p2psync_store_budget_hit") == 1
    assert metric(metrics, "p2psync_store_bytes") == status.store_bytes
    assert metric(metrics, "p2psync_store_budget_bytes") == limit_bytes

    # Other origins' entries are refused now, counted as store_full, blaming nobody.
    for entry in entries[held : held + 3]:
        deliver(node, entry)
    assert node.status().entries == held
    assert metric(metrics, STORE_FULL) == 3
    assert metric(metrics, 'p2psync_messages_dropped_total{reason="store_full"}') == 0

    # Our own writes still work.
    recipe = await node.create_recipe("Mine", "a", "b")
    assert node.status().entries == held + 1
    assert recipe.name == "Mine" and node.status().store_budget_hit

    # One warning when the budget was hit, however many entries were refused.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "--max-store-mb" in message and "own writes still work" in message

    # A larger limit (here: changed in place) clears it, with one info line...
    node.store_budget.limit = 100 * limit_bytes
    node.store_budget.measure(clock.now().monotonic)
    assert not node.status().store_budget_hit and not node.engine.store_full
    assert metric(metrics, "p2psync_store_budget_hit") == 0
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    # ...and the next entry of the other origin is taken again.
    deliver(node, entries[held])
    assert node.status().entries == held + 2


async def test_a_restart_with_a_larger_limit_takes_other_origins_again() -> None:
    store, clock = MemoryStore(), FakeClock()
    entries = other_origin_chain(12)
    small = make_node(store, 1000 / MIB, clock, Metrics())
    for entry in entries[:8]:
        deliver(small, entry)
        clock.advance()
    assert small.status().store_budget_hit
    held = small.status().entries
    assert held < 8

    metrics = Metrics()
    larger = make_node(store, 1.0, clock, metrics)  # the same store, restarted
    assert not larger.status().store_budget_hit
    for entry in entries[held:]:
        deliver(larger, entry)
    assert larger.status().entries == len(entries)
    assert metric(metrics, STORE_FULL) == 0


async def test_a_budget_not_reached_never_refuses() -> None:
    store, clock, metrics = MemoryStore(), FakeClock(), Metrics()
    node = make_node(store, 0.5, clock, metrics)
    for entry in other_origin_chain(60):
        deliver(node, entry)
        clock.advance(0.3)
    node.run_actions([])
    clock.advance()
    node.run_actions([])
    status = node.status()
    assert status.entries == 60 and not status.store_budget_hit
    assert 60 * 150 < (status.store_bytes or 0) < MIB // 2
    assert metric(metrics, STORE_FULL) == 0
    assert metric(metrics, "p2psync_store_budget_hit") == 0


async def test_no_flag_no_limit() -> None:
    node = make_node(MemoryStore(), None, FakeClock(), Metrics())
    for entry in other_origin_chain(5):
        deliver(node, entry)
    status = node.status()
    assert status.entries == 5 and not status.store_budget_hit
    assert status.max_store_bytes is None
    assert status.to_json()["store_budget_hit"] is False


async def test_sqlite_store_size_grows_and_a_tiny_limit_holds_at_start(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "p2psync.db")
    try:
        clock, metrics = FakeClock(), Metrics()
        empty = store.size_bytes()
        assert empty > 0
        node = make_node(store, 16.0, clock, metrics, tmp_path)
        for entry in other_origin_chain(200):
            deliver(node, entry)
        assert store.size_bytes() > empty + 200 * 150
        assert not node.status().store_budget_hit
        # A limit the database is already past is hit at start, before any commit.
        tiny = make_node(store, empty / MIB, clock, Metrics(), tmp_path)
        assert tiny.status().store_budget_hit
        await tiny.create_recipe("Still mine", "a", "b")
        assert tiny.status().entries == 201
    finally:
        store.close()
