"""Wire messages of the sync protocol, version 1 (see docs/PROTOCOL.md).

Every message starts with two bytes: protocol version, message kind. The rest
is a fixed binary layout; entries travel as their raw signed bytes so that a
receiver hashes exactly what the origin signed. Decoding checks sizes before
anything else and raises RemoteError (the peer is to blame) on any defect.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from p2psync.core.entry import MAX_ENTRY_BYTES
from p2psync.core.errors import RemoteError
from p2psync.core.query import Query, QueryReply, decode_recipes, encode_recipes
from p2psync.core.reasons import Reason

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1024 * 1024 - 1024  # gossipsub drops > 1 MiB at the sender
MAX_BATCH_ENTRIES = 10_000

LIVE, SUMMARY, BATCH, ACK, QUERY, QUERY_REPLY = 1, 2, 3, 4, 5, 6

_HEAD = struct.Struct(">BB")
_SUMMARY = struct.Struct(">IB")
_BATCH = struct.Struct(">IIBI")
_ACK = struct.Struct(">II")
_LEN = struct.Struct(">I")
_QUERY = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class Live:
    entry: bytes


@dataclass(frozen=True, slots=True)
class SummaryMsg:
    round: int
    reply_wanted: bool
    summary: bytes  # progress.encode_summary form, decoded by the engine


@dataclass(frozen=True, slots=True)
class Batch:
    round: int
    batch_no: int
    last: bool
    entries: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    round: int
    batch_no: int


Message = Live | SummaryMsg | Batch | Ack | Query | QueryReply


def encode(message: Message) -> bytes:
    if isinstance(message, Live):
        return _HEAD.pack(PROTOCOL_VERSION, LIVE) + message.entry
    if isinstance(message, SummaryMsg):
        head = _SUMMARY.pack(message.round, int(message.reply_wanted))
        return _HEAD.pack(PROTOCOL_VERSION, SUMMARY) + head + message.summary
    if isinstance(message, Batch):
        parts = [
            _HEAD.pack(PROTOCOL_VERSION, BATCH),
            _BATCH.pack(message.round, message.batch_no, int(message.last), len(message.entries)),
        ]
        for raw in message.entries:
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    if isinstance(message, Ack):
        return _HEAD.pack(PROTOCOL_VERSION, ACK) + _ACK.pack(message.round, message.batch_no)
    if isinstance(message, Query):
        return _HEAD.pack(PROTOCOL_VERSION, QUERY) + _QUERY.pack(message.query_id)
    body = encode_recipes(message.recipes)
    return _HEAD.pack(PROTOCOL_VERSION, QUERY_REPLY) + _QUERY.pack(message.query_id) + body


def decode(data: bytes) -> Message:
    size = len(data)
    if size > MAX_MESSAGE_BYTES:
        raise RemoteError(
            f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}", reason=Reason.OVERSIZED
        )
    if size < _HEAD.size:
        raise RemoteError("message is shorter than its header", reason=Reason.MALFORMED)
    version, kind = _HEAD.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise RemoteError(
            f"protocol version {version} is not supported (this node speaks {PROTOCOL_VERSION}); "
            "upgrade the older node",
            reason=Reason.VERSION,
        )
    body = memoryview(data)[_HEAD.size :]
    if kind == LIVE:
        return Live(bytes(body))
    if kind == SUMMARY:
        _need(body, _SUMMARY.size)
        round_no, flags = _SUMMARY.unpack_from(body)
        return SummaryMsg(round_no, bool(flags & 1), bytes(body[_SUMMARY.size :]))
    if kind == BATCH:
        return _decode_batch(body)
    if kind == ACK:
        _need(body, _ACK.size)
        if len(body) != _ACK.size:
            raise RemoteError("ack has trailing bytes", reason=Reason.MALFORMED)
        return Ack(*_ACK.unpack_from(body))
    if kind == QUERY:
        if len(body) != _QUERY.size:
            raise RemoteError("query has the wrong size", reason=Reason.MALFORMED)
        return Query(_QUERY.unpack_from(body)[0])
    if kind == QUERY_REPLY:
        _need(body, _QUERY.size)
        (query_id,) = _QUERY.unpack_from(body)
        return QueryReply(query_id, decode_recipes(bytes(body[_QUERY.size :])))
    raise RemoteError(f"unknown message kind {kind}", reason=Reason.UNKNOWN_KIND)


def _need(body: memoryview, size: int) -> None:
    if len(body) < size:
        raise RemoteError("message is truncated", reason=Reason.MALFORMED)


def _decode_batch(body: memoryview) -> Batch:
    _need(body, _BATCH.size)
    round_no, batch_no, flags, count = _BATCH.unpack_from(body)
    if count > MAX_BATCH_ENTRIES:
        raise RemoteError(
            f"batch of {count} entries exceeds {MAX_BATCH_ENTRIES}", reason=Reason.OVERSIZED
        )
    offset = _BATCH.size
    entries: list[bytes] = []
    for _ in range(count):
        _need(body, offset + _LEN.size)
        (length,) = _LEN.unpack_from(body, offset)
        offset += _LEN.size
        if length > MAX_ENTRY_BYTES:
            raise RemoteError(
                f"batched entry of {length} bytes is too large", reason=Reason.OVERSIZED
            )
        _need(body, offset + length)
        entries.append(bytes(body[offset : offset + length]))
        offset += length
    if offset != len(body):
        raise RemoteError("batch has trailing bytes", reason=Reason.MALFORMED)
    return Batch(round_no, batch_no, bool(flags & 1), tuple(entries))
