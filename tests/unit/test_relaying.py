"""node/relaying.py's RelayKeeper over a scripted relay client (no network).

Bad relays (unreachable, refusing, garbage answers, vanishing) get a
counted event, a backoff, and a retry; members found at the rendezvous
point go to discovery as circuit addresses through that relay.
"""

from __future__ import annotations

import random
import time
from typing import Any

import trio
import trio.testing

from p2psync.core.ids import peer_id_from_seed
from p2psync.net.circuit import DiscoverResult, Registration, RelayError, check_registration
from p2psync.node.observer import NullObserver
from p2psync.node.relaying import (
    BACKOFF_MAX,
    RelayKeeper,
    backoff,
    rendezvous_namespace,
)

RELAY = peer_id_from_seed(b"\x09" * 32)
RELAY_ADDR = f"/ip4/203.0.113.10/tcp/4001/p2p/{RELAY}"
MEMBER = peer_id_from_seed(b"\x01" * 32)


class Events(NullObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def relay_event(self, event: str, n: int = 1) -> None:
        self.events.append((event, n))

    def count(self, event: str) -> int:
        return sum(n for e, n in self.events if e == event)


class ScriptedClient:
    """Fails as scripted, then serves; `drop()` makes the relay vanish."""

    def __init__(
        self,
        failures: list[RelayError],
        garbage: int = 0,
        *,
        register_failures: int = 0,
        discover_failures: int = 0,
        unreserved: frozenset[str] = frozenset(),
    ) -> None:
        self.failures = failures
        self.garbage = garbage
        self.register_failures = register_failures
        self.discover_failures = discover_failures
        self.unreserved_ids = unreserved
        self.connected = False
        self.disconnects = 0
        self.calls: list[str] = []

    async def connect_relay(self, addr: str, timeout: float) -> Any:
        self.calls.append("connect")
        await trio.lowlevel.checkpoint()
        if self.failures and self.failures[0].kind == "unreachable":
            raise self.failures.pop(0)
        self.connected = True
        return RELAY

    async def disconnect_relay(self, relay: Any) -> None:
        self.connected = False
        self.disconnects += 1
        await trio.lowlevel.checkpoint()

    async def reserve(self, relay: Any, timeout: float) -> int:
        self.calls.append("reserve")
        await trio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)
        return int(time.time()) + 3600

    async def register(self, relay: Any, ns: str, addr: str, ttl: int, timeout: float) -> int:
        self.calls.append(f"register {ns}")
        await trio.lowlevel.checkpoint()
        if self.register_failures:
            self.register_failures -= 1
            raise RelayError("refused", "registration refused: namespace full")
        return ttl

    async def unregister(self, relay: Any, ns: str) -> None:
        await trio.lowlevel.checkpoint()

    async def discover(self, relay: Any, ns: str, limit: int, timeout: float) -> DiscoverResult:
        self.calls.append("discover")
        await trio.lowlevel.checkpoint()
        if self.discover_failures:
            self.discover_failures -= 1
            raise RelayError("refused", "rendezvous failed: Response message too large")
        circuit = f"{RELAY_ADDR}/p2p-circuit"
        return DiscoverResult([Registration(MEMBER, (circuit,))], self.garbage)

    def relay_connected(self, relay: Any) -> bool:
        return self.connected

    def unreserved(self, peer_id: str) -> bool:
        return peer_id in self.unreserved_ids


def keeper(client: ScriptedClient, found: list[tuple[str, list[str]]], events: Events) -> Any:
    return RelayKeeper(
        client,  # type: ignore[arg-type]
        (RELAY_ADDR,),
        "kitchen",
        lambda peer, addrs: found.append((peer, addrs)),
        events,
        random.Random(7),
    )


async def test_refused_and_unreachable_relays_back_off_then_members_are_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = ScriptedClient(
        [RelayError("unreachable", "no answer"), RelayError("refused", "PERMISSION_DENIED")],
        garbage=2,
    )
    found: list[tuple[str, list[str]]] = []
    events = Events()
    k = keeper(client, found, events)
    async with trio.open_nursery() as nursery:
        await nursery.start(k.run)
        await trio.sleep(30)
        status = k.status[RELAY_ADDR]
        assert (status.state, status.failures, status.reservations) == ("reserved", 0, 1)
        nursery.cancel_scope.cancel()
    assert events.count("unreachable") == 1 and events.count("refused") == 1
    assert events.count("reserved") == 1
    assert events.count("garbage") >= 2
    assert found and found[0] == (MEMBER, [f"{RELAY_ADDR}/p2p-circuit/p2p/{MEMBER}"])
    assert "register /p2psync/kitchen/v4/members" in client.calls


