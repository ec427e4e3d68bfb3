"""Wire messages: round trips, and refusal of malformed or hostile bytes."""

from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.core import protocol
from p2psync.core.entry import MAX_ENTRY_BYTES
from p2psync.core.errors import RemoteError
from p2psync.core.protocol import (
    ACK,
    BATCH,
    MAX_BATCH_ENTRIES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    QUERY,
    QUERY_REPLY,
    SUMMARY,
    Ack,
    Batch,
    Live,
    SummaryMsg,
    decode,
    encode,
)
from p2psync.core.query import (
    MAX_QUERY_REPLY_RECIPES,
    PublishedRecipe,
    Query,
    QueryReply,
    decode_recipes,
)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20)
)
json_value = st.one_of(json_scalar, st.lists(json_scalar, max_size=3))
published_recipes = st.builds(
    PublishedRecipe,
    st.text(max_size=20),
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(max_size=52),
    u64,
)
messages = st.one_of(
    st.builds(Live, st.binary(max_size=400)),
    st.builds(SummaryMsg, u32, st.booleans(), st.binary(max_size=400)),
    st.builds(
        Batch,
        u32,
        u32,
        st.booleans(),
        st.lists(st.binary(max_size=300), max_size=8).map(tuple),
    ),
    st.builds(Ack, u32, u32),
    st.builds(Query, u64),
    st.builds(QueryReply, u64, st.lists(published_recipes, max_size=5).map(tuple)),
)


def _head(kind: int, version: int = PROTOCOL_VERSION) -> bytes:
    return bytes([version, kind])


@settings(max_examples=120, deadline=None)
@given(messages)
def test_round_trip_every_kind(message: protocol.Message) -> None:
    data = encode(message)
    assert data[0] == PROTOCOL_VERSION
    decoded = decode(data)
    assert type(decoded) is type(message)
    assert decoded == message
    assert encode(decoded) == data


def test_each_kind_has_its_own_tag() -> None:
    samples = [
        Live(b"e"),
        SummaryMsg(1, True, b""),
        Batch(1, 0, True, ()),
        Ack(1, 0),
        Query(7),
        QueryReply(7, []),
    ]
    tags = [encode(m)[1] for m in samples]
    assert len(set(tags)) == len(samples)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_remote_error(data: bytes) -> None:
    try:
        decode(data)
    except RemoteError as exc:
        assert exc.reason in {"malformed", "oversized", "version", "unknown_kind"}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([SUMMARY, BATCH, ACK, QUERY, QUERY_REPLY]), st.binary(max_size=200))
def test_garbage_body_raises_only_remote_error(kind: int, body: bytes) -> None:
    try:
        decode(_head(kind) + body)
    except RemoteError as exc:
        assert exc.reason in {"malformed", "oversized"}


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version(version: int) -> None:
    with pytest.raises(RemoteError) as info:
        decode(_head(ACK, version) + struct.pack(">II", 1, 2))
    assert info.value.reason == "version"
    assert "upgrade" in str(info.value)


@pytest.mark.parametrize("kind", [0, 7, 200, 255])
def test_unknown_kind(kind: int) -> None:
    with pytest.raises(RemoteError) as info:
        decode(_head(kind) + b"\x00" * 8)
    assert info.value.reason == "unknown_kind"


def test_truncated_batch_is_malformed() -> None:
    data = encode(Batch(3, 1, False, (b"a" * 100, b"b" * 50)))
    for cut in (2, 5, 14, 15, 17, 18 + 50, len(data) - 1):
        with pytest.raises(RemoteError) as info:
            decode(data[:cut])
        assert info.value.reason == "malformed", cut
    with pytest.raises(RemoteError) as info:
        decode(data + b"\x00")
    assert info.value.reason == "malformed"


def test_batch_count_claiming_more_entries_than_present() -> None:
    data = _head(BATCH) + struct.pack(">IIBI", 1, 0, 1, 1000)
    with pytest.raises(RemoteError) as info:
        decode(data)
    assert info.value.reason == "malformed"


def test_oversized_message() -> None:
    with pytest.raises(RemoteError) as info:
        decode(encode(Live(b"x" * MAX_MESSAGE_BYTES)))
    assert info.value.reason == "oversized"
    assert isinstance(decode(encode(Live(b"x" * (MAX_MESSAGE_BYTES - 2)))), Live)


def test_oversized_batch_count_and_entry() -> None:
    data = _head(BATCH) + struct.pack(">IIBI", 1, 0, 1, MAX_BATCH_ENTRIES + 1)
    with pytest.raises(RemoteError) as info:
        decode(data)
    assert info.value.reason == "oversized"
    data = _head(BATCH) + struct.pack(">IIBII", 1, 0, 1, 1, MAX_ENTRY_BYTES + 1)
    with pytest.raises(RemoteError) as info:
        decode(data + b"x" * (MAX_ENTRY_BYTES + 1))
    assert info.value.reason == "oversized"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        _head(SUMMARY) + b"\x00\x00\x00",
        _head(ACK) + b"\x00" * 7,
        _head(ACK) + b"\x00" * 9,
        _head(QUERY) + b"\x00" * 7,
        _head(QUERY) + b"\x00" * 9,
        _head(QUERY_REPLY) + b"\x00" * 8 + b"{not json",
        _head(QUERY_REPLY) + b"\x00" * 8 + b'{"a": 1}',
        _head(QUERY_REPLY) + b"\x00" * 8 + b"[1, 2]",
    ],
)
def test_malformed_messages(data: bytes) -> None:
    with pytest.raises(RemoteError) as info:
        decode(data)
    assert info.value.reason == "malformed"


_RECIPE = PublishedRecipe("r" * 20, "Soup", "water", "boil", "12D3Koo", 7)


def test_query_reply_is_bounded() -> None:
    ok = encode(QueryReply(1, (_RECIPE,) * MAX_QUERY_REPLY_RECIPES))
    assert len(decode(ok).recipes) == MAX_QUERY_REPLY_RECIPES  # type: ignore[union-attr]
    with pytest.raises(RemoteError):
        decode(encode(QueryReply(1, (_RECIPE,) * (MAX_QUERY_REPLY_RECIPES + 1))))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=12), json_value, max_size=8), max_size=4))
def test_query_reply_recipes_are_validated_not_trusted(items: list[dict[str, object]]) -> None:
    """Any JSON a peer sends either decodes to well-typed recipes or is refused."""
    body = orjson.dumps(items)
    try:
        recipes = decode_recipes(body)
    except RemoteError as exc:
        assert exc.reason == "malformed"
        return
    for recipe in recipes:
        assert all(isinstance(v, str) for v in (recipe.id, recipe.name, recipe.author))
        assert isinstance(recipe.updated, int) and recipe.updated >= 0


@pytest.mark.parametrize(
    "item",
    [
        {"id": 1, "name": "n", "ingredients": "", "instructions": "", "author": "a"},
        {"id": "i", "name": "n" * 201, "ingredients": "", "instructions": "", "author": "a"},
        {"id": "i", "name": "n", "ingredients": "", "instructions": "", "author": "a",
         "updated": -1},
        {"id": "i", "name": "n", "ingredients": "", "instructions": "", "author": "a",
         "updated": True},
        {"name": "n", "ingredients": "", "instructions": "", "author": "a"},
    ],
)  # fmt: skip
def test_query_reply_refuses_wrongly_typed_recipes(item: dict[str, object]) -> None:
    with pytest.raises(RemoteError):
        decode_recipes(orjson.dumps([item]))
