"""A subscription made while a peer is being registered still reaches that peer."""

from __future__ import annotations

from typing import Any

import trio

from p2psync.net.host import open_libp2p_host
from tests.e2e.test_libp2p_host import LOOPBACK, loopback_addr, next_event, seed


class _HeldHello:
    """A pubsub stream whose first write (py-libp2p's hello) waits for ``release``."""

    def __init__(self, inner: Any, writing: trio.Event, release: trio.Event) -> None:
        self._inner, self._writing, self._release = inner, writing, release
        self._first = True

    async def write(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._writing.set()
            await self._release.wait()
        await self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_topic_subscribed_during_the_hello_is_announced_to_the_peer() -> None:
    topic = "p2psync/test/late"
    with trio.fail_after(30):
        async with (
            open_libp2p_host(seed("race-a"), LOOPBACK, 0) as a,
            open_libp2p_host(seed("race-c"), LOOPBACK, 0) as c,
        ):
            writing, release = trio.Event(), trio.Event()
            c_host = c._pubsub.host
            new_stream = c_host.new_stream

            async def held_new_stream(*args: Any, **kwargs: Any) -> Any:
                return _HeldHello(await new_stream(*args, **kwargs), writing, release)

            c_host.new_stream = held_new_stream  # type: ignore[method-assign]
            await a.connect(loopback_addr(c))
            await next_event(c, "connected", a.peer_id)
            await writing.wait()  # c built its hello (no topics) and is writing it
            await c.subscribe(topic)  # announced to registered peers: a is not yet
            release.set()
            # py-libp2p: a never heard of it (TooSlowError after 10 s).
            await a.wait_for_topic_peer(topic, c.peer_id, 10)


async def test_a_topic_dropped_during_the_hello_is_dropped_at_the_peer() -> None:
    topic, steady = "p2psync/test/brief", "p2psync/test/steady"
    with trio.fail_after(30):
        async with (
            open_libp2p_host(seed("race2-a"), LOOPBACK, 0) as a,
            open_libp2p_host(seed("race2-c"), LOOPBACK, 0) as c,
        ):
            await c.subscribe(steady)
            opening, go_on = trio.Event(), trio.Event()
            writing, release = trio.Event(), trio.Event()
            c_host = c._pubsub.host
            new_stream = c_host.new_stream

            async def held_new_stream(peer: Any, protocols: Any, *args: Any, **kw: Any) -> Any:
                if not any(str(p).startswith("/meshsub/") for p in protocols):
                    return await new_stream(peer, protocols, *args, **kw)  # identify
                if not opening.is_set():  # pubsub's stream: its hello is not built yet
                    opening.set()
                    await go_on.wait()
                return _HeldHello(await new_stream(peer, protocols, *args, **kw), writing, release)

            c_host.new_stream = held_new_stream  # type: ignore[method-assign]
            await a.connect(loopback_addr(c))
            await next_event(c, "connected", a.peer_id)
            await opening.wait()
            await c.subscribe(topic)  # before the hello is built: the hello names it
            go_on.set()
            await writing.wait()
            await c.unsubscribe(topic)  # announced to registered peers: a is not yet
            release.set()
            await a.wait_for_topic_peer(steady, c.peer_id, 10)  # the hello arrived
            with trio.fail_after(10):  # it named ``topic``; the catch-up drops it
                while c.peer_id in a.peers_in_topic(topic):
                    await trio.sleep(0.05)
