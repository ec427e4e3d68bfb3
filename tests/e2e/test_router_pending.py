"""A message on a pair topic is work for its one other member, not for every peer."""

from __future__ import annotations

import trio

from p2psync.net.host import open_libp2p_host
from tests.e2e.test_libp2p_host import LOOPBACK, loopback_addr, next_event, seed


async def test_a_pair_topic_message_is_queued_for_no_other_peer() -> None:
    pair, other = "p2psync/test/pair/a-b", "p2psync/test/live"
    with trio.fail_after(30):
        async with (
            open_libp2p_host(seed("pend-a"), LOOPBACK, 0) as a,
            open_libp2p_host(seed("pend-b"), LOOPBACK, 0) as b,
            open_libp2p_host(seed("pend-c"), LOOPBACK, 0) as c,
        ):
            for peer in (b, c):
                await a.connect(loopback_addr(peer))
                await next_event(peer, "connected", a.peer_id)
            inbox = await b.subscribe(pair)
            await a.subscribe(pair)
            await c.subscribe(other)
            await a.wait_for_mesh_peer(pair, b.peer_id, 10)
            await a.wait_for_topic_peer(other, c.peer_id, 10)
            for n in range(20):
                assert await a.publish(pair, b"round %d" % n, timeout=5)
            for n in range(20):
                with trio.fail_after(5):
                    assert (await inbox.receive()).data == b"round %d" % n
            # py-libp2p queued each of them for c (connected, not in the
            # topic) for 30 s, in case c subscribed, and walked that queue
            # at every publish.
            assert dict(a._router._pending_messages) == {}
            assert c.peer_id not in a.peers_in_topic(pair)
