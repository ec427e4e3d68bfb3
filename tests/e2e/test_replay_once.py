"""A peer that subscribes is sent a topic's cached window once per connection,
however often it unsubscribes and subscribes again."""

from __future__ import annotations

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from tests.e2e.test_pubsub_send import open_host
from tests.e2e.test_router_publish import meshed_pair


async def test_resubscribing_does_not_replay_the_window_again() -> None:
    topic = "p2psync/test/replay"
    with trio.fail_after(30):
        async with open_host("replay-a") as a, open_host("replay-b") as b:
            replays: list[str] = []
            real = a._router.send_recent_messages

            async def counted(peer: ID, wanted: str) -> None:
                replays.append(wanted)
                await real(peer, wanted)

            a._router.send_recent_messages = counted  # type: ignore[method-assign]
            await meshed_pair(a, b, topic)
            await trio.sleep(0.1)  # a replay runs as a task of its own
            assert replays == [topic]  # b's subscription, when they met
            peer = ID.from_base58(b.peer_id)
            for subscribe in (False, True, False, True):
                # What b's RPCs say, as a peer looping UNSUBSCRIBE/SUBSCRIBE would.
                a._pubsub.handle_subscription(
                    peer, rpc_pb2.RPC.SubOpts(subscribe=subscribe, topicid=topic)
                )
                await trio.sleep(0.1)
            # py-libp2p replayed the window at each SUBSCRIBE after an
            # UNSUBSCRIBE: twice more here.
            assert replays == [topic]
