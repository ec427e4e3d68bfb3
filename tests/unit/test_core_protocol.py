"""Wire messages (protocol v4): round trips, and refusal of malformed or hostile bytes."""

from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.entry import MAX_ENTRY_BYTES, MAX_SEQ, ZERO_HASH
from p2psync.core.errors import RemoteError
from p2psync.core.forks import MAX_SIDE_BYTES
from p2psync.core.items import MAX_BOUND, MIN_BOUND, NOT_FORKED, Item
from p2psync.core.progress import MAX_AHEAD, MAX_BITMAP_BYTES, encode_bitmap
from p2psync.core.protocol import (
    ACK,
    BATCH,
    DONE_RANGE,
    FORK_PROOF,
    FP_RANGE,
    FROM_RESPONDER,
    ITEMS_RANGE,
    LIVE,
    MAX_BATCH_ENTRIES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    QUERY,
    QUERY_REPLY,
    RECON,
    REPLY_WANTED,
    WANT,
    Ack,
    Batch,
    Claim,
    DoneRange,
    FingerprintRange,
    ForkProofMsg,
    ItemsRange,
    Live,
    Recon,
    Want,
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
from tests.unit.test_core_engine import signed_chain

u8 = st.integers(0, 255)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
keys = st.binary(min_size=32, max_size=32)
hashes = keys.filter(lambda h: h != ZERO_HASH)
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
# Seqs a bitmap may carry: small ones, and some near the top of the seq space.
seqs = st.one_of(st.integers(0, 300), st.integers(MAX_SEQ - 300, MAX_SEQ))


@st.composite
def items_of(draw: st.DrawFn, origin: bytes) -> Item:
    """A well-formed item: prefix <= forked_at, beyond strictly between them."""
    forked_at = draw(st.one_of(st.just(NOT_FORKED), st.integers(0, MAX_SEQ)))
    prefix = draw(
        st.one_of(st.integers(0, min(forked_at, 200)), st.integers(0, min(forked_at, MAX_SEQ + 1)))
    )
    head = ZERO_HASH if prefix == 0 else draw(hashes)
    room = [
        s
        for s in draw(st.lists(seqs, max_size=12))
        if prefix < s < min(forked_at, prefix + MAX_AHEAD)
    ]
    return Item(origin, prefix, head, BitMap64(room), forked_at)


@st.composite
def range_lists(draw: st.DrawFn) -> tuple[protocol.Range, ...]:
    """Ordered, non-overlapping, non-empty ranges; ItemsRange origins inside, increasing."""
    points = sorted(draw(st.sets(keys, max_size=10)))
    if draw(st.booleans()):
        points.insert(0, MIN_BOUND)
    if draw(st.booleans()):
        points.append(MAX_BOUND)
    ranges: list[protocol.Range] = []
    i = draw(st.integers(0, 1))
    while i < len(points) - 1:
        j = draw(st.integers(i + 1, len(points) - 1))
        lower, upper = points[i], points[j]
        mode = draw(st.sampled_from([FP_RANGE, DONE_RANGE, ITEMS_RANGE]))
        if mode == FP_RANGE:
            value = draw(st.integers(0, 2**128 - 1))
            ranges.append(FingerprintRange(lower, upper, value, draw(u32)))
        elif mode == DONE_RANGE:
            ranges.append(DoneRange(lower, upper))
        else:
            inside = [p for p in points[i:j] if len(p) == 32]
            chosen = [p for p in inside if draw(st.booleans())]
            items = tuple(draw(items_of(origin)) for origin in chosen)
            ranges.append(ItemsRange(lower, upper, items))
        i = j + draw(st.integers(0, 1))  # adjacent, or leave a gap
    return tuple(ranges)


@st.composite
def claims_of(draw: st.DrawFn, origin: bytes) -> Claim:
    prefix = draw(st.one_of(st.integers(0, 300), st.integers(0, 2**48)))
    beyond = BitMap64(s for s in draw(st.lists(seqs, max_size=12)) if s >= prefix)
    return Claim(origin, prefix, beyond, draw(st.booleans()))


claim_lists = st.lists(keys, max_size=6, unique=True).flatmap(
    lambda origins: st.tuples(*(claims_of(o) for o in origins))
)


def _run(first_seq: int, ops: list[bytes]) -> Live:
    """Consecutive entries of one origin, as a LIVE carries them."""
    entries = signed_chain(SigningKey(b"\x07" * 32), ops, first_seq)
    return Live(tuple(e.raw for e in entries))


live_runs = st.builds(
    _run, st.integers(0, 2**40), st.lists(st.binary(max_size=200), min_size=1, max_size=5)
)

messages = st.one_of(
    live_runs,
    st.builds(Recon, u32, u8, range_lists()),
    st.builds(Want, u32, st.booleans(), claim_lists),
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
    st.builds(ForkProofMsg, st.binary(max_size=300), st.binary(max_size=300)),
)


def _head(kind: int, version: int = PROTOCOL_VERSION) -> bytes:
    return bytes([version, kind])


def _refused(data: bytes, reason: str) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        decode(data)
    assert info.value.reason == reason, str(info.value)
    return info.value


@settings(max_examples=150, deadline=None)
@given(messages)
def test_round_trip_every_kind(message: protocol.Message) -> None:
    data = encode(message)
    assert data[0] == PROTOCOL_VERSION
    decoded = decode(data)
    assert type(decoded) is type(message)
    assert decoded == message
    assert encode(decoded) == data


@settings(max_examples=100, deadline=None)
@given(st.builds(Recon, u32, u8, range_lists()))
def test_recon_round_trip(message: Recon) -> None:
    assert decode(encode(message)) == message


def test_round_trip_covers_every_range_kind_and_edge_values() -> None:
    a, b, c = (bytes([n]) * 32 for n in (1, 2, 3))
    item = Item(b, 5, b"\x07" * 32, BitMap64([7, 5 + MAX_AHEAD - 1]), MAX_SEQ)
    recon = Recon(
        2**32 - 1,
        REPLY_WANTED | FROM_RESPONDER,
        (
            FingerprintRange(MIN_BOUND, a, 2**128 - 1, 2**32 - 1),
            DoneRange(a, b),
            ItemsRange(b, c, (item,)),
            ItemsRange(c, MAX_BOUND, ()),
        ),
    )
    want = Want(
        7,
        True,
        (Claim(a, 2**48, BitMap64(), True), Claim(b, 0, BitMap64([0, 5, MAX_SEQ]), False)),
    )
    for message in (recon, want, Recon(1, 0, ()), Want(1, False, ())):
        assert decode(encode(message)) == message


def test_each_kind_has_its_own_tag() -> None:
    samples = [
        _run(0, [b"e"]),
        Recon(1, 0, ()),
        Batch(1, 0, True, ()),
        Ack(1, 0),
        Query(7),
        QueryReply(7, ()),
        Want(1, True, ()),
        ForkProofMsg(b"a", b"b"),
    ]
    tags = [encode(m)[1] for m in samples]
    assert tags == [LIVE, RECON, BATCH, ACK, QUERY, QUERY_REPLY, WANT, FORK_PROOF]
    assert len(set(tags)) == len(samples)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_remote_error(data: bytes) -> None:
    try:
        decode(data)
    except RemoteError as exc:
        assert exc.reason in {"malformed", "oversized", "version", "unknown_kind", "bitmap"}


@settings(max_examples=100, deadline=None)
@pytest.mark.parametrize("kind", range(1, 9))
@given(body=st.binary(max_size=300))
def test_garbage_body_raises_only_remote_error(kind: int, body: bytes) -> None:
    try:
        decode(_head(kind) + body)
    except RemoteError as exc:
        assert exc.reason in {"malformed", "oversized", "bitmap"}


@settings(max_examples=150, deadline=None)
@given(messages, st.data())
def test_mutated_messages_raise_only_remote_error(
    message: protocol.Message, data: st.DataObject
) -> None:
    """Flipped, cut or inserted bytes in a valid message get past the header checks."""
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(2, len(raw)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and at < len(raw):
            raw[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del raw[at : at + data.draw(st.integers(1, 40))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=40))
    try:
        decode(bytes(raw))
    except RemoteError as exc:
        assert exc.reason in {"malformed", "oversized", "bitmap", "unknown_kind"}


@pytest.mark.parametrize("version", [0, 1, 2, 3, 5, 255])
def test_unknown_version(version: int) -> None:
    error = _refused(_head(ACK, version) + struct.pack(">II", 1, 2), "version")
    assert "upgrade" in str(error)


def test_version_1_summary_is_refused_as_version() -> None:
    """A node still speaking v1 sends its flat SUMMARY (kind 2): refused by version."""
    body = struct.pack(">IB", 1, 1) + struct.pack(">I", 1) + struct.pack(">32sQI", b"o" * 32, 3, 0)
    _refused(bytes([1, 2]) + body, "version")
    for kind in range(1, 9):
        _refused(bytes([1, kind]), "version")


@pytest.mark.parametrize("kind", [0, 9, 200, 255])
def test_unknown_kind(kind: int) -> None:
    _refused(_head(kind) + b"\x00" * 8, "unknown_kind")


def test_truncated_batch_is_malformed() -> None:
    data = encode(Batch(3, 1, False, (b"a" * 100, b"b" * 50)))
    for cut in (2, 5, 14, 15, 17, 18 + 50, len(data) - 1):
        _refused(data[:cut], "malformed")
    _refused(data + b"\x00", "malformed")


def test_truncated_recon_and_want_are_malformed() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    recon = encode(
        Recon(
            1,
            FROM_RESPONDER,
            (
                FingerprintRange(MIN_BOUND, a, 5, 1),
                ItemsRange(a, MAX_BOUND, (Item(b, 3, b"\x09" * 32, BitMap64([9])),)),
            ),
        )
    )
    want = encode(Want(1, True, (Claim(a, 3, BitMap64([10, 11])), Claim(b, 0, BitMap64()))))
    for data in (recon, want):
        assert decode(data)
        for cut in range(2, len(data)):
            with pytest.raises(RemoteError) as info:
                decode(data[:cut])
            assert info.value.reason in {"malformed", "bitmap"}, cut
        _refused(data + b"\x00", "malformed")


def test_batch_count_claiming_more_entries_than_present() -> None:
    _refused(_head(BATCH) + struct.pack(">IIBI", 1, 0, 1, 1000), "malformed")


def test_counts_claiming_more_than_present() -> None:
    _refused(_head(RECON) + struct.pack(">IBI", 1, 0, 2**32 - 1), "malformed")
    _refused(_head(WANT) + struct.pack(">IBI", 1, 0, 2**32 - 1), "malformed")
    items = bytes([0, 2, ITEMS_RANGE]) + struct.pack(">I", 2**32 - 1)
    _refused(_head(RECON) + struct.pack(">IBI", 1, 0, 1) + items, "malformed")


def test_oversized_message() -> None:
    _refused(encode(Live((b"x" * MAX_MESSAGE_BYTES,))), "oversized")
    _refused(encode(Live((b"x" * (MAX_MESSAGE_BYTES - 8),))), "oversized")  # one entry at most
    count = (MAX_MESSAGE_BYTES - 15) // (MAX_ENTRY_BYTES + 4)
    near_limit = encode(Batch(1, 0, True, (b"x" * MAX_ENTRY_BYTES,) * count))
    assert MAX_MESSAGE_BYTES - (MAX_ENTRY_BYTES + 4) < len(near_limit) <= MAX_MESSAGE_BYTES
    assert isinstance(decode(near_limit), Batch)
    big_claims = tuple(Claim(n.to_bytes(32, "big"), n, BitMap64()) for n in range(30_000))
    _refused(encode(Want(1, True, big_claims)), "oversized")


def test_oversized_batch_count_and_entry() -> None:
    _refused(_head(BATCH) + struct.pack(">IIBI", 1, 0, 1, MAX_BATCH_ENTRIES + 1), "oversized")
    data = _head(BATCH) + struct.pack(">IIBII", 1, 0, 1, 1, MAX_ENTRY_BYTES + 1)
    _refused(data + b"x" * (MAX_ENTRY_BYTES + 1), "oversized")


def test_oversized_fork_proof_side() -> None:
    too_big = b"x" * (MAX_SIDE_BYTES + 1)
    _refused(encode(ForkProofMsg(too_big, b"y")), "oversized")
    _refused(encode(ForkProofMsg(b"y", too_big)), "oversized")
    ok = ForkProofMsg(b"x" * MAX_SIDE_BYTES, b"y" * MAX_SIDE_BYTES)
    assert decode(encode(ok)) == ok
    assert len(encode(ok)) <= MAX_MESSAGE_BYTES  # a full proof still fits one message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02",
        _head(RECON) + b"\x00\x00\x00",
        _head(WANT) + b"\x00" * 8,
        _head(ACK) + b"\x00" * 7,
        _head(ACK) + b"\x00" * 9,
        _head(QUERY) + b"\x00" * 7,
        _head(QUERY) + b"\x00" * 9,
        _head(QUERY_REPLY) + b"\x00" * 7,
        _head(QUERY_REPLY) + b"\x00" * 8 + b"{not json",
        _head(QUERY_REPLY) + b"\x00" * 8 + b'{"a": 1}',
        _head(QUERY_REPLY) + b"\x00" * 8 + b"[1, 2]",
        _head(FORK_PROOF),
        _head(FORK_PROOF) + struct.pack(">I", 5) + b"abc",
        _head(FORK_PROOF) + struct.pack(">I", 1) + b"a",
    ],
)
def test_malformed_messages(data: bytes) -> None:
    _refused(data, "malformed")


