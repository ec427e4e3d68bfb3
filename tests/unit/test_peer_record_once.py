"""Our signed peer record goes once per pubsub stream, not in every RPC (issue 13)."""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import trio
from libp2p.pubsub.pb import rpc_pb2

from p2psync.net.libp2p_fixes import RECORD_RESEND_SECONDS, RoutedPubsub


class _Stream:
    """Stands for an INetStream: only its identity matters here."""


def _rpc(record: bytes) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"entry", topicIDs=["t"])])
    rpc.senderRecord = record
    return rpc


async def test_the_record_goes_once_per_stream_again_when_it_changes_or_ages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pubsub = SimpleNamespace(_records_sent=weakref.WeakKeyDictionary())
    once = RoutedPubsub._record_once
    first, second = _Stream(), _Stream()
    shared = _rpc(b"record-1")

    assert once(pubsub, first, shared).senderRecord == b"record-1"  # type: ignore[arg-type]
    lean = once(pubsub, first, shared)  # type: ignore[arg-type]
    assert not lean.HasField("senderRecord")
    assert list(lean.publish) == list(shared.publish)
    # py-libp2p writes one RPC object to several peers: never changed in place.
    assert shared.senderRecord == b"record-1"
    # Another stream (another peer, or a reconnect) gets it once too.
    assert once(pubsub, second, shared).senderRecord == b"record-1"  # type: ignore[arg-type]
    # New addresses make a new record: it goes out at once.
    assert once(pubsub, first, _rpc(b"record-2")).senderRecord == b"record-2"  # type: ignore[arg-type]
    assert not once(pubsub, first, _rpc(b"record-2")).HasField("senderRecord")  # type: ignore[arg-type]
    # Receivers keep it 2 h: it is sent again long before that.
    await trio.sleep(RECORD_RESEND_SECONDS)
    assert once(pubsub, first, _rpc(b"record-2")).senderRecord == b"record-2"  # type: ignore[arg-type]


async def test_an_rpc_without_a_record_passes_unchanged() -> None:
    pubsub = SimpleNamespace(_records_sent=weakref.WeakKeyDictionary())
    rpc = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"x")])
    assert RoutedPubsub._record_once(pubsub, _Stream(), rpc) is rpc  # type: ignore[arg-type]
