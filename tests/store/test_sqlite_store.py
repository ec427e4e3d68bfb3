"""SqliteStore: same answers as MemoryStore, durable, atomic, clear errors."""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroaring import BitMap64

import p2psync.core.recipe_book as recipe_book
from p2psync.core.actions import Accepted, Persist
from p2psync.core.entry import decode_entry, entry_hash
from p2psync.core.forks import ForkProof
from p2psync.core.hlc import MAX_HLC, wall_ms_of
from p2psync.core.ops import decode_op
from p2psync.core.reasons import Source
from p2psync.core.recipes import merge
from p2psync.core.store import StoreError
from p2psync.store.memory import MemoryStore
from p2psync.store.rows import raw_of, to_sql
from p2psync.store.schema import MIGRATIONS, SCHEMA_VERSION
from p2psync.store.sqlite import _MAX_HLC_BELOW, SqliteStore
from tests.store.store_helper import BATCH, HLC_BASE, entry_stream, persists

HELPER = Path(__file__).with_name("store_helper.py")
ROOT = Path(__file__).resolve().parents[2]
ENTRIES = 1200
NO_CEILING = wall_ms_of(MAX_HLC)
_BASE_MS = wall_ms_of(HLC_BASE)
# Below, inside and above the stream's ordinary hlcs, and across 2**63 (the
# sign of the stored value) up to the wild ones near 2**64.
HLC_CEILINGS = (-1, 0, _BASE_MS - 1, _BASE_MS + 50, _BASE_MS + 10**6, 2**47 - 1, 2**47)
HLC_CEILINGS += (NO_CEILING - 1, NO_CEILING)


@pytest.fixture(scope="module")
def accepted() -> list[Accepted]:
    return list(itertools.islice(entry_stream(7), ENTRIES))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore.open(tmp_path / "store.db") as opened:
        yield opened


def _same_as_memory(store: SqliteStore, memory: MemoryStore) -> None:
    assert store.entry_count() == memory.entry_count()
    for ceiling_ms in HLC_CEILINGS:
        assert store.last_hlc(ceiling_ms) == memory.last_hlc(ceiling_ms), ceiling_ms
    assert store.load_progress() == memory.load_progress()
    assert store.visible_recipes() == memory.visible_recipes()
    assert store.digest() == memory.digest()
    assert store.recipe_count() == memory.recipe_count() == len(memory.visible_recipes())
    for recipe_id in memory.recipes:
        assert store.recipe(recipe_id) == memory.recipe(recipe_id)
    for (origin, seq), (raw, hash_, prev) in memory.log.items():
        assert store.read_raw(origin, [seq]) == {seq: raw}
        assert store.entry_links(origin, [seq]) == {seq: (hash_, prev)}


def _by_origin(items: list[Accepted]) -> dict[bytes, list[Accepted]]:
    grouped: dict[bytes, list[Accepted]] = {}
    for item in items:
        grouped.setdefault(item.entry.origin, []).append(item)
    return grouped


def test_commits_read_back_like_memory_store_in_any_order(
    tmp_path: Path, accepted: list[Accepted]
) -> None:
    in_order = MemoryStore()
    for persist in persists(accepted):
        in_order.commit(persist)
    shuffled = list(accepted)
    random.Random(3).shuffle(shuffled)
    for name, items in (("ordered", accepted), ("shuffled", shuffled)):
        memory = MemoryStore()
        with SqliteStore.open(tmp_path / f"{name}.db") as store:
            unknown_fields = False
            for persist in persists(items):
                memory.commit(persist)
                store.commit(persist)
                _same_as_memory(store, memory)
                unknown_fields |= any(r.fields is None for r in memory.recipes.values())
            assert store.digest() == in_order.digest()
            assert store.entry_count() == ENTRIES
            assert store.last_hlc(NO_CEILING) >= 1 << 63  # the stream holds wild hlcs
            # Shuffled, some ops arrive before their create: fields unknown for a while.
            assert unknown_fields == (name == "shuffled")


def test_bitmaps_name_exactly_the_stored_entries_in_any_commit_order(
    tmp_path: Path, accepted: list[Accepted]
) -> None:
    """Persists may land out of order, or fail, while later ones were made: the
    stored bitmaps are never more (nor less) than what the log holds."""
    first, _failed, third = list(persists(accepted[:750]))
    for store_type in (SqliteStore, MemoryStore):
        store = (
            SqliteStore.open(tmp_path / "order.db") if store_type is SqliteStore else MemoryStore()
        )
        store.commit(third)  # its bitmaps claim the first two batches too
        expected: dict[bytes, BitMap64] = {}
        for item in third.entries:
            expected.setdefault(item.entry.origin, BitMap64()).add(item.entry.seq)
        assert store.load_progress() == expected
        store.commit(first)  # the second failed: never committed
        for item in first.entries:
            expected.setdefault(item.entry.origin, BitMap64()).add(item.entry.seq)
        assert store.load_progress() == expected
        held = {o: {s for s in b if store.read_raw(o, [s])} for o, b in expected.items()}
        assert held == {o: set(b) for o, b in expected.items()}
        assert store.entry_count() == 500
        store.close()
    with SqliteStore.open(tmp_path / "order.db") as reopened:
        assert reopened.load_progress() == expected


