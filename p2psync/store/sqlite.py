"""The durable Store: one SQLite database in WAL mode.

Log rows, recipe states and progress bitmaps change in one transaction per
`Persist`, committed with `synchronous=FULL`, so an acknowledged op survives
kill -9 (and power loss, as far as the disk honours fsync), and after a crash
at any point the three agree: they are either all before or all after a batch.

Counters that would otherwise cost a scan (entry count, greatest hlc) live in
`meta`, updated in the same transaction, and are cached in memory. The digest
is cached until a commit changes a recipe.

HLCs are unsigned 64-bit but SQLite integers are signed, and a peer can sign
any hlc it likes, so hlc columns hold the two's complement of values >= 2**63
(see `_to_sql`): ordinary values stay readable, and nothing orders by hlc in
SQL.
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

from p2psync.core.engine import Persist
from p2psync.core.entry import Entry
from p2psync.core.ops import Op, RecipeFields
from p2psync.core.progress import encode_bitmap
from p2psync.core.recipes import DIGEST_MODULUS, RecipeState, digest_hex, merge, recipe_hash


class StoreError(Exception):
    """The database could not do what was asked (read-only, disk full, ...)."""


# 'p2ps': marks the file as ours, so we never migrate someone else's database.
APPLICATION_ID = 0x70327073

# MIGRATIONS[i] takes a database from schema version i to i + 1. Append new
# steps; never edit a released one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE log (
            origin BLOB NOT NULL,
            seq INTEGER NOT NULL,
            hash BLOB NOT NULL,
            prev BLOB NOT NULL,
            hlc INTEGER NOT NULL,
            raw BLOB NOT NULL,
            PRIMARY KEY (origin, seq)
        ) WITHOUT ROWID""",
        # A rowid table: rows can carry kilobytes of instructions, which
        # WITHOUT ROWID b-trees store poorly.
        """CREATE TABLE recipes (
            id TEXT PRIMARY KEY,
            author BLOB NOT NULL,
            create_seq INTEGER NOT NULL,
            name TEXT,
            ingredients TEXT,
            instructions TEXT,
            fields_hlc INTEGER,
            fields_seq INTEGER,
            published INTEGER NOT NULL,
            deleted INTEGER NOT NULL,
            updated INTEGER NOT NULL
        )""",
        """CREATE TABLE progress (
            origin BLOB PRIMARY KEY,
            bitmap BLOB NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO meta (key, value) VALUES ('entry_count', 0), ('last_hlc', 0),"
        " ('recipe_count', 0), ('digest_hi', 0), ('digest_lo', 0)",
        f"PRAGMA application_id = {APPLICATION_ID}",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

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
    "published, deleted, updated"
)
_UPSERT_RECIPE = (
    f"INSERT INTO recipes ({_RECIPE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, ingredients = excluded.ingredients, "
    "instructions = excluded.instructions, fields_hlc = excluded.fields_hlc, "
    "fields_seq = excluded.fields_seq, published = excluded.published, "
    "deleted = excluded.deleted, updated = excluded.updated"
)
_UPSERT_PROGRESS = (
    "INSERT INTO progress (origin, bitmap) VALUES (?, ?) "
    "ON CONFLICT (origin) DO UPDATE SET bitmap = excluded.bitmap"
)
_SELECT_RECIPES_IN = (
    f"SELECT {_RECIPE_COLUMNS} FROM recipes WHERE id IN (SELECT value FROM json_each(?))"
)
_SET_META = "UPDATE meta SET value = ? WHERE key = ?"

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1

_RecipeRow = tuple[
    str, bytes, int, str | None, str | None, str | None, int | None, int | None, int, int, int
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
        self._recipes: int = meta["recipe_count"]
        # Sum (mod 2**128) of the hashes of visible recipes: the state digest.
        self._digest_sum: int = (_from_sql(meta["digest_hi"]) << 64) | _from_sql(meta["digest_lo"])
        self._durable = True  # PRAGMA synchronous = FULL, as open() sets it

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
            _migrate(conn, path)
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

    def read_raw(self, origin: bytes, seqs: Iterable[int]) -> list[bytes]:
        order = list(seqs)
        wanted = set(order)
        found: dict[int, bytes] = {}
        with self._lock:
            for lo, hi in _ranges(wanted):
                for seq, raw in self._conn.execute(
                    "SELECT seq, raw FROM log WHERE origin = ? AND seq BETWEEN ? AND ?",
                    (origin, lo, hi),
                ):
                    if seq in wanted:
                        found[seq] = raw
        if len(found) != len(wanted):
            missing = min(wanted - found.keys())
            raise KeyError(f"entry {missing} of origin {origin.hex()[:16]} is not held")
        return [found[seq] for seq in order]

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
        ops: dict[str, list[tuple[Entry, Op]]] = {}
        for accepted in persist.entries:
            if accepted.op is not None:
                ops.setdefault(accepted.op.recipe_id, []).append((accepted.entry, accepted.op))
        batch_hlc = max((a.entry.hlc for a in persist.entries), default=0)
        with self._lock:
            # Inside the lock: a commit from another thread may have raised it.
            last_hlc = max(batch_hlc, self._last_hlc)
            conn = self._conn
            try:
                # Own ops are acknowledged to a user: fsync them (FULL). Entries
                # from peers have other copies; WAL with NORMAL still commits
                # them atomically and survives kill -9, and skips the fsync.
                durable = persist.source == "local"
                if durable != self._durable:
                    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                    self._durable = durable
                conn.execute("BEGIN IMMEDIATE")
                digest_sum, recipes = self._digest_sum, self._recipes
                inserted = conn.executemany(_INSERT_LOG, log_rows).rowcount if log_rows else 0
                if ops:
                    states = self._load_recipes(list(ops))
                    merged: list[_RecipeRow] = []
                    for recipe_id, recipe_ops in ops.items():
                        old = state = states.get(recipe_id)
                        for entry, op in recipe_ops:
                            state = merge(state, entry, op)
                        assert state is not None
                        merged.append(_recipe_row(state))
                        if old is not None and old.visible:
                            digest_sum -= recipe_hash(old)
                            recipes -= 1
                        if state.visible:
                            digest_sum += recipe_hash(state)
                            recipes += 1
                    conn.executemany(_UPSERT_RECIPE, merged)
                if persist.progress:
                    conn.executemany(
                        _UPSERT_PROGRESS,
                        [(origin, encode_bitmap(b)) for origin, b in persist.progress.items()],
                    )
                meta: list[tuple[int, str]] = []
                if inserted:
                    meta.append((self._count + inserted, "entry_count"))
                if last_hlc != self._last_hlc:
                    meta.append((_to_sql(last_hlc), "last_hlc"))
                digest_sum %= DIGEST_MODULUS
                if digest_sum != self._digest_sum or recipes != self._recipes:
                    meta.append((_to_sql(digest_sum >> 64), "digest_hi"))
                    meta.append((_to_sql(digest_sum & (_U64 - 1)), "digest_lo"))
                    meta.append((recipes, "recipe_count"))
                if meta:
                    conn.executemany(_SET_META, meta)
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
            if ops:
                self._digest_sum, self._recipes = digest_sum, recipes

    def _rollback(self) -> None:
        # SQLite already rolls back by itself after some errors (SQLITE_FULL,
        # SQLITE_IOERR), and a failing ROLLBACK must not hide the real error.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _load_recipes(self, ids: list[str]) -> dict[str, RecipeState]:
        # One JSON parameter instead of a list of ?s keeps the statement text
        # fixed, so SQLite's statement cache serves every batch.
        rows = self._conn.execute(_SELECT_RECIPES_IN, (orjson.dumps(ids),))
        return {row[0]: _recipe_state(row) for row in rows}

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
        return digest_hex(self._digest_sum)

    def recipe_count(self) -> int:
        return self._recipes

    def entry_count(self) -> int:
        return self._count

    def last_hlc(self) -> int:
        return self._last_hlc


# ---------------------------------------------------------------- helpers


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database {path} has schema version {version}, newer than the {SCHEMA_VERSION} "
            "this p2psync knows: upgrade p2psync (or use another data directory)"
        )
    if version == SCHEMA_VERSION:
        _check_ours(conn, path)
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the lock.
        version = _user_version(conn)
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(f"{path} is an SQLite database of another program, not p2psync's")
        if version:
            _check_ours(conn, path)
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _user_version(conn: sqlite3.Connection) -> int:
    value: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return value


def _check_ours(conn: sqlite3.Connection, path: Path) -> None:
    if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise StoreError(f"{path} is an SQLite database of another program, not p2psync's")


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
    )


def _recipe_state(row: Any) -> RecipeState:
    (rid, author, create_seq, name, ingredients, instructions) = row[:6]
    f_hlc, f_seq, published, deleted, updated = row[6:]
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
