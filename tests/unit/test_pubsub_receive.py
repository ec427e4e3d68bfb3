"""The pubsub receive path: one stream read for many RPCs, an O(1) validation cache (issue 13).

py-libp2p's parser (`read_varint_prefixed_bytes_limited`) reads a length
prefix a byte at a time and then the body: two or three stream reads per
RPC, each through the stream's lock and yamux's bookkeeping. `BufferedReads`
serves those small reads from one read of whatever the stream holds.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.io.exceptions import IncompleteReadError
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import ValidationResult
from libp2p.utils.varint import (
    MessageTooLarge,
    encode_uvarint,
    read_varint_prefixed_bytes_limited,
)

from p2psync.net.pubsub_receive import (
    CHECKPOINT_BYTES,
    ENVELOPE_BYTES,
    READ_CHUNK,
    BufferedReads,
    NoValidationCache,
    read_rpcs,
)


class _Conn:
    peer_id = "peer-a"


class _Stream:
    """Stands for a NetStream: hands out its chunks, one per read, then EOF (b"")."""

    muxed_conn = _Conn()

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.reads: list[int | None] = []

    async def read(self, n: int | None = None) -> bytes:
        self.reads.append(n)
        await trio.lowlevel.checkpoint()
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if n is not None and n >= 0 and len(chunk) > n:  # a stream returns at most n
            self.chunks.insert(0, chunk[n:])
            chunk = chunk[:n]
        return chunk


class _Pubsub:
    def __init__(self) -> None:
        self.last_heard: dict[Any, float] = {}


def _framed(*bodies: bytes) -> bytes:
    return b"".join(encode_uvarint(len(body)) + body for body in bodies)


def _watcher(stream: _Stream, pubsub: _Pubsub) -> Any:
    return BufferedReads(stream, pubsub.last_heard)  # type: ignore[arg-type]


async def test_rpcs_that_arrived_together_cost_one_stream_read() -> None:
    bodies = [bytes([i]) * (300 + i) for i in range(5)]  # two-byte length prefixes
    stream, pubsub = _Stream([_framed(*bodies)]), _Pubsub()
    reader = _watcher(stream, pubsub)
    got = [await read_varint_prefixed_bytes_limited(reader, 1 << 20) for _ in bodies]
    assert got == bodies
    # Unbuffered, py-libp2p's parser read the stream 3 times per RPC: 15 here.
    assert len(stream.reads) == 1
    assert stream.reads == [READ_CHUNK]  # sized: an unsized yamux read is unbounded
    assert "peer-a" in pubsub.last_heard  # the liveness check sees the peer speak


async def test_an_rpc_split_across_reads_is_put_together() -> None:
    body = b"x" * 1000
    framed = _framed(body, b"tail")
    stream = _Stream([framed[:1], framed[1:500], framed[500:]])
    reader = _watcher(stream, _Pubsub())
    assert await read_varint_prefixed_bytes_limited(reader, 1 << 20) == body
    assert await read_varint_prefixed_bytes_limited(reader, 1 << 20) == b"tail"
    assert len(stream.reads) == 3


async def test_the_end_of_the_stream_ends_the_parse_as_before() -> None:
    framed = _framed(b"y" * 400)
    stream = _Stream([framed[:100]])  # the peer went away mid-RPC
    reader = _watcher(stream, _Pubsub())
    with pytest.raises(IncompleteReadError):  # py-libp2p ends its read loop quietly on it
        await read_varint_prefixed_bytes_limited(reader, 1 << 20)


async def test_the_size_limit_still_refuses_a_long_rpc_before_its_body() -> None:
    stream = _Stream([encode_uvarint(5_000_000) + b"z" * 10])
    reader = _watcher(stream, _Pubsub())
    with pytest.raises(MessageTooLarge):
        await read_varint_prefixed_bytes_limited(reader, 1 << 20)


async def test_a_read_of_nothing_reads_nothing() -> None:
    stream = _Stream([b"abc"])
    reader = _watcher(stream, _Pubsub())
    assert await reader.read(0) == b""
    assert stream.reads == []
    assert await reader.read(2) == b"ab"
    assert await reader.read(None) == b"c"
    assert await reader.read(5) == b""  # the stream ended


def test_the_validation_cache_serves_no_verdict() -> None:
    # py-libp2p's cache answered for an id for 300 s, skipping the validators.
    cache = NoValidationCache()
    for valid in (True, False):
        cache.put(b"m", ValidationResult(is_valid=valid, timestamp=time.time()))
        assert cache.get(b"m") is None
    assert cache.cache == {} and cache.access_order == []


async def test_a_read_served_from_the_buffer_is_still_a_checkpoint() -> None:
    # Handling what one read brought (up to 64 KiB of small RPCs) must not
    # hold the event loop from the other peers' streams.
    stream = _Stream([_framed(b"first", b"second")])
    reader = _watcher(stream, _Pubsub())
    assert await read_varint_prefixed_bytes_limited(reader, 1 << 20) == b"first"
    with trio.testing.assert_checkpoints():
        assert await reader.read(1) == bytes([len(b"second")])


async def test_a_stream_holding_more_than_a_chunk_is_read_a_chunk_at_a_time() -> None:
    big = [b"q" * 50_000 for _ in range(4)]
    stream = _Stream([_framed(*big)])
    reader = _watcher(stream, _Pubsub())
    assert [await read_varint_prefixed_bytes_limited(reader, 1 << 20) for _ in big] == big
    assert all(n == READ_CHUNK for n in stream.reads)
    assert len(stream.reads) == -(-len(_framed(*big)) // READ_CHUNK)


class _Manager:
    is_running = True

    def run_task(self, *args: Any) -> None:
        raise AssertionError("a task spawned per message")


class _ReadingPubsub:
    """What `read_rpcs` uses of a Pubsub, recording what it is handed."""

    max_inbound_rpc_size = 1 << 20
    max_subscriptions_per_rpc = 100
    host = None

    def __init__(self) -> None:
        self.manager = _Manager()
        self.handled: list[tuple[str, Any]] = []
        self.router = self

    def _is_subscribed_to_msg(self, msg: rpc_pb2.Message) -> bool:
        return msg.topicIDs[0] != "not-ours"

    async def push_msg(self, forwarder: Any, msg: rpc_pb2.Message) -> None:
        await trio.lowlevel.checkpoint()  # as a push may: the next must still wait
        self.handled.append(("message", msg.data))

    def handle_subscription(self, origin: Any, sub: rpc_pb2.RPC.SubOpts) -> None:
        self.handled.append(("subscription", sub.topicid))

    async def handle_rpc(self, rpc: rpc_pb2.RPC, sender: Any) -> None:
        self.handled.append(("control", len(rpc.control.graft)))


def _rpc(*data: bytes, topic: str = "t", subscribe: str = "", graft: bool = False) -> bytes:
    rpc = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=d, topicIDs=[topic]) for d in data])
    if subscribe:
        rpc.subscriptions.append(rpc_pb2.RPC.SubOpts(subscribe=True, topicid=subscribe))
    if graft:
        rpc.control.graft.append(rpc_pb2.ControlGraft(topicID="t"))
    return rpc.SerializeToString()


async def test_messages_are_handled_in_line_in_the_order_the_peer_sent_them() -> None:
    # py-libp2p's loop spawned a task per message through its service manager
    # (about a fifth of a message's CPU), and the tasks ran in either order.
    bodies = [
        _rpc(b"m1", b"m2"),
        _rpc(b"m3", subscribe="pair"),
        _rpc(b"skipped", topic="not-ours"),
        _rpc(b"m4", graft=True),
    ]
    stream, pubsub = _Stream([_framed(*bodies)]), _ReadingPubsub()
    await read_rpcs(pubsub, stream, {})  # type: ignore[arg-type]  # ends with the stream
    assert pubsub.handled == [
        ("message", b"m1"),
        ("message", b"m2"),
        ("message", b"m3"),
        ("subscription", "pair"),
        ("message", b"m4"),
        ("control", 1),
    ]


async def test_a_flood_of_subscriptions_in_one_rpc_is_ignored() -> None:
    pubsub = _ReadingPubsub()
    rpc = rpc_pb2.RPC(
        subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=f"t{i}") for i in range(101)]
    )
    stream = _Stream([_framed(rpc.SerializeToString(), _rpc(subscribe="ok"))])
    await read_rpcs(pubsub, stream, {})  # type: ignore[arg-type]
    assert pubsub.handled == [("subscription", "ok")]


@pytest.mark.parametrize(
    "payloads",
    [
        [b"%d" % i for i in range(16 * (CHECKPOINT_BYTES // ENVELOPE_BYTES))],
        # Eight LIVEs of 64 entries each: by count (32 a checkpoint) none between them.
        [bytes(CHECKPOINT_BYTES)] * 8,
    ],
    ids=["many-small", "few-large"],
)
async def test_an_rpc_of_many_messages_lets_other_tasks_run_between_them(
    payloads: list[bytes],
) -> None:
    # One 1 MiB RPC can carry thousands of messages; checked one after the
    # other without a checkpoint they held the event loop (223 ms measured).
    class _Quick(_ReadingPubsub):
        async def push_msg(self, forwarder: Any, msg: rpc_pb2.Message) -> None:
            self.handled.append(("message", msg.data))  # no checkpoint of its own

    count = len(payloads)
    pubsub = _Quick()
    stream = _Stream([_framed(_rpc(*payloads))])
    ticks: list[int] = []

    async def watch() -> None:
        while True:
            ticks.append(len(pubsub.handled))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.lowlevel.checkpoint()
        await read_rpcs(pubsub, stream, {})  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()
    assert len(pubsub.handled) == count
    seen_mid_rpc = {t for t in ticks if 0 < t < count}
    assert len(seen_mid_rpc) >= 4, ticks  # without the checkpoints: none


async def test_a_message_naming_no_topic_or_several_is_skipped_and_counted() -> None:
    """py-libp2p validates (and delivers) a message once per topic it lists,
    duplicates included: 39 000 listings of the live topic in one message
    held the event loop for seconds. Only messages of exactly one topic pass."""
    from collections import Counter

    rpc = rpc_pb2.RPC(
        publish=[
            rpc_pb2.Message(data=b"many", topicIDs=["t"] * 1000),
            rpc_pb2.Message(data=b"two", topicIDs=["t", "u"]),
            rpc_pb2.Message(data=b"none"),
            rpc_pb2.Message(data=b"one", topicIDs=["t"]),
        ]
    )
    stream, pubsub = _Stream([_framed(rpc.SerializeToString())]), _ReadingPubsub()
    refused: Counter[str] = Counter()
    await read_rpcs(pubsub, stream, {}, refused)  # type: ignore[arg-type]
    assert pubsub.handled == [("message", b"one")]
    assert refused == {"recv_topic_list": 3}