def test_last_hlc_below_a_ceiling_is_one_index_step(store: SqliteStore) -> None:
    plan = store._conn.execute(f"EXPLAIN QUERY PLAN {_MAX_HLC_BELOW}", (b"\0" * 8,)).fetchall()
    assert any("INDEX log_hlc" in row[-1] for row in plan), plan
    assert not any("TEMP B-TREE" in row[-1] for row in plan), plan  # no sort


def test_migration_adds_the_hlc_index_to_a_version_1_database(
    tmp_path: Path, accepted: list[Accepted]
) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    with SqliteStore.open(path) as store:
        for persist in persists(accepted[:100]):
            store.commit(persist)
        names = {row[0] for row in store._conn.execute("SELECT name FROM sqlite_master")}
        assert "log_hlc" in names
        assert store.last_hlc(wall_ms_of(HLC_BASE) + 10**6) < 1 << 63


def test_reads_in_batches_report_only_what_is_held(
    store: SqliteStore, accepted: list[Accepted]
) -> None:
    memory = MemoryStore()
    for persist in persists(accepted):
        store.commit(persist)
        memory.commit(persist)
    origin, items = next(iter(_by_origin(accepted).items()))
    raws = {a.entry.seq: a.entry.raw for a in items}
    top = max(raws)
    for reader in (store, memory):
        for seqs in (
            list(range(top + 1)),
            list(range(top, -1, -1)),
            [top, 0, 5, 4, 3, top - 1],  # far apart: several ranges
            [0],
            [],
        ):
            absent = [top + 1, top + 500]
            assert reader.read_raw(origin, [*seqs, *absent]) == {s: raws[s] for s in seqs}
            links = reader.entry_links(origin, [*seqs, *absent])
            assert links == {s: (entry_hash(raws[s]), decode_entry(raws[s]).prev) for s in seqs}
        assert reader.read_raw(origin, [0, top + 1]) == {0: raws[0]}
        assert reader.read_raw(b"\x01" * 32, [0]) == {}
        assert reader.entry_links(b"\x01" * 32, range(10)) == {}


def test_reopen_keeps_everything(tmp_path: Path, accepted: list[Accepted]) -> None:
    memory = MemoryStore()
    path = tmp_path / "store.db"
    with SqliteStore.open(path) as store:
        for persist in persists(accepted):
            memory.commit(persist)
            store.commit(persist)
        digest = store.digest()
    with SqliteStore.open(path) as store:
        _same_as_memory(store, memory)
        assert store.digest() == digest


def test_duplicates_are_idempotent(store: SqliteStore, accepted: list[Accepted]) -> None:
    batches = list(persists(accepted))
    for persist in batches:
        store.commit(persist)
    digest, count = store.digest(), store.entry_count()
    recipes = store.visible_recipes()
    for persist in reversed(batches):
        store.commit(persist)
    assert (store.digest(), store.entry_count()) == (digest, count)
    assert store.visible_recipes() == recipes
    # A batch of old and new entries counts only the new ones.
    more = list(itertools.islice(entry_stream(7), ENTRIES + 10))
    store.commit(next(persists(more[ENTRIES - 5 :], batch=100)))
    assert store.entry_count() == ENTRIES + 10