# ------------------------------------------------------------------ v2 structure

A, B, C, D = (bytes([n]) * 32 for n in (0x10, 0x20, 0x30, 0x40))
_RECON_HEAD = struct.Struct(">IBI")
_CLAIM_HEAD = struct.Struct(">32sQBI")


def _key(origin: bytes) -> bytes:
    return b"\x01" + origin


def _recon(*ranges: bytes, count: int | None = None) -> bytes:
    n = len(ranges) if count is None else count
    return _head(RECON) + _RECON_HEAD.pack(1, FROM_RESPONDER, n) + b"".join(ranges)


def _done(lower: bytes, upper: bytes) -> bytes:
    return lower + upper + bytes([DONE_RANGE])


def _item(origin: bytes, prefix: int = 1, beyond: BitMap64 | None = None, **kw: int) -> bytes:
    head = ZERO_HASH if prefix == 0 else b"\x05" * 32
    return Item(origin, prefix, head, beyond or BitMap64(), **kw).encode()


def _items(lower: bytes, upper: bytes, *items: bytes) -> bytes:
    return lower + upper + bytes([ITEMS_RANGE]) + struct.pack(">I", len(items)) + b"".join(items)


MIN, MAX = b"\x00", b"\x02"  # bound tags


def test_hand_built_recon_decodes() -> None:
    data = _recon(_done(MIN, _key(A)), _done(_key(A), _key(B)), _items(_key(C), MAX, _item(D)))
    message = decode(data)
    assert isinstance(message, Recon)
    assert [type(r) for r in message.ranges] == [DoneRange, DoneRange, ItemsRange]
    assert message.ranges[2].lower == C and message.ranges[2].upper == MAX_BOUND  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "ranges",
    [
        pytest.param([_done(_key(B), _key(B))], id="empty"),
        pytest.param([_done(_key(B), _key(A))], id="inverted"),
        pytest.param([_done(MAX, MIN)], id="max-to-min"),
        pytest.param([_done(MIN, _key(C)), _done(_key(B), _key(D))], id="overlap"),
        pytest.param([_done(_key(C), _key(D)), _done(_key(A), _key(B))], id="unordered"),
        pytest.param([_done(MIN, MAX), _done(MIN, MAX)], id="twice"),
        pytest.param([_done(MIN, _key(B)), _done(MIN, _key(B))], id="repeated"),
    ],
)
def test_overlapping_or_unordered_ranges_are_refused(ranges: list[bytes]) -> None:
    _refused(_recon(*ranges), "malformed")


