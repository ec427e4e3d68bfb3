"""The durable Store: one SQLite database in WAL mode.

Log rows, recipe states and progress bitmaps change in one transaction per
`Persist`. Our own ops commit with `synchronous=FULL`, so an acknowledged op
survives kill -9 and power loss (as far as the disk honours fsync); entries
from peers with NORMAL, which in WAL mode still survives kill -9. After a
crash at any point the three agree: they are either all before or all after
a batch. The stored bitmap of an origin is what was stored before plus the
batch's seqs (not the engine's view, which may count Persists still in
flight), so Persists may commit in any order, or fail, and the bitmaps still
name exactly the entries the log holds.

Counters that would otherwise cost a scan (entry count, greatest hlc, and the
recipe book's totals: visible recipes and the digest accumulator) live in
`meta`, updated in the same transaction, and are cached in memory. What a
batch does to recipes and totals is decided in core (`merge_entries`); this
module only loads the touched rows and writes the result. The schema and its
migrations are in schema.py, the layout of rows in rows.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from pyroaring import BitMap64

from p2psync.core.actions import Persist
from p2psync.core.forks import ForkProof, decode_side, encode_side
from p2psync.core.hlc import LOGICAL_MASK, pack, wall_ms_of
from p2psync.core.progress import encode_bitmap
from p2psync.core.reasons import Source
from p2psync.core.recipe_book import (
    BookTotals,
    StoreSummary,
    counted_entries,
    merge_entries,
    rebuild_author,
)
from p2psync.core.recipes import RecipeState
from p2psync.core.store import StoreError
from p2psync.store.last_links import LastLinks
from p2psync.store.rows import (
    RECIPE_COLUMNS,
    SELECT_RECIPES,
    body_of,
    describe,
    from_sql,
    hlc_key,
    links_of,
    raw_of,
    recipe_id_key,
    recipe_row,
    recipe_state,
    seq_ranges,
    to_sql,
)
from p2psync.store.schema import migrate

_BUSY_TIMEOUT_MS = 5000
_CACHE_KIB = 32 * 1024
_WAL_KEEP_BYTES = 32 * 1024 * 1024
# Seqs closer than this are read with one range query; the few unwanted rows
# in between cost less than another round trip into SQLite.
_RANGE_GAP = 64
# Recipes are loaded by id this many at a time (unused places are NULL), so
# the statement text stays fixed and SQLite's statement cache serves it.
_LOAD_CHUNK = 128

_INSERT_LOG = "INSERT OR IGNORE INTO log (origin, seq, body) VALUES (?, ?, ?)"
_UPSERT_RECIPE = (
    f"INSERT INTO recipes ({RECIPE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET fields_seq = excluded.fields_seq, "
    "published = excluded.published, deleted = excluded.deleted, "
    "updated = excluded.updated, published_seq = excluded.published_seq"
)
_UPSERT_PROGRESS = (
    "INSERT INTO progress (origin, bitmap) VALUES (?, ?) "
    "ON CONFLICT (origin) DO UPDATE SET bitmap = excluded.bitmap"
)
_SELECT_RECIPES_IN = f"{SELECT_RECIPES} WHERE r.id IN ({', '.join('?' * _LOAD_CHUNK)})"
_SELECT_RANGE = "SELECT seq, body FROM log WHERE origin = ? AND seq BETWEEN ? AND ?"
_SET_META = "UPDATE meta SET value = ? WHERE key = ?"
# One step down the log_hlc index (8-byte big-endian blobs order as unsigned).
_MAX_HLC_BELOW = (
    "SELECT substr(body, 42, 8) FROM log WHERE substr(body, 42, 8) <= ?"
    " ORDER BY substr(body, 42, 8) DESC LIMIT 1"
)

_U64 = 1 << 64


class SqliteStore:
    """The Store protocol over SQLite. Safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        # Use `SqliteStore.open`; this only wraps a connection it prepared.
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._last_hlc: int = from_sql(meta["last_hlc"])
        digest_sum = (from_sql(meta["digest_hi"]) << 64) | from_sql(meta["digest_lo"])
        totals = BookTotals(digest_sum, meta["recipe_count"])
        self._summary = StoreSummary(meta["entry_count"], totals)
        self._durable = True  # PRAGMA synchronous = FULL, as open() sets it
        self._page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]
        # Origin keys and the numbers log and recipe rows name them by.
        self._numbers: dict[bytes, int] = {}
        self._keys: dict[int, bytes] = {}
        for no, key in conn.execute("SELECT no, key FROM origins"):
            self._numbers[key] = no
            self._keys[no] = key
        # What the log holds, as committed: each commit adds its entries' seqs.
        self._held: dict[bytes, BitMap64] = self._read_progress()
        self._last_links = LastLinks()
        self.commit_count = 0  # transactions committed through this store: a change marker

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
            # A WAL that a long reader (a backup) let grow shrinks back when it
            # starts over; below this SQLite reuses the file as it is.
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_KEEP_BYTES}")
            migrate(conn, path)
            return cls(conn, path)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open database {path}: {describe(exc)}") from exc
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def set_wal_autocheckpoint(self, pages: int) -> None:
        """Past how many WAL pages a commit checkpoints by itself (see wal_checkpoints.py)."""
        with self._lock:
            try:
                self._conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot set checkpoints of {self.path}: {describe(exc)}") from exc

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
        wanted = list(seqs)
        known = self._last_links.links(origin, wanted)
        if known is not None:
            return known
        return {seq: links_of(origin, body) for seq, body in self._bodies(origin, wanted).items()}

    def read_raw(self, origin: bytes, seqs: Iterable[int]) -> dict[int, bytes]:
        return {seq: raw_of(origin, body) for seq, body in self._bodies(origin, seqs).items()}

    def _bodies(self, origin: bytes, seqs: Iterable[int]) -> dict[int, bytes]:
        wanted = set(seqs)
        found: dict[int, bytes] = {}
        with self._lock:
            no = self._numbers.get(origin)
            if no is None:
                return found
            for lo, hi in seq_ranges(wanted, _RANGE_GAP):
                for seq, body in self._conn.execute(_SELECT_RANGE, (no, lo, hi)):
                    if seq in wanted:
                        found[seq] = body
        return found

    # ------------------------------------------------------------ writes

    def commit(self, persist: Persist) -> None:
        """Apply one Persist in one transaction; StoreError if SQLite refuses."""
        if not persist.entries:
            return
        batch_hlc = max(a.entry.hlc for a in persist.entries)
        with self._lock:
            # Inside the lock: a commit from another thread may have raised it.
            last_hlc = max(batch_hlc, self._last_hlc)
            conn = self._conn
            new: dict[bytes, int] = {}  # origins numbered by this transaction
            try:
                # Own ops are acknowledged to a user: fsync them (FULL). Entries
                # from peers have other copies; WAL with NORMAL still commits
                # them atomically and survives kill -9, and skips the fsync.
                durable = persist.source == Source.LOCAL
                if durable != self._durable:
                    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                    self._durable = durable
                conn.execute("BEGIN IMMEDIATE")
                numbers = self._number(persist, new)
                log_rows = [
                    (numbers[e.origin], e.seq, body_of(e.raw))
                    for accepted in persist.entries
                    for e in (accepted.entry,)
                ]
                inserted = conn.executemany(_INSERT_LOG, log_rows).rowcount
                held = self._held_after(persist)
                progress_rows = [(origin, encode_bitmap(b)) for origin, b in held.items()]
                stored = self._load_recipes(self._stored_ids(persist))
                change = merge_entries(persist.entries, stored, self._summary.totals)
                recipe_rows = [recipe_row(s, numbers[s.author]) for s in change.recipes.values()]
                conn.executemany(_UPSERT_RECIPE, recipe_rows)
                conn.executemany(_UPSERT_PROGRESS, progress_rows)
                conn.executemany(_SET_META, self._meta_changes(inserted, last_hlc, change.totals))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(
                    f"could not store {len(persist.entries)} entries in {self.path}: "
                    f"{describe(exc)}; nothing was written"
                ) from exc
            except BaseException:
                self._rollback()
                raise
            for key, no in new.items():
                self._numbers[key] = no
                self._keys[no] = key
            self._held.update(held)
            if inserted == len(log_rows):
                self._last_links.committed(persist.entries)
            else:  # a row was there already: it, not this entry, is what the log holds
                self._last_links.forget(a.entry.origin for a in persist.entries)
            self._last_hlc = last_hlc
            self._summary = StoreSummary(self._summary.entries + inserted, change.totals)
            self.commit_count += 1

    def _held_after(self, persist: Persist) -> dict[bytes, BitMap64]:
        """The held bitmap of each origin of `persist` once it commits: what was
        committed before plus its entries. Never more than the log holds, in
        whatever order Persists commit (and whichever of them fail)."""
        seqs: dict[bytes, list[int]] = {}
        for accepted in persist.entries:
            entry = accepted.entry
            seqs.setdefault(entry.origin, []).append(entry.seq)
        empty = BitMap64()
        return {origin: self._held.get(origin, empty) | BitMap64(s) for origin, s in seqs.items()}

    def _stored_ids(self, persist: Persist) -> list[str]:
        """The recipes `persist` touches that may have a row already.

        A create's recipe can have one only if its author's later entries
        were stored before (ops that came before their create); in a backfill
        in seq order none were, and its lookup is skipped.
        """
        ids: dict[str, None] = {}
        held = self._held
        for accepted in persist.entries:
            op = accepted.op
            if op is None:
                continue
            if op.kind == "create":
                before = held.get(accepted.entry.origin)
                if not before or before.max() < accepted.entry.seq:
                    continue
            ids[op.recipe_id] = None
        return list(ids)

    def _number(self, persist: Persist, new: dict[bytes, int]) -> dict[bytes, int]:
        """The number of each origin of `persist`'s entries; unknown ones get one
        (in the open transaction; recorded in `new` to keep once it commits)."""
        numbers: dict[bytes, int] = {}
        known = self._numbers
        for accepted in persist.entries:
            origin = accepted.entry.origin
            if origin in numbers:
                continue
            no = known.get(origin)
            if no is None:
                cursor = self._conn.execute("INSERT INTO origins (key) VALUES (?)", (origin,))
                no = new[origin] = int(cursor.lastrowid or 0)
            numbers[origin] = no
        return numbers

    def _meta_changes(
        self, inserted: int, last_hlc: int, totals: BookTotals
    ) -> list[tuple[int, str]]:
        """(value, key) rows for the counters a commit changes."""
        meta: list[tuple[int, str]] = []
        if inserted:
            meta.append((self._summary.entries + inserted, "entry_count"))
        if last_hlc != self._last_hlc:
            meta.append((to_sql(last_hlc), "last_hlc"))
        if totals != self._summary.totals:
            meta.append((to_sql(totals.digest_sum >> 64), "digest_hi"))
            meta.append((to_sql(totals.digest_sum & (_U64 - 1)), "digest_lo"))
            meta.append((totals.visible, "recipe_count"))
        return meta

    def _rollback(self) -> None:
        # SQLite already rolls back by itself after some errors (SQLITE_FULL,
        # SQLITE_IOERR), and a failing ROLLBACK must not hide the real error.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _load_recipes(self, ids: list[str]) -> dict[str, RecipeState]:
        keys = [bytes.fromhex(recipe_id) for recipe_id in ids]
        found: dict[str, RecipeState] = {}
        for start in range(0, len(keys), _LOAD_CHUNK):
            chunk: list[bytes | None] = [*keys[start : start + _LOAD_CHUNK]]
            chunk += [None] * (_LOAD_CHUNK - len(chunk))
            for row in self._conn.execute(_SELECT_RECIPES_IN, chunk):
                state = recipe_state(row, self._keys[row[1]])
                found[state.id] = state
        return found

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
                no = self._numbers.get(proof.origin)  # None: we hold none of its entries
                raws = [
                    raw_of(proof.origin, body)
                    for (body,) in conn.execute(
                        "SELECT body FROM log WHERE origin = ? AND seq < ? ORDER BY seq",
                        (no, proof.seq),
                    )
                ]
                rows = conn.execute(f"{SELECT_RECIPES} WHERE r.author = ?", (no,))
                states = [recipe_state(row, proof.origin) for row in rows]
                stored = {state.id: state for state in states}
                rebuild = rebuild_author(counted_entries(raws), stored, self._summary.totals)
                conn.executemany(
                    "DELETE FROM recipes WHERE id = ?",
                    [(bytes.fromhex(rid),) for rid in rebuild.removed],
                )
                upserts = [recipe_row(s, no or 0) for s in rebuild.recipes.values()]
                conn.executemany(_UPSERT_RECIPE, upserts)
                conn.executemany(_SET_META, self._meta_changes(0, self._last_hlc, rebuild.totals))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(
                    f"could not store a fork proof in {self.path}: {describe(exc)}"
                ) from exc
            except BaseException:
                self._rollback()
                raise
            self._summary = StoreSummary(self._summary.entries, rebuild.totals)
            self.commit_count += 1

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
            return {origin: BitMap64(held) for origin, held in self._held.items()}

    def _read_progress(self) -> dict[bytes, BitMap64]:
        rows = self._conn.execute("SELECT origin, bitmap FROM progress").fetchall()
        # Our own bytes, written by encode_bitmap: no untrusted-size checks needed.
        return {origin: BitMap64.deserialize(data) for origin, data in rows}

    def recipe(self, recipe_id: str) -> RecipeState | None:
        key = recipe_id_key(recipe_id)
        if key is None:
            return None  # not an id any recipe can have
        with self._lock:
            row = self._conn.execute(f"{SELECT_RECIPES} WHERE r.id = ?", (key,)).fetchone()
            return None if row is None else recipe_state(row, self._keys[row[1]])

    def visible_recipes(self) -> list[RecipeState]:
        with self._lock:
            rows = self._conn.execute(
                f"{SELECT_RECIPES} WHERE r.fields_seq IS NOT NULL AND r.deleted = 0 ORDER BY r.id"
            ).fetchall()
            keys = self._keys
        return [recipe_state(row, keys[row[1]]) for row in rows]

    def summary(self) -> StoreSummary:
        return self._summary

    def digest(self) -> str:
        return self._summary.digest

    def recipe_count(self) -> int:
        return self._summary.recipes

    def entry_count(self) -> int:
        return self._summary.entries

    def size_bytes(self) -> int:
        """Pages in use times the page size (the -wal file not counted): ~20 us."""
        with self._lock:
            try:
                pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
                free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            except sqlite3.Error as exc:
                raise StoreError(f"cannot measure {self.path}: {describe(exc)}") from exc
        return int(pages - free) * self._page_size

    def last_hlc(self, ceiling_ms: int) -> int:
        if wall_ms_of(self._last_hlc) <= ceiling_ms:
            return self._last_hlc  # the usual case: the counter, no query
        if ceiling_ms < 0:
            return 0
        bound = hlc_key(pack(ceiling_ms, LOGICAL_MASK))
        with self._lock:
            found = self._conn.execute(_MAX_HLC_BELOW, (bound,)).fetchone()
        return 0 if found is None else int.from_bytes(found[0], "big")
