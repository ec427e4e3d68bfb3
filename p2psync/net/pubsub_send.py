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
still works.

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
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.utils.varint import encode_uvarint

from p2psync.net.peer_record import RecordOnce, without_record

logger = logging.getLogger(__name__)

# A batch stops growing once it holds this much; a larger single RPC (a
# backfill batch of up to 1 MiB) still goes alone, as before. 64 KiB is one
# yamux frame's worth, so a batch never waits on a window that one RPC would
# not have waited on as well.
COALESCE_BYTES = 64 * 1024


class StreamWriter(Protocol):
    """What ``send_queued`` needs of the pubsub service."""

    async def write_rpcs(self, stream: INetStream, rpcs: Sequence[rpc_pb2.RPC]) -> bool: ...

    def _handle_dead_peer(self, peer_id: ID) -> None: ...


async def send_queued(pubsub: StreamWriter, peer: ID, stream: INetStream, queue: RpcQueue) -> None:
    """Until the queue closes or the stream fails: wait for an RPC, then write
    it with every other the queue holds by then (up to ``COALESCE_BYTES``)."""
    try:
        while (first := await queue.pop()) is not None:
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
        pubsub._handle_dead_peer(peer)


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