def test_adjacent_ranges_are_fine() -> None:
    message = decode(_recon(_done(MIN, _key(B)), _done(_key(B), MAX)))
    assert isinstance(message, Recon) and len(message.ranges) == 2


@pytest.mark.parametrize(
    "items_range",
    [
        pytest.param(_items(_key(B), _key(C), _item(A)), id="below-lower"),
        pytest.param(_items(_key(B), _key(C), _item(C)), id="at-upper"),
        pytest.param(_items(_key(B), _key(C), _item(D)), id="above-upper"),
        pytest.param(_items(MIN, _key(B), _item(A), _item(C)), id="second-outside"),
        pytest.param(_items(MIN, MAX, _item(B), _item(A)), id="decreasing"),
        pytest.param(_items(MIN, MAX, _item(B), _item(B)), id="repeated"),
    ],
)
def test_items_outside_their_range_or_out_of_order_are_refused(items_range: bytes) -> None:
    _refused(_recon(items_range), "malformed")


def test_item_at_its_lower_bound_is_inside() -> None:
    message = decode(_recon(_items(_key(B), _key(C), _item(B))))
    assert isinstance(message, Recon)
    assert [i.origin for i in message.ranges[0].items] == [B]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        pytest.param(_item(A, 5, BitMap64([5])), "bitmap", id="beyond-at-prefix"),
        pytest.param(_item(A, 5, BitMap64([3, 9])), "bitmap", id="beyond-in-prefix"),
        pytest.param(_item(A, 5, BitMap64([9]), forked_at=9), "bitmap", id="beyond-at-fork"),
        pytest.param(_item(A, 5, forked_at=4), "bitmap", id="prefix-past-fork"),
        pytest.param(_item(A, 5, BitMap64([MAX_SEQ + 1])), "bitmap", id="beyond-max-seq"),
        pytest.param(_item(A, 5, BitMap64([5 + MAX_AHEAD])), "bitmap", id="beyond-max-ahead"),
        pytest.param(_item(A, MAX_SEQ + 2), "bitmap", id="prefix-past-max-seq"),
        pytest.param(
            struct.pack(">32sQ32sQI", A, 3, ZERO_HASH, NOT_FORKED, 0), "malformed", id="no-head"
        ),
        pytest.param(
            struct.pack(">32sQ32sQI", A, 0, b"\x05" * 32, NOT_FORKED, 0),
            "malformed",
            id="head-without-prefix",
        ),
        pytest.param(
            struct.pack(">32sQ32sQI", A, 0, ZERO_HASH, NOT_FORKED, 8) + b"\xff" * 8,
            "bitmap",
            id="undecodable-bitmap",
        ),
    ],
)
def test_bad_items_are_refused(item: bytes, reason: str) -> None:
    _refused(_recon(_items(MIN, MAX, item)), reason)