async def test_a_relay_that_goes_away_is_reserved_on_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = ScriptedClient([])
    events = Events()
    k = keeper(client, [], events)
    async with trio.open_nursery() as nursery:
        await nursery.start(k.run)
        await trio.sleep(12)
        client.connected = False  # the relay restarted: its connection closed
        await trio.sleep(12)
        nursery.cancel_scope.cancel()
    assert events.count("lost") == 1
    assert events.count("reserved") == 2
    assert client.calls.count("reserve") == 2


async def test_a_full_namespace_or_a_broken_discover_keeps_the_reservation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 1000 strangers fill the namespace, or fat registrations push every
    # DISCOVER answer past the message cap: the node stays reserved (reachable
    # by whoever knows it) and retries both after a backoff.
    client = ScriptedClient([], register_failures=3, discover_failures=3)
    found: list[tuple[str, list[str]]] = []
    events = Events()
    k = keeper(client, found, events)
    async with trio.open_nursery() as nursery:
        await nursery.start(k.run)
        await trio.sleep(60)
        status = k.status[RELAY_ADDR]
        assert (status.state, status.reservations) == ("reserved", 1)
        nursery.cancel_scope.cancel()
    assert client.calls.count("reserve") == 1 and client.disconnects == 0
    assert events.count("register_refused") == 3 and events.count("discover_refused") == 3
    assert client.calls.count("register /p2psync/kitchen/v4/members") == 4
    assert found  # discovery recovered


async def test_members_without_a_reservation_are_not_dialed_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = ScriptedClient([], unreserved=frozenset({MEMBER}))
    found: list[tuple[str, list[str]]] = []
    k = keeper(client, found, Events())
    async with trio.open_nursery() as nursery:
        await nursery.start(k.run)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert client.calls.count("discover") >= 5
    assert found == []


def test_backoff_doubles_to_its_ceiling_with_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff(n, rng) for n in range(1, 12)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert all(BACKOFF_MAX / 2 <= d <= BACKOFF_MAX for d in delays[7:])


def test_namespace_carries_network_and_protocol_version() -> None:
    assert rendezvous_namespace("default") == "/p2psync/default/v4/members"


def test_registrations_are_checked_one_by_one() -> None:
    from libp2p.peer.id import ID
    from multiaddr import Multiaddr

    me = ID.from_base58(MEMBER).to_bytes()
    good = Multiaddr(f"{RELAY_ADDR}/p2p-circuit").to_bytes()
    other_relay = peer_id_from_seed(b"\x08" * 32)
    wrong_relay = Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{other_relay}/p2p-circuit").to_bytes()
    assert check_registration(me, [good], RELAY) == Registration(
        MEMBER, (f"{RELAY_ADDR}/p2p-circuit",)
    )
    assert check_registration(me, [], RELAY) is None  # no way to reach it
    assert check_registration(me, [wrong_relay], RELAY) is None
    assert check_registration(me, [b"\x00garbage"], RELAY) is None
    assert check_registration(me, [b"x" * 600], RELAY) is None
    assert check_registration(b"\x00\x03abc", [good], RELAY) is None  # not Ed25519
    assert check_registration(b"\xff" * 40, [good], RELAY) is None


def test_no_reservation_is_recognised_through_py_libp2p_wrapping() -> None:
    from libp2p.relay.circuit_v2.exceptions import RelayConnectionError
    from libp2p.relay.circuit_v2.protocol_buffer import StatusCode

    from p2psync.net.circuit import says_no_reservation

    def wrapped(code: StatusCode) -> Exception:
        try:
            try:
                raise RelayConnectionError(f"status {code}", status_code=code)
            except RelayConnectionError as inner:
                raise ConnectionError(f"Failed to establish relay connection: {inner}") from None
        except ConnectionError as outer:
            return outer

    assert says_no_reservation(wrapped(StatusCode.NO_RESERVATION))
    assert not says_no_reservation(wrapped(StatusCode.PERMISSION_DENIED))
    assert not says_no_reservation(ValueError("boom"))
