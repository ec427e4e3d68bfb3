"""Deterministic signed entries for store tests, and a child process using them.

Run as a script it is the child process of the crash test:

    store_helper.py writer DB SEED    commit batches forever, printing each batch
                                      number once its commit has returned
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from nacl.signing import SigningKey
from pyroaring import BitMap64

from p2psync.core.actions import Accepted, Persist
from p2psync.core.entry import ZERO_HASH, sign_entry
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, RecipeFields, encode_op
from p2psync.core.reasons import Source

BATCH = 250
HLC_BASE = 1_760_000_000_000 << 16


def entry_stream(seed: int, authors: int = 3) -> Iterator[Accepted]:
    """An endless, reproducible mix of every op kind by a few authors.

    A few entries carry an hlc above 2**63 (any peer may sign one) and a few
    carry no op (kept in the log, changing no recipe), as the engine allows.
    """
    rng = random.Random(seed)
    keys = [SigningKey(bytes([seed % 256, i]) * 16) for i in range(authors)]
    seqs = [0] * authors
    heads = [ZERO_HASH] * authors
    owned: list[list[int]] = [[] for _ in range(authors)]
    hlc = HLC_BASE
    while True:
        who = rng.randrange(authors)
        key, seq = keys[who], seqs[who]
        origin = bytes(key.verify_key)
        hlc += rng.randrange(1, 1000)
        entry_hlc = (1 << 64) - rng.randrange(1, 1 << 20) if rng.random() < 0.01 else hlc
        op: Op | None
        roll = rng.random()
        if roll < 0.03:
            op, op_bytes = None, b'{"k":"unknown"}'
        else:
            if not owned[who] or roll < 0.35:
                fields = RecipeFields(f"dish {who}.{seq}", f"{seq} eggs", "mix " * rng.randrange(9))
                op = Op("create", make_recipe_id(origin, seq), None, fields)
                owned[who].append(seq)
            else:
                create_seq = rng.choice(owned[who])
                recipe_id = make_recipe_id(origin, create_seq)
                kind = rng.choice(["update", "update", "publish", "delete"])
                if kind == "update":
                    fields = RecipeFields(f"dish {who}.{create_seq} v{seq}", "salt", "stir")
                    op = Op("update", recipe_id, create_seq, fields)
                elif kind == "publish":
                    op = Op("publish", recipe_id, create_seq)
                else:
                    op = Op("delete", recipe_id, create_seq)
            op_bytes = encode_op(op)
        entry = sign_entry(key, seq, heads[who], entry_hlc, op_bytes)
        heads[who] = entry.hash()
        seqs[who] += 1
        yield Accepted(entry, op)


def persists(
    accepted: Iterable[Accepted], batch: int = BATCH, source: Source = Source.BACKFILL
) -> Iterator[Persist]:
    """Cut `accepted` into Persists carrying cumulative held bitmaps, as the engine does."""
    held: dict[bytes, BitMap64] = {}
    chunk: list[Accepted] = []

    def flush() -> Persist:
        touched: dict[bytes, BitMap64] = {}
        for item in chunk:
            bitmap = held.setdefault(item.entry.origin, BitMap64())
            bitmap.add(item.entry.seq)
            touched[item.entry.origin] = bitmap
        return Persist(tuple(chunk), {o: BitMap64(b) for o, b in touched.items()}, source, "peer")

    for item in accepted:
        chunk.append(item)
        if len(chunk) == batch:
            yield flush()
            chunk = []
    if chunk:
        yield flush()


def _writer(db: Path, seed: int) -> None:
    from p2psync.store.sqlite import SqliteStore

    store = SqliteStore.open(db)
    for number, persist in enumerate(persists(entry_stream(seed))):
        store.commit(persist)
        print(number, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        _writer(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