@pytest.mark.parametrize("mode", [3, 4, 255])
def test_unknown_range_mode_is_refused(mode: int) -> None:
    error = _refused(_recon(MIN + MAX + bytes([mode]) + b"\x00" * 20), "malformed")
    assert "mode" in str(error)


@pytest.mark.parametrize("tag", [3, 7, 255])
def test_unknown_bound_tag_is_refused(tag: int) -> None:
    error = _refused(_recon(bytes([tag]) + A + MAX + bytes([DONE_RANGE])), "malformed")
    assert "tag" in str(error)
    error = _refused(_recon(MIN + bytes([tag]) + A + bytes([DONE_RANGE])), "malformed")
    assert "tag" in str(error)


def test_key_bound_is_exactly_32_bytes() -> None:
    truncated_key = b"\x01" + A[:20]
    _refused(_recon(truncated_key), "malformed")


def _want(*claims: bytes, final: bool = True) -> bytes:
    return _head(WANT) + _RECON_HEAD.pack(1, int(final), len(claims)) + b"".join(claims)


def _claim(origin: bytes, prefix: int, beyond: bytes = b"", flags: int = 0) -> bytes:
    return _CLAIM_HEAD.pack(origin, prefix, flags, len(beyond)) + beyond


def test_claim_listing_an_origin_twice_is_refused() -> None:
    error = _refused(_want(_claim(A, 1), _claim(B, 2), _claim(A, 3)), "malformed")
    assert "twice" in str(error)
    message = decode(_want(_claim(A, 1), _claim(B, 2)))
    assert isinstance(message, Want) and [c.origin for c in message.claims] == [A, B]


