"""The send path of a pubsub stream: what waits in a peer's queue goes out in one write.

py-libp2p's per-peer sending task (``Pubsub.handle_sending_messages``) takes
one RPC from the peer's queue and writes it, then the next: each RPC is a
yamux frame of its own, a Noise message of its own (its own encryption and
MAC) and a socket send of its own, each behind two or three trio locks, and
the receiver reads it back the same way. In a burst a peer's queue holds many
small RPCs (a live op is about 300 bytes), so ``send_queued`` writes all it
holds, up to ``COALESCE_BYTES``, as one buffer. The bytes on the wire are the
same length-prefixed RPCs in the same order (a pubsub stream is only a
sequence of them), so no peer can tell, and a reader that takes one at a time
still works. RPCs taken into a batch no longer count in the queue's length,
which publishing watches for room (``QUEUE_HIGH_WATER``): a peer that stops
reading holds one batch more than its queue.

``write_rpcs`` is also how a single RPC is written, so every writer of a
stream goes through the one per-stream lock (see ``RoutedPubsub``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamClosed, StreamReset
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import OutBoundQueueSize, PriorityQueue, RpcQueue
from libp2p.utils.varint import encode_uvarint

from p2psync.net.peer_record import RecordOnce, without_record

logger = logging.getLogger(__name__)

# A batch stops growing once it holds this much, so a batch of small RPCs
# fits in one yamux frame and one Noise message (at most 65 519 bytes of
# plaintext). A batch may still end with one large RPC (a backfill batch of
# up to 1 MiB), which yamux and Noise split as they split it alone.
COALESCE_BYTES = 32 * 1024

# RPCs a peer's queue takes (py-libp2p and go-libp2p: 32). A forward of
# someone else's message cannot wait for room, so a full queue drops it: with
# 25 creates at once on each of 16 nodes, a node dropped 320 to 500 forwards
# at 32 and those entries came later, by gossip or an anti-entropy round; at
# 128, none. Our own publications still wait at ``QUEUE_HIGH_WATER`` (28).
# Past py-libp2p's 32, a message-carrying RPC is taken only if it is at most
# ``SMALL_RPC_BYTES`` (a live op is about 300 bytes, its largest with its
# envelope 17 KiB; an RPC may be 1 MiB), so a peer that stops reading holds at
# most 2 MiB of messages more than before. Control RPCs (GRAFT/PRUNE with the
# heartbeat's IHAVE, our IWANT: ids, 50 bytes each) are taken as before.
PEER_QUEUE_RPCS = 128
SMALL_RPC_BYTES = 20 * 1024


class StreamWriter(Protocol):
    """What ``send_queued`` needs of the pubsub service."""

    async def write_rpcs(self, stream: INetStream, rpcs: Sequence[rpc_pb2.RPC]) -> bool: ...

    def stream_failed(self, peer: ID, stream: INetStream) -> None: ...


async def send_queued(pubsub: StreamWriter, peer: ID, stream: INetStream, queue: RpcQueue) -> None:
    """Until the queue closes or the stream fails: wait for an RPC, then write
    it with every other the queue holds by then (up to ``COALESCE_BYTES``).
    A closed queue (the peer was dropped) is not written out to the end."""
    try:
        while (first := await queue.pop()) is not None and not queue.closed:
            batch = [first]
            size = first.ByteSize()
            while len(queue) and size < COALESCE_BYTES:
                more = await queue.pop()  # returns at once: the queue holds one
                if more is None:
                    break
                batch.append(more)
                size += more.ByteSize()
            if not await pubsub.write_rpcs(stream, batch):
                return
    except Exception:
        logger.debug("sending loop for %s ended with an error", peer, exc_info=True)
        pubsub.stream_failed(peer, stream)


def encode_rpcs(
    stream: INetStream,
    rpcs: Sequence[rpc_pb2.RPC],
    records: RecordOnce,
    now: float,
    *,
    hello: bool,
) -> tuple[bytes, bytes | None]:
    """The bytes to write for ``rpcs``, each varint-length-prefixed, and the
    signed peer record they carry (None if none does). Our record rides in
    the first RPC that needs it and is stripped from the others."""
    parts: list[bytes] = []
    carried: bytes | None = None
    for rpc in rpcs:
        record = rpc.senderRecord
        if record and (record == carried or records.carried(stream, record, now, hello=hello)):
            rpc = without_record(rpc)
        elif record:
            carried = record
        body = rpc.SerializeToString()
        parts.append(encode_uvarint(len(body)))
        parts.append(body)
    return b"".join(parts), carried


async def write_bytes(stream: INetStream, data: bytes) -> bool:
    """One write; False (and nothing raised) if the stream is closed or reset."""
    try:
        await stream.write(data)
    except (StreamClosed, StreamReset):
        logger.debug("cannot write to %s: stream closed or reset", stream.muxed_conn.peer_id)
        return False
    return True


class _WideQueue(PriorityQueue):
    """py-libp2p's two-tier queue, ``PEER_QUEUE_RPCS`` deep, small messages only past 32."""

    def push(self, rpc: rpc_pb2.RPC, priority: bool = False) -> bool:
        if len(self) >= OutBoundQueueSize and rpc.publish and rpc.ByteSize() > SMALL_RPC_BYTES:
            return False
        return super().push(rpc, priority)


def widen(queue: RpcQueue) -> None:
    """Give ``queue`` the room of ``PEER_QUEUE_RPCS`` (py-libp2p makes it
    with its own size), keeping what it holds."""
    held = queue._queue
    wide = _WideQueue(PEER_QUEUE_RPCS)
    wide._priority, wide._non_priority = held._priority, held._non_priority
    queue._queue = wide
