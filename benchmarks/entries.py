"""Signed entries made in-process, with the same op mix as `p2psync run --initial-ops`."""

from __future__ import annotations

import time
from typing import cast

from nacl.signing import SigningKey
from pyroaring import BitMap64

from p2psync.core.actions import Accepted, Persist
from p2psync.core.entry import ZERO_HASH, Entry, sign_entry
from p2psync.core.hlc import pack
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, OpKind, RecipeFields, encode_op
from p2psync.core.reasons import Source
from p2psync.node.generator import WorkloadGenerator


def origin_key(index: int) -> SigningKey:
    return SigningKey(bytes([0xB0]) + index.to_bytes(4, "big") + bytes(27))


def make_log(key: SigningKey, count: int, seed: int) -> list[tuple[Entry, Op]]:
    """`count` entries of one origin: creates, updates, publishes, deletes."""
    me = bytes(key.verify_key)
    generator = WorkloadGenerator(seed)
    made: list[tuple[str, int]] = []
    out: list[tuple[Entry, Op]] = []
    prev = ZERO_HASH
    wall = time.time_ns() // 1_000_000 - 3_600_000
    for seq in range(count):
        planned = generator.next_op()
        fields = RecipeFields(planned.name, planned.ingredients, planned.instructions)
        if planned.kind == "create":
            made.append((make_recipe_id(me, seq), seq))
            op = Op("create", made[-1][0], None, fields)
        else:
            assert planned.target is not None
            recipe_id, create_seq = made[planned.target]
            kind = cast(OpKind, planned.kind)
            op = Op(kind, recipe_id, create_seq, fields if kind == "update" else None)
        entry = sign_entry(key, seq, prev, pack(wall + seq // 50, seq % 50), encode_op(op))
        prev = entry.hash()
        out.append((entry, op))
    return out


def make_logs(total: int, origins: int, seed: int = 1) -> list[list[tuple[Entry, Op]]]:
    """`total` entries spread evenly over `origins` origins."""
    per = [total // origins + (1 if i < total % origins else 0) for i in range(origins)]
    return [make_log(origin_key(i), n, seed + i) for i, n in enumerate(per)]


def persist_of(entries: list[tuple[Entry, Op]]) -> Persist:
    """One Persist holding these entries and their origins' full bitmaps."""
    progress: dict[bytes, BitMap64] = {}
    for entry, _ in entries:
        progress.setdefault(entry.origin, BitMap64()).add(entry.seq)
    return Persist(tuple(Accepted(e, op) for e, op in entries), progress, Source.BACKFILL, None)
