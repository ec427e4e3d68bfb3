"""The receive path of a pubsub stream, without two per-message costs of py-libp2p.

- ``BufferedReads``: py-libp2p reads an RPC in two or three stream reads (its
  varint length a byte at a time, then the body), and each goes through the
  stream's state lock and yamux's ``read_stream`` (a lock and three debug
  f-strings built whether logged or not). Here one read takes up to
  ``READ_CHUNK`` bytes of what yamux holds for the stream, often several
  RPCs, and the parser's small reads are served from it, each still a
  checkpoint so messages keep their order.
- ``LruValidationCache``: py-libp2p's ``ValidationCache`` keeps its LRU order
  in a list and scans it on every put and hit (``in``, ``remove``,
  ``pop(0)``: up to 1 000 ids compared per message once full). Same rules
  here, in an ordered dict, except that a refusal is not remembered: our
  pair-topic validator refuses a message for who forwarded it, and a
  refusal cached under the message id dropped the genuine copy after it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import ValidationCache, ValidationResult

# A sized read returns at once with what yamux holds, up to this. An unsized
# one loops until the stream's buffer is empty, handing the peer its window
# back as it goes: a peer that keeps sending could keep it from returning
# while it grew without bound.
READ_CHUNK = 64 * 1024


class BufferedReads:
    """A pubsub stream as ``Pubsub.continuously_read_stream`` reads it:
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
            # A read is still a checkpoint. py-libp2p spawns a task per message
            # it parses, and trio runs the tasks of one batch in either order:
            # parsed without yielding, a peer's messages were delivered and
            # forwarded out of order.
            await trio.lowlevel.checkpoint()
        start = self._at
        end = len(self._buffer) if n is None or n < 0 else min(len(self._buffer), start + n)
        self._at = end
        return self._buffer[start:end]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class LruValidationCache(ValidationCache):
    """``ValidationCache`` with its least-recently-used order kept in O(1)."""

    def __init__(self, ttl: int = 300, max_size: int = 1000) -> None:
        super().__init__(ttl, max_size)
        self._order: OrderedDict[bytes, None] = OrderedDict()

    def get(self, msg_id: bytes) -> ValidationResult | None:
        result = self.cache.get(msg_id)
        if result is None:
            return None
        if time.time() - result.timestamp > self.ttl:  # py-libp2p stamps results so
            self._remove(msg_id)
            return None
        self._order.move_to_end(msg_id)
        return result

    def put(self, msg_id: bytes, result: ValidationResult) -> None:
        if not result.is_valid:
            return  # validity may depend on the forwarder: ask again next time
        while len(self.cache) >= self.max_size and self._order:
            oldest, _ = self._order.popitem(last=False)
            self.cache.pop(oldest, None)
        self.cache[msg_id] = result
        self._order[msg_id] = None
        self._order.move_to_end(msg_id)

    def _remove(self, msg_id: bytes) -> None:
        self.cache.pop(msg_id, None)
        self._order.pop(msg_id, None)
