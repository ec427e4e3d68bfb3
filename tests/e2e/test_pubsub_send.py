"""What waits in a peer's send queue goes out in one stream write, in order."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import OutBoundQueueSize, RpcQueue
from libp2p.utils.varint import encode_uvarint

from p2psync.net.host import open_libp2p_host
from p2psync.net.peer_record import RecordOnce
from p2psync.net.pubsub_send import (
    COALESCE_BYTES,
    PEER_QUEUE_RPCS,
    SMALL_RPC_BYTES,
    encode_rpcs,
    send_queued,
    widen,
)
from tests.e2e.test_libp2p_host import LOOPBACK, seed
from tests.e2e.test_router_publish import meshed_pair

# A message-carrying RPC past the size a queue takes beyond py-libp2p's 32.
LARGE = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=bytes(SMALL_RPC_BYTES + 1))])


async def test_rpcs_queued_together_reach_the_peer_in_one_write_and_in_order() -> None:
    topic = "p2psync/test/coalesce"
    with trio.fail_after(30):
        async with (
            open_host("co-a") as a,
            open_host("co-b") as b,
        ):
            inbox = await meshed_pair(a, b, topic)
            stream = a._pubsub.peers[ID.from_base58(b.peer_id)]
            writes: list[int] = []
            real_write = stream.write

            async def counted_write(data: bytes) -> None:
                writes.append(len(data))
                await real_write(data)

            stream.write = counted_write  # type: ignore[method-assign]
            # While the stream is busy (its lock held, as by a long write),
            # 20 messages queue up for b.
            async with a._pubsub._write_locks.setdefault(stream, trio.Lock()):
                for n in range(20):
                    assert await a.publish(topic, b"op %d" % n, timeout=5)
            for n in range(20):
                with trio.fail_after(5):
                    assert (await inbox.receive()).data == b"op %d" % n
            # py-libp2p wrote them one by one: 20 writes, 20 yamux frames,
            # 20 Noise messages. The sender may have taken the first ones
            # before the lock stopped it, so at most two batches.
            assert 1 <= len(writes) <= 2, writes


def open_host(name: str) -> Any:
    return open_libp2p_host(seed(name), LOOPBACK, 0)


class _Stream:
    """A stream that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)


class _Writer:
    def __init__(self, fail_after: int | None = None) -> None:
        self.batches: list[list[rpc_pb2.RPC]] = []
        self.dead: list[ID] = []
        self._fail_after = fail_after

    async def write_rpcs(self, stream: Any, rpcs: Any) -> bool:
        self.batches.append(list(rpcs))
        return self._fail_after is None or len(self.batches) < self._fail_after

    def stream_failed(self, peer: ID, stream: Any) -> None:
        self.dead.append(peer)


def _rpc(n: int, size: int = 10, record: bytes = b"") -> rpc_pb2.RPC:
    message = rpc_pb2.Message(data=bytes([n % 256]) * size, topicIDs=["t"], seqno=n.to_bytes(8))
    rpc = rpc_pb2.RPC(publish=[message])
    if record:
        rpc.senderRecord = record
    return rpc


async def _drain(writer: _Writer, queue: RpcQueue) -> None:
    peer = ID(b"\x00\x01peer")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_queued, writer, peer, _Stream(), queue)
        await trio.testing.wait_all_tasks_blocked()
        queue.close()


async def test_a_batch_stops_growing_at_the_byte_limit_and_keeps_the_order() -> None:
    queue = RpcQueue(max_size=64)
    size = COALESCE_BYTES // 4
    for n in range(10):
        assert queue.push(_rpc(n, size))
    writer = _Writer()
    await _drain(writer, queue)
    sent = [rpc.publish[0].data[0] for batch in writer.batches for rpc in batch]
    assert sent == list(range(10))
    # Each batch stops once it holds COALESCE_BYTES: 4 RPCs of a quarter each.
    assert [len(batch) for batch in writer.batches] == [4, 4, 2]


async def test_a_failed_write_ends_the_loop() -> None:
    queue = RpcQueue()
    queue.push(_rpc(1))
    writer = _Writer(fail_after=1)
    with trio.fail_after(5):
        await send_queued(writer, ID(b"\x00\x01peer"), _Stream(), queue)  # type: ignore[arg-type]
    # write_rpcs said the stream is gone (and dealt with the peer itself).
    assert len(writer.batches) == 1 and writer.dead == []


async def test_a_write_that_raises_reports_the_stream_and_ends_the_loop() -> None:
    class _Raising(_Writer):
        async def write_rpcs(self, stream: Any, rpcs: Any) -> bool:
            raise OSError("connection reset")

    queue = RpcQueue()
    queue.push(_rpc(1))
    queue.push(_rpc(2))
    writer = _Raising()
    with trio.fail_after(5):
        await send_queued(writer, ID(b"\x00\x01peer"), _Stream(), queue)  # type: ignore[arg-type]
    assert writer.dead == [ID(b"\x00\x01peer")]