def test_claim_whose_beyond_overlaps_its_prefix_is_refused() -> None:
    _refused(_want(_claim(A, 5, encode_bitmap(BitMap64([4, 9])))), "bitmap")
    _refused(_want(_claim(A, 5, encode_bitmap(BitMap64([0])))), "bitmap")
    # Seq `prefix` itself is outside the prefix (0..prefix-1): allowed.
    message = decode(_want(_claim(A, 5, encode_bitmap(BitMap64([5, 9])))))
    assert isinstance(message, Want) and set(message.claims[0].beyond) == {5, 9}


def test_claim_prefix_beyond_the_seq_space_is_refused() -> None:
    assert decode(_want(_claim(A, 2**48)))  # every seq 0..MAX_SEQ
    _refused(_want(_claim(A, 2**48 + 1)), "bitmap")
    _refused(_want(_claim(A, 2**64 - 1)), "bitmap")


def test_claim_bitmaps_are_checked() -> None:
    _refused(_want(_claim(A, 0, encode_bitmap(BitMap64([MAX_SEQ + 1])))), "bitmap")
    _refused(_want(_claim(A, 0, b"\xff" * 40)), "bitmap")
    big = BitMap64(range(0, 2 * (MAX_BITMAP_BYTES // 2 + 1) * 16, 16))
    raw = encode_bitmap(big)
    assert len(raw) > MAX_BITMAP_BYTES
    _refused(_want(_claim(A, 0, raw)), "bitmap")
    _refused(_want(_claim(A, 0, b"\x00" * 10))[:-1], "malformed")  # length past the end


def test_claim_flags() -> None:
    message = decode(_want(_claim(A, 1, flags=1), _claim(B, 1, flags=0), final=False))
    assert isinstance(message, Want) and not message.final
    assert [c.want_proof for c in message.claims] == [True, False]


def test_fork_proof_with_trailing_bytes_is_refused() -> None:
    data = encode(ForkProofMsg(b"first", b"second"))
    assert decode(data) == ForkProofMsg(b"first", b"second")
    error = _refused(data + b"\x00", "malformed")
    assert "trailing" in str(error)
    _refused(data[:-1], "malformed")


_RECIPE = PublishedRecipe("r" * 20, "Soup", "water", "boil", "12D3Koo", 7)


def test_query_reply_is_bounded() -> None:
    ok = encode(QueryReply(1, (_RECIPE,) * MAX_QUERY_REPLY_RECIPES))
    assert len(decode(ok).recipes) == MAX_QUERY_REPLY_RECIPES  # type: ignore[union-attr]
    with pytest.raises(RemoteError):
        decode(encode(QueryReply(1, (_RECIPE,) * (MAX_QUERY_REPLY_RECIPES + 1))))


@settings(max_examples=100, deadline=None)
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
