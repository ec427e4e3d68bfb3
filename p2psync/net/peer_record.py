"""Our signed peer record once per pubsub stream, not in every RPC.

py-libp2p puts our signed peer record (a 213-byte ``libp2p-peer-record``
envelope) in every pubsub RPC, and a py-libp2p receiver opens and checks it
each time (108 us of CPU here): a third of a flood's bytes and the dearest
step of a small RPC. The field is optional in gossipsub (go and js ignore it;
py-libp2p reads stored records only for peer exchange, which we do not use),
so a stream carries it in py-libp2p's hello, and again only when it changes
(new addresses) or after ``RESEND_SECONDS`` (receivers keep it 2 h).
"""

from __future__ import annotations

import weakref

from libp2p.abc import INetStream
from libp2p.pubsub.pb import rpc_pb2

RESEND_SECONDS = 600.0


class RecordOnce:
    """Which record each stream carried, and when."""

    def __init__(self) -> None:
        self._sent: weakref.WeakKeyDictionary[INetStream, tuple[bytes, float]] = (
            weakref.WeakKeyDictionary()
        )

    def carried(self, stream: INetStream, record: bytes, now: float, *, hello: bool) -> bool:
        """Did `stream` carry `record` lately? `hello`: py-libp2p wrote its
        hello to it (record included) before registering it, so it did if
        this is the first time we ask."""
        sent = self._sent.get(stream)
        if sent is None and hello:
            sent = self._sent[stream] = (record, now)
        return sent is not None and sent[0] == record and now - sent[1] < RESEND_SECONDS

    def written(self, stream: INetStream, record: bytes, now: float) -> None:
        """`stream` carried `record` (noted only once the write succeeded)."""
        self._sent[stream] = (record, now)


def without_record(rpc: rpc_pb2.RPC) -> rpc_pb2.RPC:
    """A copy of `rpc` without the record: py-libp2p writes one RPC object to
    several peers, so it is never changed in place."""
    lean = rpc_pb2.RPC()
    lean.CopyFrom(rpc)
    lean.ClearField("senderRecord")
    return lean
