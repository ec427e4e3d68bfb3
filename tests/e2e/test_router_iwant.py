"""What an IWANT gets: each wanted message once, within bounds, and a pair
topic's messages only for that pair's other member."""

from __future__ import annotations

import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.mcache import default_msg_id_fn
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import OutBoundQueueSize, RpcQueue

from p2psync.net.host import Libp2pHost
from p2psync.net.router import IWANT_ANSWER_BYTES, IWANT_ANSWER_MESSAGES
from p2psync.net.topics import sync_topic
from tests.e2e.test_pubsub_send import open_host

NETWORK = "default"


def stranger(host: Libp2pHost | None = None) -> ID:
    """A made-up peer; registered with `host`'s pubsub (a queue of its own), as
    a connected peer is, if given."""
    peer = ID.from_pubkey(create_new_key_pair().public_key)
    if host is not None:
        host._pubsub.peer_queues[peer] = RpcQueue()
    return peer


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


async def ask(host: Libp2pHost, ids: list[bytes], asker: ID) -> None:
    """`asker`'s IWANT for `ids` reaches `host`'s router."""
    await host._router.handle_iwant(rpc_pb2.ControlIWant(messageIDs=ids), asker)


def answers(host: Libp2pHost) -> list[tuple[ID, rpc_pb2.RPC]]:
    """What the router sends from now on (instead of sending it)."""
    sent: list[tuple[ID, rpc_pb2.RPC]] = []
    host._router.send_rpc = lambda peer, rpc, priority=False: sent.append((peer, rpc))  # type: ignore[method-assign]
    return sent


async def test_a_message_named_many_times_is_sent_once() -> None:
    with trio.fail_after(30):
        async with open_host("iwant-a") as a:
            mid = cached(a, "p2psync/test/live", 1)
            sent = answers(a)
            asker = stranger(a)
            # py-libp2p answered 5 000 copies of the one message.
            await ask(a, [mid] * 5000, asker)
            ((to, rpc),) = sent
            assert to == asker and len(rpc.publish) == 1


async def test_an_answer_stays_within_its_bounds() -> None:
    with trio.fail_after(30):
        async with open_host("iwant-b") as a:
            many = [cached(a, "p2psync/test/live", n) for n in range(IWANT_ANSWER_MESSAGES + 50)]
            big = [cached(a, "p2psync/test/big", 10_000 + n, size=17_000) for n in range(60)]
            sent = answers(a)
            await ask(a, many, stranger(a))
            await ask(a, big, stranger(a))
            (_, small_answer), (_, big_answer) = sent
            assert len(small_answer.publish) == IWANT_ANSWER_MESSAGES
            assert 0 < len(big_answer.publish) < 60
            assert big_answer.ByteSize() <= IWANT_ANSWER_BYTES + 17_000 + 1024


async def test_a_pair_topic_message_goes_only_to_the_other_member() -> None:
    with trio.fail_after(30):
        async with open_host("iwant-c") as a:
            member = stranger(a)
            topic = sync_topic(NETWORK, a.peer_id, member.to_base58())
            mid = cached(a, topic, 1)
            sent = answers(a)
            await ask(a, [mid], stranger(a))
            assert sent == []  # anyone else who guessed the id gets nothing
            await ask(a, [mid], member)
            ((to, rpc),) = sent
            assert to == member and len(rpc.publish) == 1


async def test_ids_we_do_not_hold_use_no_room_and_one_id_counts_once() -> None:
    with trio.fail_after(30):
        async with open_host("iwant-d") as a:
            held = [cached(a, "p2psync/test/live", n) for n in range(3)]
            unknown = [b"\x07" + n.to_bytes(45, "big") for n in range(IWANT_ANSWER_MESSAGES)]
            as_text = held[0].hex().encode()  # py-libp2p peers write ids as hex text
            sent = answers(a)
            ids = [*unknown, as_text, *held]
            await ask(a, ids, stranger(a))
            ((_, rpc),) = sent
            assert len(rpc.publish) == 3


async def test_a_peer_that_does_not_read_or_asks_too_often_gets_nothing() -> None:
    with trio.fail_after(30):
        async with open_host("iwant-e") as a:
            mid = cached(a, "p2psync/test/live", 1)
            sent = answers(a)
            stalled = stranger(a)
            for _ in range(OutBoundQueueSize):
                a._pubsub.peer_queues[stalled].push(rpc_pb2.RPC())
            await ask(a, [mid], stalled)
            assert sent == []
            eager = stranger(a)
            for _ in range(11):  # py-libp2p's limit: 10 a second
                await ask(a, [mid], eager)
            assert len(sent) == 10


async def test_each_answer_lets_other_tasks_run() -> None:
    """One RPC may carry several IWANTs, answered in a row: each answer yields."""
    with trio.fail_after(30):
        async with open_host("iwant-f") as a:
            mid = cached(a, "p2psync/test/live", 1)
            answers(a)
            with trio.testing.assert_checkpoints():
                await ask(a, [mid], stranger(a))
