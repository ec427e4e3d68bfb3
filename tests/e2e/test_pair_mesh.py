"""A pair (sync) topic's mesh is its two members: nobody else gets in."""

from __future__ import annotations

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from p2psync.net.host import open_libp2p_host
from p2psync.net.topics import pair_members, sync_topic
from tests.e2e.test_libp2p_host import LOOPBACK, loopback_addr, next_event, seed


def test_pair_members_reads_a_sync_topic_and_nothing_else() -> None:
    topic = sync_topic("home", "12D3KooWB", "12D3KooWA")
    assert pair_members(topic) == ("12D3KooWA", "12D3KooWB")
    assert pair_members("/p2psync/home/v3/live") is None
    assert pair_members("/p2psync/home/v3/query") is None
    assert pair_members(topic + "/more") is None
    assert pair_members("/other/home/v3/sync/a/b") is None


async def test_a_third_peer_cannot_join_a_pair_topic_mesh() -> None:
    with trio.fail_after(40):
        async with (
            open_libp2p_host(seed("pair-a"), LOOPBACK, 0) as a,
            open_libp2p_host(seed("pair-b"), LOOPBACK, 0) as b,
            open_libp2p_host(seed("pair-c"), LOOPBACK, 0) as c,
        ):
            topic = sync_topic("home", a.peer_id, b.peer_id)
            for other in (b, c):
                await a.connect(loopback_addr(other))
                await next_event(other, "connected", a.peer_id)
            b_inbox = await b.subscribe(topic)
            c_inbox = await c.subscribe(topic)  # c is not one of the pair
            await a.subscribe(topic)
            await a.wait_for_mesh_peer(topic, b.peer_id, 10)
            # c announced the topic and its heartbeat GRAFTs a (a is the only
            # subscriber it knows); give both a few heartbeats.
            await c.wait_for_topic_peer(topic, a.peer_id, 10)
            await trio.sleep(3)
            c_id = ID.from_base58(c.peer_id)
            await a._router.handle_graft(rpc_pb2.ControlGraft(topicID=topic), c_id)
            assert a.mesh_peers(topic) == [b.peer_id]
            assert a.peers_in_topic(topic) == [b.peer_id]
            assert await a.publish(topic, b"backfill for b", timeout=5)
            with trio.fail_after(5):
                assert (await b_inbox.receive()).data == b"backfill for b"
            with trio.move_on_after(2):
                leaked = await c_inbox.receive()
                raise AssertionError(f"c got a's sync message to b: {leaked.data!r}")
