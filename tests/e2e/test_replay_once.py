"""A peer that subscribes is sent a topic's cached window once per connection,
however often it unsubscribes and subscribes again."""

from __future__ import annotations

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from p2psync.net.host import open_libp2p_host
from tests.e2e.test_libp2p_host import LOOPBACK, seed
from tests.e2e.test_router_publish import meshed_pair


async def test_resubscribing_does_not_replay_the_window_again() -> None:
    topic = "p2psync/test/replay"
    with trio.fail_after(30):
        async with (
            open_libp2p_host(seed("replay-a"), LOOPBACK, 0) as a,
            open_libp2p_host(seed("replay-b"), LOOPBACK, 0) as b,
        ):
            await meshed_pair(a, b, topic)
            a._router.mcache.shift = lambda: None  # type: ignore[method-assign]
            for n in range(5):
                assert await a.publish(topic, b"op %d" % n, timeout=5)
            replays: list[str] = []
            real = a._router.send_recent_messages

            async def counted(peer: ID, wanted: str) -> None:
                replays.append(wanted)
                await real(peer, wanted)

            a._router.send_recent_messages = counted  # type: ignore[method-assign]
            peer = ID.from_base58(b.peer_id)
            for subscribe in (True, False, True, False, True):
                # What b's RPCs say, as a peer looping UNSUBSCRIBE/SUBSCRIBE would.
                a._pubsub.handle_subscription(
                    peer, rpc_pb2.RPC.SubOpts(subscribe=subscribe, topicid=topic)
                )
                await trio.sleep(0.1)  # the replay runs as a task of its own
            # py-libp2p replayed the window at each SUBSCRIBE after an
            # UNSUBSCRIBE (twice here, with 5 messages each time); b's first
            # subscription, when they met, already had its replay.
            assert replays == []
