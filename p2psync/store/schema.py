"""The SQLite schema of the store and the migrations that build it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from p2psync.core.store import StoreError

# 'p2ps': marks the file as ours, so we never migrate someone else's database.
APPLICATION_ID = 0x70327073
# An SQL function the migrations may call: hex text to a blob (SQLite 3.41
# has unhex(); Debian 12's 3.40 does not).
UNHEX = "p2psync_unhex"

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
    # 1 -> 2: `last_hlc(ceiling_ms)` finds the greatest hlc at or below a
    # ceiling in O(log n) at start, however many wild hlcs peers signed.
    ("CREATE INDEX log_hlc ON log (hlc)",),
    # 2 -> 3: fork proofs (protocol v2), and the index that finds a forked
    # author's recipes when its entries past the fork are hidden.
    (
        """CREATE TABLE forks (
            origin BLOB PRIMARY KEY,
            seq INTEGER NOT NULL,
            first BLOB NOT NULL,
            second BLOB NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX recipes_author ON recipes (author)",
    ),
    # 3 -> 4: protocol v3 proofs hold a short chain per side (forks.encode_side);
    # rows stored before hold one raw entry per side (chained = 0).
    ("ALTER TABLE forks ADD COLUMN chained INTEGER NOT NULL DEFAULT 0",),
    # 4 -> 5: the seq of the publish or unpublish op that set `published`
    # (protocol v3's unpublish: the author's latest such op wins). Rows written
    # before hold -1: any later op of the author overrides them. Rows that
    # packed it into `published` ((seq + 1) << 1 | flag) are unpacked.
    (
        "ALTER TABLE recipes ADD COLUMN published_seq INTEGER NOT NULL DEFAULT -1",
        "UPDATE recipes SET published_seq = (published >> 1) - 1, published = published & 1",
    ),
    # 5 -> 6: a lean layout, about half the bytes per entry (issue 13).
    # - `origins` numbers each 32-byte key once; log and recipes refer to it.
    # - A log row keeps only the entry's bytes without the origin key (its
    #   `body`, see rows.py): hash, prev and hlc were copies of what the bytes
    #   hold, and the origin is in the key. The hlc index is over the body's
    #   8 big-endian hlc bytes (blob order is unsigned order).
    # - A recipe row no longer copies its fields: they are the op of the
    #   author's entry `fields_seq`, read from the log. Ids are 10-byte blobs.
    (
        "CREATE TABLE origins (no INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE)",
        "INSERT INTO origins (key) SELECT origin FROM log UNION SELECT author FROM recipes",
        """CREATE TABLE log6 (
            origin INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            body BLOB NOT NULL,
            PRIMARY KEY (origin, seq)
        ) WITHOUT ROWID""",
        "INSERT INTO log6 (origin, seq, body) SELECT o.no, l.seq,"
        " CAST(substr(l.raw, 1, 1) || substr(l.raw, 34) AS BLOB)"
        " FROM log l JOIN origins o ON o.key = l.origin ORDER BY o.no, l.seq",
        """CREATE TABLE recipes6 (
            id BLOB PRIMARY KEY,
            author INTEGER NOT NULL,
            create_seq INTEGER NOT NULL,
            fields_seq INTEGER,
            published INTEGER NOT NULL,
            deleted INTEGER NOT NULL,
            updated INTEGER NOT NULL,
            published_seq INTEGER NOT NULL
        ) WITHOUT ROWID""",
        f"INSERT INTO recipes6 SELECT {UNHEX}(r.id), o.no, r.create_seq,"
        " CASE WHEN r.name IS NULL THEN NULL ELSE r.fields_seq END, r.published, r.deleted,"
        " r.updated, r.published_seq FROM recipes r JOIN origins o ON o.key = r.author"
        f" WHERE {UNHEX}(r.id) IS NOT NULL",  # every id an authorised op made is hex
        "DROP TABLE log",
        "DROP TABLE recipes",
        "ALTER TABLE log6 RENAME TO log",
        "ALTER TABLE recipes6 RENAME TO recipes",
        "CREATE INDEX log_hlc ON log (substr(body, 42, 8))",
        "CREATE INDEX recipes_author ON recipes (author)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)
# Migrations that drop big tables leave their pages free: VACUUM after them.
_VACUUM_AFTER = frozenset({6})


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database on `conn` to SCHEMA_VERSION, or refuse one that is not ours."""
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database {path} has schema version {version}, newer than the {SCHEMA_VERSION} "
            "this p2psync knows: upgrade p2psync (or use another data directory)"
        )
    if version == SCHEMA_VERSION:
        _check_ours(conn, path)
        return
    conn.create_function(UNHEX, 1, _unhex, deterministic=True)
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
    if version and any(version < step <= SCHEMA_VERSION for step in _VACUUM_AFTER):
        conn.execute("VACUUM")


def _unhex(text: object) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def check_database(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of the p2psync database on `conn`, read without migrating.

    StoreError for anything else: not SQLite, another program's database, an
    empty one, or a schema newer than this p2psync knows.
    """
    try:
        version = _user_version(conn)
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not an SQLite database ({exc})") from exc
    if application_id != APPLICATION_ID or version == 0:
        raise StoreError(f"{path} is not a p2psync database (another program's, or empty)")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database {path} has schema version {version}, newer than the {SCHEMA_VERSION} "
            "this p2psync knows: upgrade p2psync"
        )
    return version


def _user_version(conn: sqlite3.Connection) -> int:
    value: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return value


def _check_ours(conn: sqlite3.Connection, path: Path) -> None:
    if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise StoreError(f"{path} is an SQLite database of another program, not p2psync's")
