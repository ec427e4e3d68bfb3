"""The recipe CRDT: order-independent, idempotent, author-only, digestible."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2psync.core.entry import ZERO_HASH, Entry, sign_entry
from p2psync.core.errors import RemoteError
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, RecipeFields, decode_op, encode_op
from p2psync.core.recipes import RecipeState, digest, is_by_author, merge

AUTHOR = SigningKey(b"\x31" * 32)
OTHER = SigningKey(b"\x32" * 32)
ME = bytes(AUTHOR.verify_key)
BASE_HLC = 1_800_000_000_000 << 16


def _log(key: SigningKey, ops: list[tuple[str, int, RecipeFields | None]], hlcs: list[int]):
    """Sign a chain of ops. Each op is (kind, create_seq of its recipe, fields)."""
    origin = bytes(key.verify_key)
    entries: list[tuple[Entry, Op]] = []
    prev = ZERO_HASH
    for seq, ((kind, create_seq, fields), hlc) in enumerate(zip(ops, hlcs, strict=True)):
        if kind == "create":
            op = Op("create", make_recipe_id(origin, seq), None, fields)
        else:
            op = Op(kind, make_recipe_id(origin, create_seq), create_seq, fields)  # type: ignore[arg-type]
        entry = sign_entry(key, seq, prev, hlc, encode_op(op))
        prev = entry.hash()
        entries.append((entry, decode_op(entry.op)))
    return entries


def _fold(pairs) -> dict[str, RecipeState]:
    book: dict[str, RecipeState] = {}
    for entry, op in pairs:
        assert is_by_author(entry, op)
        book[op.recipe_id] = merge(book.get(op.recipe_id), entry, op)
    return book


def _visible(book: dict[str, RecipeState]) -> list[RecipeState]:
    return [book[k] for k in sorted(book) if book[k].visible]


fields_st = st.builds(
    RecipeFields, st.sampled_from(["a", "b", "c"]), st.sampled_from(["", "g"]), st.just("i")
)


@st.composite
def author_logs(draw):
    n_creates = draw(st.integers(1, 3))
    ops: list[tuple[str, int, RecipeFields | None]] = [
        ("create", 0, draw(fields_st)) for _ in range(n_creates)
    ]
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["update", "update", "publish", "unpublish", "delete"]))
        target = draw(st.integers(0, n_creates - 1))  # creates sit at seqs 0..n-1
        ops.append((kind, target, draw(fields_st) if kind == "update" else None))
    steps = draw(st.lists(st.integers(0, 3), min_size=len(ops), max_size=len(ops)))
    hlcs, hlc = [], BASE_HLC
    for step in steps:
        hlc += step  # non-decreasing; equal hlcs are ordered by seq
        hlcs.append(hlc)
    return _log(AUTHOR, ops, hlcs)


@settings(max_examples=120, deadline=None)
@given(author_logs(), st.randoms(use_true_random=False), st.lists(st.integers(0, 50)))
def test_merge_order_independent_and_idempotent(entries, rng, dup_picks) -> None:
    in_order = _fold(entries)
    shuffled = list(entries) + [entries[i % len(entries)] for i in dup_picks]
    rng.shuffle(shuffled)
    any_order = _fold(shuffled)
    assert any_order == in_order
    assert digest(_visible(any_order)) == digest(_visible(in_order))
    # Folding everything again on top changes nothing.
    assert _fold(list(entries) + list(reversed(entries)) + shuffled) == in_order
    # The last writer (highest seq with fields) decides each recipe's fields.
    for rid, state in in_order.items():
        writers = [(e, op) for e, op in entries if op.recipe_id == rid and op.fields]
        if writers:
            assert state.fields == writers[-1][1].fields
        kinds = {op.kind for e, op in entries if op.recipe_id == rid}
        assert state.deleted == ("delete" in kinds)
        flags = [op.kind for e, op in entries if op.recipe_id == rid]
        flags = [kind for kind in flags if kind in ("publish", "unpublish")]
        # The last publish or unpublish (by seq) decides.
        assert state.published == (bool(flags) and flags[-1] == "publish")


def test_is_by_author() -> None:
    (create, create_op), (update, update_op) = _log(
        AUTHOR,
        [("create", 0, RecipeFields("n", "g", "i")), ("update", 0, RecipeFields("m", "", ""))],
        [BASE_HLC, BASE_HLC + 1],
    )
    assert is_by_author(create, create_op)
    assert is_by_author(update, update_op)
    # OTHER signs an update of AUTHOR's recipe, naming the right create seq.
    forged = sign_entry(OTHER, 0, ZERO_HASH, BASE_HLC + 2, update.op)
    assert not is_by_author(forged, decode_op(forged.op))
    # A create whose id is not derived from (origin, seq).
    stolen = sign_entry(OTHER, 0, ZERO_HASH, BASE_HLC, create.op)
    assert not is_by_author(stolen, decode_op(stolen.op))
    # The author naming the wrong create seq is not authorised either.
    wrong_seq = Op("update", create_op.recipe_id, 5, RecipeFields("x", "", ""))
    assert not is_by_author(update, wrong_seq)


def test_digest_tracks_visible_fields_only() -> None:
    f1, f2 = RecipeFields("soup", "water", "boil"), RecipeFields("stew", "water", "boil")
    ops = [("create", 0, f1), ("create", 0, f1)]
    entries = _log(AUTHOR, ops, [BASE_HLC, BASE_HLC + 1])
    book = _fold(entries)
    empty = digest([])
    base = digest(_visible(book))
    assert base != empty

    # Changing a visible field changes the digest.
    updated = _log(AUTHOR, [*ops, ("update", 0, f2)], [BASE_HLC, BASE_HLC + 1, BASE_HLC + 2])
    assert digest(_visible(_fold(updated))) != base
    published = _log(AUTHOR, [*ops, ("publish", 1, None)], [BASE_HLC, BASE_HLC + 1, BASE_HLC + 2])
    assert digest(_visible(_fold(published))) != base

    # Delete recipe 1, then change it: the digest only sees recipe 0.
    hidden = [*ops, ("delete", 1, None)]
    deleted = _fold(_log(AUTHOR, hidden, [BASE_HLC + i for i in range(3)]))
    deleted_digest = digest(_visible(deleted))
    assert deleted_digest != base
    assert deleted_digest == digest([_fold(entries[:1])[entries[0][1].recipe_id]])
    for extra in (("update", 1, f2), ("publish", 1, None)):
        more = _fold(_log(AUTHOR, [*hidden, extra], [BASE_HLC + i for i in range(4)]))
        assert digest(_visible(more)) == deleted_digest
        assert more[entries[1][1].recipe_id].deleted


def test_fields_lww_by_hlc_then_seq() -> None:
    f1, f2, f3 = (RecipeFields(n, "", "") for n in ("one", "two", "three"))
    # The update at seq 1 carries a later hlc than the update at seq 2.
    entries = _log(
        AUTHOR,
        [("create", 0, f1), ("update", 0, f2), ("update", 0, f3)],
        [BASE_HLC, BASE_HLC + 10, BASE_HLC + 5],
    )
    assert _fold(entries)[entries[0][1].recipe_id].fields == f2
    assert _fold(reversed(entries))[entries[0][1].recipe_id].fields == f2
    same = _log(
        AUTHOR,
        [("create", 0, f1), ("update", 0, f2), ("update", 0, f3)],
        [BASE_HLC, BASE_HLC, BASE_HLC],
    )
    assert _fold(reversed(same))[same[0][1].recipe_id].fields == f3


def test_update_before_create_still_converges() -> None:
    f1, f2 = RecipeFields("a", "", ""), RecipeFields("b", "", "")
    entries = _log(AUTHOR, [("create", 0, f1), ("update", 0, f2)], [BASE_HLC, BASE_HLC + 1])
    early = _fold([entries[1]])
    rid = entries[0][1].recipe_id
    assert early[rid].fields == f2 and early[rid].author == ME
    assert _fold([entries[1], entries[0]]) == _fold(entries)


def test_decode_op_judges_every_key_set_as_before() -> None:
    """Which ops pass is part of the protocol: nodes of different releases must
    agree, or their recipe books differ. Known keys that an op kind does not
    use (a null "c" on a create, fields on a publish) pass; unknown keys, a
    bool seq or a missing field do not."""
    rid = "ab" * 10
    fields = {"n": "soup", "g": "water", "i": "boil"}
    passes = [
        {"k": "create", "id": rid, **fields},
        {"k": "create", "id": rid, "c": None, **fields},
        {"k": "update", "id": rid, "c": 0, **fields},
        {"k": "publish", "id": rid, "c": 3},
        {"k": "publish", "id": rid, "c": 3, "n": 7},
        {"k": "delete", "id": rid, "c": 3, **fields},
    ]
    fails = [
        {"k": "create", "id": rid, **fields, "x": 1},
        {"k": "create", "id": rid, "c": 0, **fields},
        {"k": "publish", "id": rid, "c": True},
        {"k": "publish", "id": rid, "c": 3, "z": None},
        {"k": "update", "id": rid, "c": 0, "n": "soup", "g": "water"},
        {"k": "update", "id": rid, "c": 0, **fields, "i": None},
        {"k": "publish", "id": rid[:-1], "c": 3},
        ["create", rid],
    ]
    for body in passes:
        op = decode_op(orjson.dumps(body))
        assert op.kind == body["k"] and op.recipe_id == rid
    for body in fails:
        with pytest.raises(RemoteError):
            decode_op(orjson.dumps(body))


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)
_OP_BODIES = st.dictionaries(
    st.sampled_from(["k", "id", "c", "n", "g", "i", "x"]),
    st.one_of(
        _JSON,
        st.sampled_from(["create", "update", "publish", "unpublish", "delete", "ab" * 10]),
        st.integers(-1, 2**49),
    ),
    max_size=7,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_OP_BODIES, _JSON))
def test_decode_op_refuses_any_json_with_a_remote_error_only(body: object) -> None:
    """A signed entry can carry any JSON at all (keys cost nothing): anything
    decode_op does not accept must be a RemoteError (a bad op), never another
    exception escaping into the engine."""
    try:
        op = decode_op(orjson.dumps(body))
    except RemoteError:
        return
    assert isinstance(body, dict) and op.kind == body["k"] and op.recipe_id == body["id"]
