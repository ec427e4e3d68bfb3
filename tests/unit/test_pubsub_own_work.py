"""Work py-libp2p did on every message that decided nothing (issue 13).

- The router asked a peer scorer built with default parameters (every weight
  0, every threshold -inf) on every message and for every mesh peer.
- Our own publication went through the checks meant for a message from
  elsewhere: the signature just made was verified again (about 90 us).
"""

from __future__ import annotations

import secrets
from types import SimpleNamespace
from typing import Any

import libp2p.pubsub.pubsub as pubsub_module
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import signature_validator
from libp2p.utils.varint import encode_uvarint

from p2psync.net.libp2p_fixes import RoutedPubsub
from p2psync.net.router import new_gossipsub


def test_the_router_does_not_score_peers() -> None:
    # With py-libp2p's default scorer nothing was ever gated (thresholds
    # -inf), yet each message paid for the gates and each heartbeat decayed
    # every peer's counters. Every call site checks `scorer is not None`.
    router = new_gossipsub(on_drop=lambda reason, count: None)
    assert router.scorer is None


async def test_our_own_publication_is_signed_delivered_and_routed_without_reverifying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = new_host(key_pair=create_new_key_pair(secrets.token_bytes(32)))
    router = new_gossipsub(on_drop=lambda reason, count: None)
    delivered: list[rpc_pb2.Message] = []
    pubsub = RoutedPubsub(
        host,
        router,
        deliver=delivered.append,
        on_bad_stream=lambda peer, reason: None,
        strict_signing=True,
    )
    routed: list[tuple[Any, rpc_pb2.Message]] = []

    async def route(forwarder: Any, msg: rpc_pb2.Message) -> None:
        routed.append((forwarder, msg))

    monkeypatch.setattr(router, "publish", route)
    verified: list[rpc_pb2.Message] = []
    real_validator = pubsub_module.signature_validator

    def counting_validator(msg: rpc_pb2.Message) -> bool:
        verified.append(msg)
        return real_validator(msg)

    monkeypatch.setattr(pubsub_module, "signature_validator", counting_validator)

    await pubsub.publish("topic", b"hello")
    await pubsub.publish("topic", b"again")

    assert verified == []  # py-libp2p's push_msg verified each one it had just signed
    assert [msg.data for _, msg in routed] == [b"hello", b"again"]
    assert all(forwarder == host.get_id() for forwarder, _ in routed)
    first, second = (msg for _, msg in routed)
    assert signature_validator(first) and signature_validator(second)  # peers will accept them
    assert first.from_id == host.get_id().to_bytes()
    assert int.from_bytes(second.seqno, "big") == int.from_bytes(first.seqno, "big") + 1
    assert pubsub._is_msg_seen(first)  # a copy forwarded back to us is a duplicate
    assert delivered == [first, second]


class _Conn:
    def __init__(self, peer: Any) -> None:
        self.peer_id = peer


class _OneRpcStream:
    def __init__(self, peer: Any, rpc: rpc_pb2.RPC) -> None:
        self.muxed_conn = _Conn(peer)
        body = rpc.SerializeToString()
        self._chunks = [encode_uvarint(len(body)) + body]
        self.was_reset = False

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._chunks.pop(0) if self._chunks else b""

    async def reset(self) -> None:
        self.was_reset = True


async def test_a_message_that_makes_py_libp2p_raise_costs_its_sender_the_stream_not_pubsub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An unparsable key makes py-libp2p's signature check raise. In its
    # per-message task the error cancelled the whole pubsub service (a
    # throwaway key could take every node's gossip down); handled in line, it
    # reaches RoutedPubsub's read loop guard: that stream is reset and the
    # owner told, who disconnects the sender.
    host = new_host(key_pair=create_new_key_pair(secrets.token_bytes(32)))
    bad: list[tuple[Any, str]] = []
    pubsub = RoutedPubsub(
        host,
        new_gossipsub(on_drop=lambda reason, count: None),
        deliver=lambda msg: None,
        on_bad_stream=lambda peer, reason: bad.append((peer, reason)),
        strict_signing=True,
    )

    def spawn(*args: Any) -> None:  # py-libp2p's way: an error there cancelled the service
        raise AssertionError("a task spawned for a message")

    manager = SimpleNamespace(is_running=True, run_task=spawn)
    monkeypatch.setattr(pubsub, "_manager", manager, raising=False)
    monkeypatch.setattr(pubsub, "_is_subscribed_to_msg", lambda msg: True)
    sender = new_host(key_pair=create_new_key_pair(secrets.token_bytes(32))).get_id()
    garbage = rpc_pb2.Message(
        data=b"x", topicIDs=["t"], from_id=b"\x01garbage", seqno=b"\x00" * 8, key=b"\xff\x00"
    )
    garbage.signature = b"s" * 64
    stream = _OneRpcStream(sender, rpc_pb2.RPC(publish=[garbage]))
    await pubsub.continuously_read_stream(stream)  # type: ignore[arg-type]
    assert stream.was_reset
    assert bad == [(sender, "DecodeError")]


def _signed(key_pair: Any, seqno: int, data: bytes) -> rpc_pb2.Message:
    msg = rpc_pb2.Message(
        data=data,
        topicIDs=["t"],
        from_id=ID.from_pubkey(key_pair.public_key).to_bytes(),
        seqno=seqno.to_bytes(8, "big"),
    )
    msg.signature = key_pair.private_key.sign(b"libp2p-pubsub:" + msg.SerializeToString())
    msg.key = key_pair.public_key.serialize()
    return msg


async def test_a_message_id_used_again_for_other_content_is_validated_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The id is (publisher, seqno), the publisher's to choose. py-libp2p kept
    # a valid verdict under it for 300 s and skipped the validators on a hit,
    # while the seen cache forgets the id 120 s after it was last seen: in
    # between, the publisher could send anything under the old id and every
    # node would pass it on unchecked.
    host = new_host(key_pair=create_new_key_pair(secrets.token_bytes(32)))
    router = new_gossipsub(on_drop=lambda reason, count: None)
    delivered: list[bytes] = []
    pubsub = RoutedPubsub(
        host,
        router,
        deliver=lambda msg: delivered.append(msg.data),
        on_bad_stream=lambda peer, reason: None,
        strict_signing=True,
    )

    async def route(forwarder: Any, msg: rpc_pb2.Message) -> None:
        return None

    monkeypatch.setattr(router, "publish", route)
    checked: list[bytes] = []

    def validator(forwarder: Any, msg: rpc_pb2.Message) -> bool:
        checked.append(msg.data)
        return msg.data.startswith(b"good")

    pubsub.set_topic_validator("t", validator, False)
    publisher = create_new_key_pair(secrets.token_bytes(32))
    relay = new_host(key_pair=create_new_key_pair(secrets.token_bytes(32))).get_id()

    await pubsub.push_msg(relay, _signed(publisher, 7, b"good entry"))
    pubsub.seen_messages.cache.clear()  # as 120 s without a copy would
    await pubsub.push_msg(relay, _signed(publisher, 7, b"forged entry"))

    assert checked == [b"good entry", b"forged entry"]
    assert delivered == [b"good entry"]
