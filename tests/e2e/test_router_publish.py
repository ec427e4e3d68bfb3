"""What the router keeps after forwarding: nothing per message beyond its caches."""

from __future__ import annotations

import trio

from p2psync.net.host import open_libp2p_host
from tests.e2e.test_libp2p_host import LOOPBACK, loopback_addr, next_event, seed


async def test_forwarding_keeps_no_timestamp_or_copy_per_message() -> None:
    topic = "p2psync/test/live"
    with trio.fail_after(30):
        async with (
            open_libp2p_host(seed("keep-a"), LOOPBACK, 0) as a,
            open_libp2p_host(seed("keep-b"), LOOPBACK, 0) as b,
            open_libp2p_host(seed("keep-c"), LOOPBACK, 0) as c,
        ):
            # a - b - c in a line: b forwards what a publishes to c.
            await a.connect(loopback_addr(b))
            await b.connect(loopback_addr(c))
            await next_event(b, "connected", a.peer_id)
            await next_event(c, "connected", b.peer_id)
            inbox = await c.subscribe(topic)
            await b.subscribe(topic)
            await a.subscribe(topic)
            await a.wait_for_mesh_peer(topic, b.peer_id, 10)
            await b.wait_for_mesh_peer(topic, c.peer_id, 10)
            for n in range(30):
                assert await a.publish(topic, b"op %d" % n, timeout=5)
            for n in range(30):
                with trio.fail_after(5):
                    assert (await inbox.receive()).data == b"op %d" % n
            for host in (a, b):
                # py-libp2p appended a timestamp per message that only its
                # adaptive gossip (off here) ever pruned, and kept up to
                # 1 000 whole messages for an equivocation check.
                assert sum(map(len, host._router.recent_message_deliveries.values())) == 0
                assert host._router.equivocation_detection == {}
                # The message cache still serves IWANT: gossip repair needs it.
                assert len(host._router.mcache.window(topic)) == 30
