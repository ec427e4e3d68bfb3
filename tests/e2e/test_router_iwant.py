"""What an IWANT gets: each wanted message once, within bounds, and a pair
topic's messages only for that pair's other member."""

from __future__ import annotations

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.mcache import default_msg_id_fn
from libp2p.pubsub.pb import rpc_pb2

from p2psync.net.host import Libp2pHost, open_libp2p_host
from p2psync.net.router import IWANT_ANSWER_BYTES, IWANT_ANSWER_MESSAGES
from p2psync.net.topics import sync_topic
from tests.e2e.test_libp2p_host import LOOPBACK, seed

NETWORK = "default"


def stranger() -> ID:
    return ID.from_pubkey(create_new_key_pair().public_key)


def cached(host: Libp2pHost, topic: str, seqno: int, size: int = 300) -> bytes:
    """Put a message in the host's gossip cache; its id as an IWANT names it."""
    msg = rpc_pb2.Message(
        from_id=ID.from_base58(host.peer_id).to_bytes(),
        seqno=seqno.to_bytes(8, "big"),
        data=b"x" * size,
        topicIDs=[topic],
    )
    host._router.mcache.put(msg)
    return default_msg_id_fn(msg)


def answers(host: Libp2pHost) -> list[tuple[ID, rpc_pb2.RPC]]:
    """What the router sends from now on (instead of sending it)."""
    sent: list[tuple[ID, rpc_pb2.RPC]] = []
    host._router.send_rpc = lambda peer, rpc, priority=False: sent.append((peer, rpc))  # type: ignore[method-assign]
    return sent


async def test_a_message_named_many_times_is_sent_once() -> None:
    with trio.fail_after(30):
        async with open_libp2p_host(seed("iwant-a"), LOOPBACK, 0) as a:
            mid = cached(a, "p2psync/test/live", 1)
            sent = answers(a)
            asker = stranger()
            # py-libp2p answered 5 000 copies of the one message.
            await a._router.handle_iwant(rpc_pb2.ControlIWant(messageIDs=[mid] * 5000), asker)
            ((to, rpc),) = sent
            assert to == asker and len(rpc.publish) == 1


async def test_an_answer_stays_within_its_bounds() -> None:
    with trio.fail_after(30):
        async with open_libp2p_host(seed("iwant-b"), LOOPBACK, 0) as a:
            many = [cached(a, "p2psync/test/live", n) for n in range(IWANT_ANSWER_MESSAGES + 50)]
            big = [cached(a, "p2psync/test/big", 10_000 + n, size=17_000) for n in range(60)]
            sent = answers(a)
            await a._router.handle_iwant(rpc_pb2.ControlIWant(messageIDs=many), stranger())
            await a._router.handle_iwant(rpc_pb2.ControlIWant(messageIDs=big), stranger())
            (_, small_answer), (_, big_answer) = sent
            assert len(small_answer.publish) == IWANT_ANSWER_MESSAGES
            assert 0 < len(big_answer.publish) < 60
            assert big_answer.ByteSize() <= IWANT_ANSWER_BYTES + 17_000 + 1024


async def test_a_pair_topic_message_goes_only_to_the_other_member() -> None:
    with trio.fail_after(30):
        async with open_libp2p_host(seed("iwant-c"), LOOPBACK, 0) as a:
            member = stranger()
            topic = sync_topic(NETWORK, a.peer_id, member.to_base58())
            mid = cached(a, topic, 1)
            sent = answers(a)
            await a._router.handle_iwant(rpc_pb2.ControlIWant(messageIDs=[mid]), stranger())
            assert sent == []  # anyone else who guessed the id gets nothing
            await a._router.handle_iwant(rpc_pb2.ControlIWant(messageIDs=[mid]), member)
            ((to, rpc),) = sent
            assert to == member and len(rpc.publish) == 1