async def test_a_closed_queue_is_not_written_out() -> None:
    queue = RpcQueue()
    for n in range(3):
        queue.push(_rpc(n))
    queue.close()  # the peer was dropped: what it still held goes nowhere
    writer = _Writer()
    with trio.fail_after(5):
        await send_queued(writer, ID(b"\x00\x01peer"), _Stream(), queue)  # type: ignore[arg-type]
    assert writer.batches == []


def test_the_bytes_are_the_same_rpcs_one_after_another() -> None:
    rpcs = [_rpc(n, 100 * n + 1) for n in range(5)]
    data, record = encode_rpcs(_Stream(), rpcs, RecordOnce(), 0.0, hello=False)  # type: ignore[arg-type]
    expected = b"".join(
        encode_uvarint(len(body)) + body for body in (rpc.SerializeToString() for rpc in rpcs)
    )
    assert data == expected and record is None


@pytest.mark.parametrize("already_carried", [False, True])
def test_our_record_rides_once_per_batch_at_most(already_carried: bool) -> None:
    stream, records = _Stream(), RecordOnce()
    if already_carried:
        records.written(stream, b"signed record", 0.0)  # type: ignore[arg-type]
    rpcs = [_rpc(n, record=b"signed record") for n in range(3)]
    data, carried = encode_rpcs(stream, rpcs, records, 1.0, hello=False)  # type: ignore[arg-type]
    assert data.count(b"signed record") == (0 if already_carried else 1)
    assert carried == (None if already_carried else b"signed record")
    assert all(rpc.senderRecord == b"signed record" for rpc in rpcs)  # never changed in place


async def test_a_peer_queue_takes_a_burst_of_forwards_without_dropping() -> None:
    """py-libp2p's queue took 32 RPCs and dropped the rest: forwards cannot
    wait, so in a 16-node burst a node dropped hundreds of them."""
    topic = "p2psync/test/queue-room"
    with trio.fail_after(30):
        async with (
            open_host("qr-a") as a,
            open_host("qr-b") as b,
        ):
            await meshed_pair(a, b, topic)
            queue = a._pubsub.peer_queues[ID.from_base58(b.peer_id)]
            # Pushed with no checkpoint between: the sending task takes none
            # meanwhile (a GRAFT or IHAVE may be waiting already).
            room = PEER_QUEUE_RPCS - len(queue)
            assert room > 100
            accepted = [queue.push(rpc_pb2.RPC()) for _ in range(room - 1)]
            assert all(accepted), accepted.index(False)
            assert not queue.push(LARGE)  # past py-libp2p's 32: small RPCs only
            assert queue.push(rpc_pb2.RPC())
            assert not queue.push(rpc_pb2.RPC())  # still bounded


def test_past_32_a_queue_refuses_large_messages_only() -> None:
    queue = RpcQueue()
    widen(queue)
    control = rpc_pb2.RPC(
        control=rpc_pb2.ControlMessage(
            ihave=[rpc_pb2.ControlIHave(topicID="t", messageIDs=[bytes(46)] * 500)]
        )
    )
    for _ in range(OutBoundQueueSize - 1):
        assert queue.push(rpc_pb2.RPC())
    assert queue.push(LARGE)  # the 32nd: py-libp2p's room
    assert not queue.push(LARGE)
    assert queue.push(control, priority=True)  # a heartbeat's GRAFT/IHAVE
    assert queue.push(rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"op")]))


def test_the_largest_live_rpc_counts_as_small() -> None:
    """A LIVE at its limits (a run of MAX_LIVE_ENTRIES entries holding
    MAX_LIVE_BYTES, or one entry at the op size limit), signed and enveloped
    as gossipsub sends it with our peer record, fits under SMALL_RPC_BYTES."""
    from nacl.signing import SigningKey

    from p2psync.core import protocol
    from p2psync.core.entry import ZERO_HASH, sign_entry
    from p2psync.core.ops import MAX_OP_BYTES
    from p2psync.net.topics import live_topic
    from tests.unit.test_core_engine import signed_chain

    key = SigningKey(b"\x05" * 32)
    entry = sign_entry(key, 0, ZERO_HASH, 1, b"x" * MAX_OP_BYTES)
    one = protocol.encode(protocol.Live((entry.raw,)))
    # The largest run: 64 entries whose bytes sum to MAX_LIVE_BYTES.
    count, empty = protocol.MAX_LIVE_ENTRIES, len(sign_entry(key, 0, ZERO_HASH, 1, b"").raw)
    spare = protocol.MAX_LIVE_BYTES - count * empty
    ops = [b"x" * (spare // count + (seq < spare % count)) for seq in range(count)]
    raws = [e.raw for e in signed_chain(key, ops)]
    run = protocol.encode(protocol.Live(tuple(raws)))
    assert sum(map(len, raws)) == protocol.MAX_LIVE_BYTES and len(run) == 16_791
    assert protocol.decode(run) == protocol.Live(tuple(raws))
    assert len(one) < len(run)
    message = rpc_pb2.Message(
        from_id=bytes(38),
        data=run,
        seqno=bytes(8),
        topicIDs=[live_topic("default")],
        signature=bytes(64),
        key=bytes(36),
    )
    rpc = rpc_pb2.RPC(publish=[message], senderRecord=bytes(400))
    assert rpc.ByteSize() <= SMALL_RPC_BYTES
