"""Recipe operations: the payload of a log entry, as canonical orjson.

Every op names its recipe. Ops other than create also carry `c`, the seq of
the author's create entry, so that anyone can check from the entry alone
that `id == make_recipe_id(entry.origin, c)`: only the author can produce it.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, cast

import orjson

from p2psync.core.errors import LocalError, RemoteError
from p2psync.core.reasons import Reason

OpKind = Literal["create", "update", "publish", "unpublish", "delete"]
OP_KINDS: frozenset[str] = frozenset({"create", "update", "publish", "unpublish", "delete"})
_OP_KEYS = frozenset({"k", "id", "c", "n", "g", "i"})

MAX_NAME_CHARS = 200
MAX_INGREDIENTS_CHARS = 4000
MAX_INSTRUCTIONS_CHARS = 8000
MAX_OP_BYTES = 16 * 1024
RECIPE_ID_CHARS = 20
MAX_CREATE_SEQ = (1 << 48) - 1  # = entry.MAX_SEQ; also keeps it inside SQLite's int64


class RecipeFields(NamedTuple):
    name: str
    ingredients: str
    instructions: str


class Op(NamedTuple):
    kind: OpKind
    recipe_id: str
    create_seq: int | None = None  # None for create: it is the entry's own seq
    fields: RecipeFields | None = None  # for create and update


def validate_fields(name: str, ingredients: str, instructions: str) -> RecipeFields:
    """Check fields given by a local user; LocalError says what to fix."""
    name = name.strip()
    ingredients = ingredients.strip()
    instructions = instructions.strip()
    if not name:
        raise LocalError("recipe name must not be empty")
    for label, value, limit in (
        ("name", name, MAX_NAME_CHARS),
        ("ingredients", ingredients, MAX_INGREDIENTS_CHARS),
        ("instructions", instructions, MAX_INSTRUCTIONS_CHARS),
    ):
        if len(value) > limit:
            raise LocalError(f"recipe {label} is too long ({len(value)} > {limit} characters)")
    return RecipeFields(name, ingredients, instructions)


def encode_op(op: Op) -> bytes:
    body: dict[str, Any] = {"k": op.kind, "id": op.recipe_id}
    if op.create_seq is not None:
        body["c"] = op.create_seq
    if op.fields is not None:
        body["n"] = op.fields.name
        body["g"] = op.fields.ingredients
        body["i"] = op.fields.instructions
    data = orjson.dumps(body)
    if len(data) > MAX_OP_BYTES:
        raise LocalError(f"operation too large ({len(data)} > {MAX_OP_BYTES} bytes)")
    return data


def decode_op(data: bytes) -> Op:
    """Parse an op from a peer's entry. RemoteError on anything unexpected."""
    if len(data) > MAX_OP_BYTES:
        raise RemoteError(
            f"op of {len(data)} bytes exceeds {MAX_OP_BYTES}", reason=Reason.OVERSIZED
        )
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RemoteError(f"op is not JSON: {exc}", reason=Reason.MALFORMED) from exc
    if type(body) is not dict:
        raise RemoteError("op is not a JSON object", reason=Reason.MALFORMED)
    kind = body.get("k")
    recipe_id = body.get("id")
    # A list or object is unhashable: `in` would raise TypeError, not refuse.
    if type(kind) is not str or kind not in OP_KINDS:
        raise RemoteError(f"unknown op kind {kind!r}", reason=Reason.MALFORMED)
    if type(recipe_id) is not str or len(recipe_id) != RECIPE_ID_CHARS:
        raise RemoteError("op has no valid recipe id", reason=Reason.MALFORMED)
    create_seq = body.get("c")
    if kind == "create":
        if create_seq is not None:
            raise RemoteError("create op must not carry a create seq", reason=Reason.MALFORMED)
        keys = 2
    # type() is int: bool is a subclass of int, and True is no seq.
    elif type(create_seq) is not int or not 0 <= create_seq <= MAX_CREATE_SEQ:
        raise RemoteError(f"{kind} op has no valid create seq", reason=Reason.MALFORMED)
    else:
        keys = 3
    fields = None
    if kind == "create" or kind == "update":
        name, ingredients, instructions = body.get("n"), body.get("g"), body.get("i")
        if not (type(name) is str and type(ingredients) is str and type(instructions) is str):
            raise RemoteError(f"{kind} op lacks string fields", reason=Reason.MALFORMED)
        if (
            len(name) > MAX_NAME_CHARS
            or len(ingredients) > MAX_INGREDIENTS_CHARS
            or len(instructions) > MAX_INSTRUCTIONS_CHARS
        ):
            raise RemoteError(f"{kind} op field too long", reason=Reason.OVERSIZED)
        fields = RecipeFields(name, ingredients, instructions)
        keys += 3
    # The keys read above are there: with no others, none is unknown. Otherwise
    # look (a null "c" on a create, or fields on a publish, are known keys and
    # pass, as they always have: every node must judge an op alike).
    if len(body) != keys:
        extra = set(body) - _OP_KEYS
        if extra:
            raise RemoteError(f"op has unknown keys {sorted(extra)}", reason=Reason.MALFORMED)
    return Op(cast(OpKind, kind), recipe_id, create_seq, fields)  # one of OP_KINDS
