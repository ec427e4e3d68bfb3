"""The receive path of a pubsub stream, without three per-message costs of py-libp2p.

- ``read_rpcs``: py-libp2p's read loop spawned a task through its service
  manager for every message it parsed (12-15 % of a message's CPU,
  measured in-process, and the tasks of one batch ran in either order);
  here each is handled in line, in the order it came.
- ``BufferedReads``: py-libp2p reads an RPC in two or three stream reads (its
  varint length a byte at a time, then the body), and each goes through the
  stream's state lock and yamux's ``read_stream`` (a lock and three debug
  f-strings built whether logged or not). Here one read takes up to
  ``READ_CHUNK`` bytes of what yamux holds for the stream, often several
  RPCs, and the parser's small reads are served from it, each still a
  checkpoint.
- ``NoValidationCache``: py-libp2p cached validation verdicts under the
  message id, scanning a list of up to 1 000 ids on every put and hit; a
  refusal cached that way dropped the genuine pair-topic copy after a
  wrongly forwarded one, and a valid verdict let a publisher reuse an id for
  other content once the seen cache forgot it. Nothing is cached.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import Any, cast

import trio
from libp2p.abc import INetStream
from libp2p.io.abc import Reader
from libp2p.io.exceptions import IOException, MessageTooLarge
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationCache, ValidationResult
from libp2p.pubsub.utils import maybe_consume_signed_record
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

logger = logging.getLogger(__name__)

# A sized read returns at once with what yamux holds, up to this. An unsized
# one loops until the stream's buffer is empty, handing the peer its window
# back as it goes: a peer that keeps sending could keep it from returning
# while it grew without bound.
READ_CHUNK = 64 * 1024
# The messages of one RPC handled between checkpoints: until their payloads
# (and a nominal 512 bytes of envelope each, its signature checked) reach
# this. 32 small messages, as py-libp2p's did by count; but one p2psync LIVE
# of 16 KiB may carry 64 entries, each signature checked by the validator.
CHECKPOINT_BYTES = 16 * 1024
ENVELOPE_BYTES = 512


class BufferedReads:
    """A pubsub stream as ``read_rpcs`` reads it:
    buffered, and noting in ``last_heard[peer]`` (trio time) when bytes arrive.

    At most ``READ_CHUNK`` bytes are held here, and the size limit still
    applies to each RPC as the parser reads its length.
    """

    def __init__(self, stream: INetStream, last_heard: dict[ID, float]) -> None:
        self._stream = stream
        self._peer = stream.muxed_conn.peer_id
        self._last_heard = last_heard
        self._buffer = b""
        self._at = 0

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        if self._at >= len(self._buffer):
            self._buffer, self._at = await self._stream.read(READ_CHUNK), 0
            if not self._buffer:
                return b""  # the end: the parser raises IncompleteReadError, as before
            self._last_heard[self._peer] = trio.current_time()
        else:
            # A read is still a checkpoint: handling what one read brought
            # (up to READ_CHUNK of small RPCs) must not hold the event loop.
            await trio.lowlevel.checkpoint()
        start = self._at
        end = len(self._buffer) if n is None or n < 0 else min(len(self._buffer), start + n)
        self._at = end
        return self._buffer[start:end]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


async def read_rpcs(
    pubsub: Pubsub,
    stream: INetStream,
    last_heard: dict[ID, float],
    refused: Counter[str] | None = None,
) -> None:
    """``Pubsub.continuously_read_stream``, each message handled in line.

    py-libp2p spawns a task (through its service manager) for every message
    it parses and lets the tasks run in any order; here each is pushed
    (checked, delivered, forwarded) before the next RPC is parsed, in the
    order the peer sent them. Nothing in a push waits on the network (a
    forward is queued, a full queue drops), so a slow peer cannot stall
    this loop. Each served read is a checkpoint, and so is the handling of
    every ``CHECKPOINT_BYTES`` of an RPC's messages (a 1 MiB RPC can hold
    6 000 messages with made-up signatures, or 64 LIVEs of 64 entries, each
    checked), so one peer does not hold the event loop. An error escapes to
    the caller, which drops the stream and blames the peer (in py-libp2p's
    task it cancelled the whole pubsub service). A message that does not
    name exactly one topic is skipped and counted in ``refused`` as
    ``recv_topic_list``.
    """
    peer_id = stream.muxed_conn.peer_id
    reads = cast(Reader, BufferedReads(stream, last_heard))
    try:
        while pubsub.manager.is_running:
            incoming = await read_varint_prefixed_bytes_limited(reads, pubsub.max_inbound_rpc_size)
            rpc = rpc_pb2.RPC()
            rpc.ParseFromString(incoming)
            if not maybe_consume_signed_record(rpc, pubsub.host, peer_id):
                logger.debug("RPC from %s ignored: its peer record is invalid", peer_id)
                continue
            work = 0
            for msg in rpc.publish:
                if work >= CHECKPOINT_BYTES:
                    await trio.lowlevel.checkpoint()
                    work = 0
                work += ENVELOPE_BYTES + len(msg.data)
                if len(msg.topicIDs) != 1:
                    # py-libp2p runs a topic's validators, and delivers a copy,
                    # once per listing, duplicates included: one message naming
                    # the live topic 39 000 times held the loop for seconds.
                    # We, and today's go and js libp2p, publish one topic each.
                    if refused is not None:
                        refused["recv_topic_list"] += 1
                    continue
                if pubsub._is_subscribed_to_msg(msg):
                    await pubsub.push_msg(peer_id, msg)
            if len(rpc.subscriptions) > pubsub.max_subscriptions_per_rpc:
                logger.debug(  # the peer chooses how often: not worth a warning each
                    "%s announced %d subscriptions in one RPC (limit %d): ignored",
                    peer_id,
                    len(rpc.subscriptions),
                    pubsub.max_subscriptions_per_rpc,
                )
            else:
                for subscription in rpc.subscriptions:
                    pubsub.handle_subscription(peer_id, subscription)
            if rpc.HasField("control"):
                await pubsub.router.handle_rpc(rpc, peer_id)
    except MessageTooLarge as exc:
        logger.warning("pubsub RPC from %s over the size limit: %s", peer_id, exc)
        with contextlib.suppress(Exception):
            await stream.reset()
        pubsub._handle_dead_peer(peer_id)
    except (StreamEOF, StreamError, IOException, RawConnError):
        pass  # the stream or connection closed: py-libp2p's own loop ends quietly too


class NoValidationCache(ValidationCache):
    """A validation cache that remembers nothing: every message the seen
    cache does not hold goes through the validators.

    py-libp2p keeps each verdict under the message id (publisher + seqno)
    for 300 s and skips the validators on a hit. A verdict belongs to the
    content, though (and on our pair topics to the forwarder too), and the id
    is the publisher's to reuse: once the seen cache forgets an id (120 s
    after it was last seen), the same publisher could send other content
    under it and every node holding the verdict would pass it on unchecked.
    Nothing is lost: our validators are synchronous, so a message reaches
    validation twice only after the seen cache forgot it.
    """

    def get(self, msg_id: bytes) -> ValidationResult | None:
        return None

    def put(self, msg_id: bytes, result: ValidationResult) -> None:
        return None
