"""The durable Store: one SQLite database in WAL mode.

Log rows, recipe states and progress bitmaps change in one transaction per
`Persist`, committed with `synchronous=FULL`, so an acknowledged op survives
kill -9 (and power loss, as far as the disk honours fsync), and after a crash
at any point the three agree: they are either all before or all after a batch.

Counters that would otherwise cost a scan (entry count, greatest hlc, and the
recipe book's totals: visible recipes and the digest accumulator) live in
`meta`, updated in the same transaction, and are cached in memory. What a
batch does to recipes and totals is decided in core (`merge_entries`); this
module only loads the touched rows and writes the result. The schema and its
migrations are in schema.py.

HLCs are unsigned 64-bit but SQLite integers are signed, and a peer can sign
any hlc it likes, so hlc columns hold the two's complement of values >= 2**63
(see `_to_sql`): ordinary values stay readable. The one query that orders by
hlc (`last_hlc` with a ceiling, at start) keeps its range to one sign.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from pyroaring import BitMap64

from p2psync.core.actions import Persist
from p2psync.core.forks import ForkProof, decode_side, encode_side
from p2psync.core.hlc import LOGICAL_MASK, pack, wall_ms_of
from p2psync.core.ops import RecipeFields
from p2psync.core.progress import encode_bitmap
from p2psync.core.reasons import Source
from p2psync.core.recipe_book import (
    BookTotals,
    counted_entries,
    merge_entries,
    rebuild_author,
    touched_recipe_ids,
)
from p2psync.core.recipes import RecipeState
from p2psync.core.store import StoreError
from p2psync.store.schema import migrate

_BUSY_TIMEOUT_MS = 5000
_CACHE_KIB = 32 * 1024
# Seqs closer than this are read with one range query; the few unwanted rows
# in between cost less than another round trip into SQLite.
_RANGE_GAP = 64

_INSERT_LOG = (
    "INSERT OR IGNORE INTO log (origin, seq, hash, prev, hlc, raw) VALUES (?, ?, ?, ?, ?, ?)"
)
_RECIPE_COLUMNS = (
    "id, author, create_seq, name, ingredients, instructions, fields_hlc, fields_seq, "
    "published, deleted, updated, published_seq"
)
_UPSERT_RECIPE = (
    f"INSERT INTO recipes ({_RECIPE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, ingredients = excluded.ingredients, "
    "instructions = excluded.instructions, fields_hlc = excluded.fields_hlc, "
    "fields_seq = excluded.fields_seq, published = excluded.published, "
    "deleted = excluded.deleted, updated = excluded.updated, "
    "published_seq = excluded.published_seq"
)
_UPSERT_PROGRESS = (
    "INSERT INTO progress (origin, bitmap) VALUES (?, ?) "
    "ON CONFLICT (origin) DO UPDATE SET bitmap = excluded.bitmap"
)
_SELECT_RECIPES_IN = (
    f"SELECT {_RECIPE_COLUMNS} FROM recipes WHERE id IN (SELECT value FROM json_each(?))"
)
_SET_META = "UPDATE meta SET value = ? WHERE key = ?"
# One step down the log_hlc index; the bounds keep to one sign (see _to_sql).
_MAX_HLC_BETWEEN = "SELECT hlc FROM log WHERE hlc BETWEEN ? AND ? ORDER BY hlc DESC LIMIT 1"

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1

_RecipeRow = tuple[
    str, bytes, int, str | None, str | None, str | None, int | None, int | None, int, int, int, int
]


def _to_sql(hlc: int) -> int:
    return hlc - _U64 if hlc > _I64_MAX else hlc


def _from_sql(value: int) -> int:
    return value + _U64 if value < 0 else value


class SqliteStore:
    """The Store protocol over SQLite. Safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        # Use `SqliteStore.open`; this only wraps a connection it prepared.
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._count: int = meta["entry_count"]
        self._last_hlc: int = _from_sql(meta["last_hlc"])
        digest_sum = (_from_sql(meta["digest_hi"]) << 64) | _from_sql(meta["digest_lo"])
        self._totals = BookTotals(digest_sum, meta["recipe_count"])
        self._durable = True  # PRAGMA synchronous = FULL, as open() sets it
        self._page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: Path) -> SqliteStore:
        """Open (creating or migrating) the database at `path`."""
        path = Path(path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so that
            # the module never opens a transaction behind our back.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"database {path} cannot use WAL mode (journal mode {mode})")
            # FULL, not NORMAL: NORMAL in WAL mode may lose the last commits on
            # power loss, and we acknowledge ops once commit returns.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            migrate(conn, path)
            return cls(conn, path)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open database {path}: {_describe(exc)}") from exc
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ LogReader

    def entry_links(self, origin: bytes, seqs: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
        wanted = set(seqs)
        found: dict[int, tuple[bytes, bytes]] = {}
        with self._lock:
            for lo, hi in _ranges(wanted):
                for seq, hash_, prev in self._conn.execute(
                    "SELECT seq, hash, prev FROM log WHERE origin = ? AND seq BETWEEN ? AND ?",
                    (origin, lo, hi),
                ):
                    if seq in wanted:
                        found[seq] = (hash_, prev)
        return found

    def read_raw(self, origin: bytes, seqs: Iterable[int]) -> dict[int, bytes]:
        wanted = set(seqs)
        found: dict[int, bytes] = {}
        with self._lock:
            for lo, hi in _ranges(wanted):
                for seq, raw in self._conn.execute(
                    "SELECT seq, raw FROM log WHERE origin = ? AND seq BETWEEN ? AND ?",
                    (origin, lo, hi),
                ):
                    if seq in wanted:
                        found[seq] = raw
        return found

    # ------------------------------------------------------------ writes

    def commit(self, persist: Persist) -> None:
        """Apply one Persist in one transaction; StoreError if SQLite refuses."""
        if not persist.entries and not persist.progress:
            return
        log_rows = [
            (e.origin, e.seq, accepted.entry_hash(), e.prev, _to_sql(e.hlc), e.raw)
            for accepted in persist.entries
            for e in (accepted.entry,)
        ]
        progress_rows = [(origin, encode_bitmap(b)) for origin, b in persist.progress.items()]
        batch_hlc = max((a.entry.hlc for a in persist.entries), default=0)
        with self._lock:
            # Inside the lock: a commit from another thread may have raised it.
            last_hlc = max(batch_hlc, self._last_hlc)
            conn = self._conn
            try:
                # Own ops are acknowledged to a user: fsync them (FULL). Entries
                # from peers have other copies; WAL with NORMAL still commits
                # them atomically and survives kill -9, and skips the fsync.
                durable = persist.source == Source.LOCAL
                if durable != self._durable:
                    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                    self._durable = durable
                conn.execute("BEGIN IMMEDIATE")
                inserted = conn.executemany(_INSERT_LOG, log_rows).rowcount if log_rows else 0
                stored = self._load_recipes(touched_recipe_ids(persist.entries))
                change = merge_entries(persist.entries, stored, self._totals)
                recipe_rows = [_recipe_row(state) for state in change.recipes.values()]
                conn.executemany(_UPSERT_RECIPE, recipe_rows)
                conn.executemany(_UPSERT_PROGRESS, progress_rows)
                conn.executemany(_SET_META, self._meta_changes(inserted, last_hlc, change.totals))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(
                    f"could not store {len(persist.entries)} entries in {self.path}: "
                    f"{_describe(exc)}; nothing was written"
                ) from exc
            except BaseException:
                self._rollback()
                raise
            self._count += inserted
            self._last_hlc = last_hlc
            self._totals = change.totals

    def _meta_changes(
        self, inserted: int, last_hlc: int, totals: BookTotals
    ) -> list[tuple[int, str]]:
        """(value, key) rows for the counters a commit changes."""
        meta: list[tuple[int, str]] = []
        if inserted:
            meta.append((self._count + inserted, "entry_count"))
        if last_hlc != self._last_hlc:
            meta.append((_to_sql(last_hlc), "last_hlc"))
        if totals != self._totals:
            meta.append((_to_sql(totals.digest_sum >> 64), "digest_hi"))
            meta.append((_to_sql(totals.digest_sum & (_U64 - 1)), "digest_lo"))
            meta.append((totals.visible, "recipe_count"))
        return meta

    def _rollback(self) -> None:
        # SQLite already rolls back by itself after some errors (SQLITE_FULL,
        # SQLITE_IOERR), and a failing ROLLBACK must not hide the real error.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _load_recipes(self, ids: list[str]) -> dict[str, RecipeState]:
        if not ids:
            return {}
        # One JSON parameter instead of a list of ?s keeps the statement text
        # fixed, so SQLite's statement cache serves every batch.
        rows = self._conn.execute(_SELECT_RECIPES_IN, (orjson.dumps(ids),))
        return {row[0]: _recipe_state(row) for row in rows}

    def record_fork(self, proof: ForkProof) -> None:
        """Keep a fork proof and make the author's recipes again from the entries
        below the forked seq, in one transaction."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT OR REPLACE INTO forks (origin, seq, first, second, chained)"
                    " VALUES (?, ?, ?, ?, 1)",
                    (proof.origin, proof.seq, encode_side(proof.first), encode_side(proof.second)),
                )
                raws = [
                    raw
                    for (raw,) in conn.execute(
                        "SELECT raw FROM log WHERE origin = ? AND seq < ? ORDER BY seq",
                        (proof.origin, proof.seq),
                    )
                ]
                rows = conn.execute(
                    f"SELECT {_RECIPE_COLUMNS} FROM recipes WHERE author = ?", (proof.origin,)
                )
                stored = {row[0]: _recipe_state(row) for row in rows}
                rebuild = rebuild_author(counted_entries(raws), stored, self._totals)
                conn.executemany(
                    "DELETE FROM recipes WHERE id = ?", [(rid,) for rid in rebuild.removed]
                )
                conn.executemany(_UPSERT_RECIPE, [_recipe_row(s) for s in rebuild.recipes.values()])
                conn.executemany(_SET_META, self._meta_changes(0, self._last_hlc, rebuild.totals))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(
                    f"could not store a fork proof in {self.path}: {_describe(exc)}"
                ) from exc
            except BaseException:
                self._rollback()
                raise
            self._totals = rebuild.totals

    def load_forks(self) -> list[ForkProof]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT origin, seq, first, second, chained FROM forks"
            ).fetchall()
        return [
            ForkProof(origin, seq, *(decode_side(b) if chained else (b,) for b in (first, second)))
            for origin, seq, first, second, chained in rows
        ]

    # ------------------------------------------------------------ reads

    def load_progress(self) -> dict[bytes, BitMap64]:
        with self._lock:
            rows = self._conn.execute("SELECT origin, bitmap FROM progress").fetchall()
        # Our own bytes, written by encode_bitmap: no untrusted-size checks needed.
        return {origin: BitMap64.deserialize(data) for origin, data in rows}

    def recipe(self, recipe_id: str) -> RecipeState | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_RECIPE_COLUMNS} FROM recipes WHERE id = ?", (recipe_id,)
            ).fetchone()
        return None if row is None else _recipe_state(row)

    def visible_recipes(self) -> list[RecipeState]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_RECIPE_COLUMNS} FROM recipes "
                "WHERE name IS NOT NULL AND deleted = 0 ORDER BY id"
            ).fetchall()
        return [_recipe_state(row) for row in rows]

    def digest(self) -> str:
        return self._totals.digest()

    def recipe_count(self) -> int:
        return self._totals.visible

    def entry_count(self) -> int:
        return self._count

    def size_bytes(self) -> int:
        """Pages in use times the page size (the -wal file not counted): ~20 us."""
        with self._lock:
            try:
                pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
                free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            except sqlite3.Error as exc:
                raise StoreError(f"cannot measure {self.path}: {_describe(exc)}") from exc
        return int(pages - free) * self._page_size

    def last_hlc(self, ceiling_ms: int) -> int:
        if wall_ms_of(self._last_hlc) <= ceiling_ms:
            return self._last_hlc  # the usual case: the counter, no query
        if ceiling_ms < 0:
            return 0
        bound = pack(ceiling_ms, LOGICAL_MASK)
        with self._lock:
            if bound > _I64_MAX:
                # Stored as negatives (_to_sql), and all greater than any other.
                row = self._conn.execute(_MAX_HLC_BETWEEN, (-_I64_MAX - 1, _to_sql(bound)))
                found = row.fetchone()
                if found is not None:
                    return _from_sql(found[0])
                bound = _I64_MAX
            found = self._conn.execute(_MAX_HLC_BETWEEN, (0, bound)).fetchone()
        return 0 if found is None else int(found[0])


# ---------------------------------------------------------------- helpers


def _ranges(seqs: set[int]) -> list[tuple[int, int]]:
    """Cover `seqs` with few [lo, hi] ranges, bridging gaps up to _RANGE_GAP."""
    if not seqs:
        return []
    lo, hi = min(seqs), max(seqs)
    if hi - lo <= 2 * len(seqs) + _RANGE_GAP:  # the usual case: (nearly) contiguous
        return [(lo, hi)]
    ranges: list[tuple[int, int]] = []
    start = prev = -1
    for seq in sorted(seqs):
        if start < 0:
            start = prev = seq
        elif seq - prev > _RANGE_GAP:
            ranges.append((start, prev))
            start = prev = seq
        else:
            prev = seq
    ranges.append((start, prev))
    return ranges


def _recipe_row(state: RecipeState) -> _RecipeRow:
    fields = state.fields
    known = fields is not None
    hlc, seq = state.fields_version
    return (
        state.id,
        state.author,
        state.create_seq,
        fields.name if fields is not None else None,
        fields.ingredients if fields is not None else None,
        fields.instructions if fields is not None else None,
        _to_sql(hlc) if known else None,
        seq if known else None,
        int(state.published),
        int(state.deleted),
        _to_sql(state.updated),
        state.published_seq,
    )


def _recipe_state(row: Any) -> RecipeState:
    (rid, author, create_seq, name, ingredients, instructions) = row[:6]
    f_hlc, f_seq, published, deleted, updated, published_seq = row[6:]
    known = name is not None
    return RecipeState(
        id=rid,
        author=author,
        create_seq=create_seq,
        fields=RecipeFields(name, ingredients, instructions) if known else None,
        fields_version=(_from_sql(f_hlc), f_seq) if known else (-1, -1),
        published=bool(published),
        deleted=bool(deleted),
        updated=_from_sql(updated),
        published_seq=published_seq,
    )


# Primary result codes (the low byte of extended codes) worth a plain sentence.
_SQLITE_MESSAGES = {
    5: "the database is locked by another process",  # SQLITE_BUSY
    6: "the database is locked",  # SQLITE_LOCKED
    8: "the database is read-only",  # SQLITE_READONLY
    10: "disk I/O error",  # SQLITE_IOERR
    11: "the database file is corrupt",  # SQLITE_CORRUPT
    13: "the disk is full",  # SQLITE_FULL
    14: "the database file cannot be opened",  # SQLITE_CANTOPEN
    26: "the file is not a database",  # SQLITE_NOTADB
}


def _describe(exc: sqlite3.Error) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    plain = _SQLITE_MESSAGES.get(code & 0xFF) if isinstance(code, int) else None
    return f"{plain} ({exc})" if plain else str(exc)
