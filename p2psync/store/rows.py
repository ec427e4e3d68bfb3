"""How entries and recipe states are laid out in SQLite rows (schema 6).

A log row is `(origin number, seq, body)`: the body is the entry's exact
bytes without the 32-byte origin key (bytes 1..33), which the row's key
names through the `origins` table. Everything else a reader needs is in the
body at fixed offsets, so no column copies it:

    body offset  size  field (entry.py's layout, origin left out)
    0            1     version
    1            8     seq
    9            32    prev
    41           8     hlc, big endian (the log_hlc index: substr(body, 42, 8))
    49           2     op length n
    51           n     op
    51+n         64    signature

A recipe row holds no fields: they are the op of its author's entry
`fields_seq`, read through a join with the log (`SELECT_RECIPES`).

HLCs are unsigned 64-bit but SQLite integers are signed, and a peer can sign
any hlc it likes, so integer hlc columns (recipes.updated, meta) hold the
two's complement of values >= 2**63 (`to_sql`): ordinary values stay
readable. The log's hlc index compares 8-byte blobs, which order unsigned.
"""

from __future__ import annotations

import sqlite3
import struct
from typing import Any

import orjson

from p2psync.core.entry import HEADER_BYTES, entry_hash
from p2psync.core.ops import RecipeFields
from p2psync.core.recipes import RecipeState

ORIGIN_END = 33  # raw[1:33] is the origin key
_BODY = struct.Struct(">BQ32sQH")
BODY_HEADER = _BODY.size
assert BODY_HEADER == HEADER_BYTES - 32  # entry.py: version, origin, seq, prev, hlc, op length
BODY_HLC = 41  # offset of the hlc in a body (the index is substr(body, 42, 8))

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
MAX_HLC = _U64 - 1

RECIPE_COLUMNS = "id, author, create_seq, fields_seq, published, deleted, updated, published_seq"
# The stored state of recipes, each with the body of the entry that set its fields.
SELECT_RECIPES = (
    "SELECT r.id, r.author, r.create_seq, r.fields_seq, r.published, r.deleted, r.updated,"
    " r.published_seq, l.body FROM recipes r"
    " LEFT JOIN log l ON l.origin = r.author AND l.seq = r.fields_seq"
)

RecipeRow = tuple[bytes, int, int, int | None, int, int, int, int]


def to_sql(hlc: int) -> int:
    return hlc - _U64 if hlc > _I64_MAX else hlc


def from_sql(value: int) -> int:
    return value + _U64 if value < 0 else value


def body_of(raw: bytes) -> bytes:
    return raw[:1] + raw[ORIGIN_END:]


def raw_of(origin: bytes, body: bytes) -> bytes:
    return body[:1] + origin + body[1:]


def links_of(origin: bytes, body: bytes) -> tuple[bytes, bytes]:
    """(hash, prev) of the entry stored as `body`."""
    return entry_hash(body[:1] + origin + body[1:]), body[9:41]


def hlc_key(hlc: int) -> bytes:
    """An hlc as the log_hlc index orders it."""
    return min(hlc, MAX_HLC).to_bytes(8, "big")


def recipe_id_key(recipe_id: str) -> bytes | None:
    """The stored form of a recipe id (lowercase hex, as make_recipe_id makes it)."""
    try:
        key = bytes.fromhex(recipe_id)
    except ValueError:
        return None
    return key if key.hex() == recipe_id else None


def recipe_row(state: RecipeState, author: int) -> RecipeRow:
    return (
        bytes.fromhex(state.id),
        author,
        state.create_seq,
        state.fields_version[1] if state.fields is not None else None,
        int(state.published),
        int(state.deleted),
        to_sql(state.updated),
        state.published_seq,
    )


def recipe_state(row: Any, author: bytes) -> RecipeState:
    """A recipe from a SELECT_RECIPES row; `author` is the key its number names."""
    rid, _, create_seq, fields_seq, published, deleted, updated, published_seq, body = row
    fields: RecipeFields | None = None
    version = (-1, -1)
    if fields_seq is not None:
        # Our own stored bytes, whose op was checked (decode_op) when received.
        _, _, _, hlc, op_len = _BODY.unpack_from(body)
        op = orjson.loads(body[BODY_HEADER : BODY_HEADER + op_len])
        fields = RecipeFields(op["n"], op["g"], op["i"])
        version = (hlc, fields_seq)
    return RecipeState(
        id=rid.hex(),
        author=author,
        create_seq=create_seq,
        fields=fields,
        fields_version=version,
        published=bool(published),
        deleted=bool(deleted),
        updated=from_sql(updated),
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


def describe(exc: sqlite3.Error) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    plain = _SQLITE_MESSAGES.get(code & 0xFF) if isinstance(code, int) else None
    return f"{plain} ({exc})" if plain else str(exc)


def seq_ranges(seqs: set[int], gap: int) -> list[tuple[int, int]]:
    """Cover `seqs` with few [lo, hi] ranges, bridging gaps up to `gap`."""
    if not seqs:
        return []
    lo, hi = min(seqs), max(seqs)
    if hi - lo <= 2 * len(seqs) + gap:  # the usual case: (nearly) contiguous
        return [(lo, hi)]
    ranges: list[tuple[int, int]] = []
    start = prev = -1
    for seq in sorted(seqs):
        if start < 0:
            start = prev = seq
        elif seq - prev > gap:
            ranges.append((start, prev))
            start = prev = seq
        else:
            prev = seq
    ranges.append((start, prev))
    return ranges