def test_failing_commit_writes_nothing(
    store: SqliteStore, accepted: list[Accepted], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = list(persists(accepted[:500]))
    store.commit(first)
    before = (
        store.entry_count(),
        store.last_hlc(NO_CEILING),
        store.digest(),
        store.load_progress(),
    )
    recipes = store.visible_recipes()
    calls = 0

    def failing_merge(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls > 20:  # after the log rows went in, halfway through the recipes
            raise RuntimeError("boom")
        return merge(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(recipe_book, "merge", failing_merge)
    with pytest.raises(RuntimeError, match="boom"):
        store.commit(second)
    assert (
        store.entry_count(),
        store.last_hlc(NO_CEILING),
        store.digest(),
        store.load_progress(),
    ) == before
    assert store.visible_recipes() == recipes
    entry = second.entries[0].entry
    assert store.read_raw(entry.origin, [entry.seq]) == {}
    with sqlite3.connect(store.path) as other:
        assert other.execute("SELECT count(*) FROM log").fetchone()[0] == 250
    other.close()
    monkeypatch.undo()
    store.commit(second)
    assert store.entry_count() == 500


def test_disk_full_is_a_clear_error_and_store_stays_usable(
    store: SqliteStore, accepted: list[Accepted]
) -> None:
    first, *rest = persists(accepted)
    store.commit(first)
    before = (store.entry_count(), store.digest(), store.load_progress())
    conn = store._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # a tiny "disk"
    with pytest.raises(StoreError, match=r"disk is full.*nothing was written"):
        store.commit(rest[0])
    assert (store.entry_count(), store.digest(), store.load_progress()) == before
    conn.execute("PRAGMA max_page_count = 1073741823")
    store.commit(rest[0])
    assert store.entry_count() == 2 * BATCH


def test_read_only_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    SqliteStore.open(path).close()
    path.chmod(0o444)
    with SqliteStore.open(path) as store:
        if os.geteuid() == 0:
            # Root writes through file modes; query_only makes SQLite refuse
            # writes with the same SQLITE_READONLY a read-only file gives.
            store._conn.execute("PRAGMA query_only = ON")
        persist = next(persists(entry_stream(99), batch=10))
        with pytest.raises(StoreError, match=r"could not store 10 entries.*read-only"):
            store.commit(persist)
        assert store.entry_count() == 0 and store.load_progress() == {}
        assert store.visible_recipes() == []


def test_refuses_newer_schema_and_foreign_databases(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    SqliteStore.open(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore.open(newer)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreError, match="another program"):
        SqliteStore.open(foreign)
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a database"):
        SqliteStore.open(tmp_path / "junk.db")


def _check_crash_survivor(path: Path, acknowledged: int, seed: int) -> None:
    batches = list(itertools.islice(persists(entry_stream(seed)), acknowledged + 2))
    with SqliteStore.open(path) as store:
        count = store.entry_count()
        progress = store.load_progress()
        # All acknowledged batches, and at most the one being committed at the kill.
        assert count in (BATCH * (acknowledged + 1), BATCH * (acknowledged + 2)), count
        durable = batches[: count // BATCH]
        for persist in durable:
            for origin, items in _by_origin(list(persist.entries)).items():
                seqs = [a.entry.seq for a in items]
                assert store.read_raw(origin, seqs) == {a.entry.seq: a.entry.raw for a in items}
        assert sum(len(b) for b in progress.values()) == count
        expected: dict[bytes, BitMap64] = {}
        for persist in durable:
            expected.update(persist.progress)
        assert progress == expected
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM log").fetchone()[0] == count
            rows = conn.execute(
                "SELECT o.key, l.seq, l.body FROM log l JOIN origins o ON o.no = l.origin"
            ).fetchall()
        conn.close()
        held: dict[bytes, BitMap64] = {}
        replayed: list[Accepted] = []
        for origin, seq, body in rows:
            held.setdefault(origin, BitMap64()).add(seq)
            entry = decode_entry(raw_of(origin, body))
            op = decode_op(entry.op) if b'"unknown"' not in entry.op else None
            replayed.append(Accepted(entry, op))
        assert held == progress
        memory = MemoryStore()
        memory.commit(Persist(tuple(replayed), {}, Source.BACKFILL, None))
        assert store.visible_recipes() == memory.visible_recipes()
        assert store.digest() == memory.digest()
        for recipe_id, state in memory.recipes.items():
            assert store.recipe(recipe_id) == state


@pytest.mark.parametrize("run", range(3))
def test_acknowledged_batches_survive_kill_9(tmp_path: Path, run: int) -> None:
    path = tmp_path / "crash.db"
    seed = 11 + run
    child = subprocess.Popen(
        [sys.executable, str(HELPER), "writer", str(path), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    acknowledged = -1
    try:
        for _ in range(2 + 3 * run):  # a different kill point each run
            line = child.stdout.readline()
            assert line, "writer died early"
            acknowledged = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.communicate(timeout=10)[0]
    # Lines printed after our last read were acknowledged too.
    acknowledged = max([acknowledged, *(int(x) for x in rest.split())])
    assert child.returncode == -signal.SIGKILL
    _check_crash_survivor(path, acknowledged, seed)


def test_a_version_3_fork_proof_row_loads_as_one_entry_sides(tmp_path: Path) -> None:
    """Schema 4 stores proof sides as chains; rows written before hold one raw entry."""
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:3]:
            for statement in step:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO forks (origin, seq, first, second) VALUES (?, ?, ?, ?)",
            (b"o" * 32, 4, b"first raw entry", b"second raw entry"),
        )
        conn.execute("PRAGMA user_version = 3")
    conn.close()
    with SqliteStore.open(path) as store:
        (old,) = store.load_forks()
        assert (old.first, old.second) == ((b"first raw entry",), (b"second raw entry",))
        chained = ForkProof(b"p" * 32, 2, (b"a1", b"a2"), (b"b1",))
        store.record_fork(chained)
        assert set(store.load_forks()) == {old, chained}


def test_migration_5_unpacks_the_published_seq(tmp_path: Path) -> None:
    """Schema 4 rows held the flag in `published` (0/1) or, briefly, the seq packed
    into it ((seq + 1) << 1 | flag); schema 5 keeps the seq in its own column."""
    path = tmp_path / "v4.db"
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:4]:
            for statement in step:
                conn.execute(statement)
        insert = (
            "INSERT INTO recipes (id, author, create_seq, published, deleted, updated)"
            " VALUES (?, ?, 0, ?, 0, 0)"
        )
        conn.execute(insert, ("0a" * 10, b"a" * 32, 1))  # the old flag
        conn.execute(insert, ("0b" * 10, b"a" * 32, ((7 + 1) << 1) | 0))  # packed
        conn.execute("PRAGMA user_version = 4")
    conn.close()
    with SqliteStore.open(path) as store:
        rows = dict(store._conn.execute("SELECT id, published_seq FROM recipes").fetchall())
        flags = dict(store._conn.execute("SELECT id, published FROM recipes").fetchall())
    assert rows == {b"\x0a" * 10: -1, b"\x0b" * 10: 7}
    assert flags == {b"\x0a" * 10: 1, b"\x0b" * 10: 0}


def _write_schema_5(path: Path, memory: MemoryStore) -> None:
    """A schema 5 database holding what `memory` holds, in schema 5's layout."""
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:5]:
            for statement in step:
                conn.execute(statement)
        conn.executemany(
            "INSERT INTO log (origin, seq, hash, prev, hlc, raw) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (origin, seq, hash_, prev, to_sql(decode_entry(raw).hlc), raw)
                for (origin, seq), (raw, hash_, prev) in memory.log.items()
            ],
        )
        rows = []
        for state in memory.recipes.values():
            fields, (f_hlc, f_seq) = state.fields, state.fields_version
            texts = (None,) * 3 if fields is None else (fields.name, fields.ingredients,
                                                        fields.instructions)  # fmt: skip
            rows.append(
                (state.id, state.author, state.create_seq, *texts,
                 None if fields is None else to_sql(f_hlc), None if fields is None else f_seq,
                 int(state.published), int(state.deleted), to_sql(state.updated),
                 state.published_seq)
            )  # fmt: skip
        conn.executemany(f"INSERT INTO recipes VALUES ({', '.join('?' * 12)})", rows)
        conn.executemany(
            "INSERT INTO progress (origin, bitmap) VALUES (?, ?)",
            [(o, b.serialize()) for o, b in memory.load_progress().items()],
        )
        digest_sum = int(memory.digest(), 16)
        meta = {
            "entry_count": memory.entry_count(),
            "last_hlc": to_sql(memory.last_hlc(NO_CEILING)),
            "recipe_count": memory.recipe_count(),
            "digest_hi": to_sql(digest_sum >> 64),
            "digest_lo": to_sql(digest_sum & ((1 << 64) - 1)),
        }
        conn.executemany(
            "UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in meta.items()]
        )
        conn.execute("PRAGMA user_version = 5")
    conn.close()


def test_migration_6_keeps_every_entry_and_recipe(tmp_path: Path, accepted: list[Accepted]) -> None:
    """Schema 6 drops copied columns and numbers origins: all reads answer as before."""
    memory = MemoryStore()
    shuffled = list(accepted)
    random.Random(5).shuffle(shuffled)  # some recipes with fields still unknown
    for persist in persists(shuffled[: ENTRIES // 2]):
        memory.commit(persist)
    assert any(r.fields is None for r in memory.recipes.values())
    path = tmp_path / "v5.db"
    _write_schema_5(path, memory)
    v5_size = path.stat().st_size
    with SqliteStore.open(path) as store:
        _same_as_memory(store, memory)
        version = store._conn.execute("PRAGMA user_version").fetchone()[0]
        assert version == SCHEMA_VERSION == 6
        assert store._conn.execute("PRAGMA freelist_count").fetchone()[0] == 0  # vacuumed
        assert store.size_bytes() < 0.8 * v5_size
        # ... and it goes on from there like a store that was always schema 6.
        for persist in persists(shuffled[ENTRIES // 2 :]):
            memory.commit(persist)
            store.commit(persist)
        _same_as_memory(store, memory)
