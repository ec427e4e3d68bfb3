"""PeerDriver carries out the policy's dials: a flood of discovered peers is
dialed a few at a time, not all at once (fresh peer ids cost nothing)."""

from __future__ import annotations

import random
from typing import cast

import trio
import trio.testing
from nacl.signing import SigningKey

from p2psync.core.ids import peer_id_from_public_key
from p2psync.core.peer_policy import PeerPolicy
from p2psync.net.host import ConnectError, Libp2pHost
from p2psync.net.topics import live_topic
from p2psync.node.dialing import (
    MAX_CONCURRENT_DIALS,
    NETWORK_WAIT,
    NETWORK_WAIT_SILENT,
    PeerDriver,
)
from p2psync.node.observer import NullObserver


def pid(i: int) -> str:
    return peer_id_from_public_key(bytes(SigningKey((i + 1).to_bytes(32)).verify_key))


def _driver(host: object, policy: PeerPolicy, nursery: trio.Nursery) -> PeerDriver:
    return PeerDriver(
        cast(Libp2pHost, host),
        policy,
        NullObserver(),
        nursery,
        start_session=lambda peer: None,
        stop_session=lambda peer: None,
    )


class SlowUnreachableHost:
    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.dials = 0

    async def connect(self, addr: str, *, timeout: float | None = None) -> str:
        self.in_flight += 1
        self.dials += 1
        self.most = max(self.most, self.in_flight)
        try:
            await trio.sleep(1.0)
            raise ConnectError(f"{addr}: timed out")
        finally:
            self.in_flight -= 1

    def connected_peers(self) -> list[str]:
        return []


def test_a_flood_of_discovered_peers_is_dialed_a_few_at_a_time() -> None:
    host = SlowUnreachableHost()
    policy = PeerPolicy(pid(0), random.Random(1))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            driver = _driver(host, policy, nursery)
            for i in range(1, 201):
                peer = pid(i)
                driver.run(
                    policy.discovered(peer, [f"/ip4/10.9.0.1/tcp/4001/p2p/{peer}"], "mdns", 0.0)
                )
            driver.run(policy.tick(5.0))  # the tie-break delay of the larger ids
            await trio.sleep(60)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert host.dials == 200
    assert host.most == MAX_CONCURRENT_DIALS


class SubscribingHost:
    """A connected peer whose subscriptions arrive at `arrive_at` (trio time)."""

    def __init__(self, peer: str, topics: list[str], arrive_at: float) -> None:
        self.peer, self.topics, self.arrive_at = peer, topics, arrive_at

    def connected_peers(self) -> list[str]:
        return [self.peer]

    def topics_of(self, peer_id: str) -> list[str]:
        return self.topics if trio.current_time() >= self.arrive_at else []

    async def disconnect(self, peer_id: str) -> None:
        pass


def _learn(topics: list[str], arrive_at: float) -> tuple[PeerPolicy, str, float]:
    peer = pid(1)
    host = SubscribingHost(peer, topics, arrive_at)
    policy = PeerPolicy(pid(0), random.Random(1), network="home")
    decided: list[float] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            driver = _driver(host, policy, nursery)
            policy.connected(peer, None, 0.0)
            await driver.learn_network(peer, "home")
            decided.append(trio.current_time())
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return policy, peer, decided[0]


def test_a_peer_whose_subscriptions_are_slow_to_come_is_still_ours() -> None:
    # A loaded machine, or a pubsub stream retried with backoff: 30 s of silence.
    policy, peer, at = _learn([live_topic("home")], arrive_at=30.0)
    assert not policy.foreign(peer, at) and 30.0 <= at < 31.0


def test_another_application_is_judged_after_a_grace_and_a_silent_one_later() -> None:
    policy, peer, at = _learn(["/chat/room-1"], arrive_at=0.0)
    assert policy.foreign(peer, at) and NETWORK_WAIT <= at < NETWORK_WAIT + 1
    policy, peer, at = _learn([], arrive_at=0.0)
    assert policy.foreign(peer, at) and NETWORK_WAIT_SILENT <= at < NETWORK_WAIT_SILENT + 1


def test_another_p2psync_network_is_known_at_once() -> None:
    policy, peer, at = _learn([live_topic("work")], arrive_at=2.0)
    assert policy.foreign(peer, at) and 2.0 <= at < 2.5
