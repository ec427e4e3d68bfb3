"""net/rendezvous_point.py's bounds, driven with messages (no network).

Each test is an abuse py-libp2p's RendezvousService let through: a long
TTL, fat or foreign addresses, one key in many namespaces, registrations
without a reservation, answers past the message cap, strangers registered
first hiding the members.
"""

from __future__ import annotations

from typing import Any

import multiaddr
from libp2p.discovery.rendezvous.messages import create_discover_message
from libp2p.discovery.rendezvous.pb.rendezvous_pb2 import Message
from libp2p.peer.id import ID

from p2psync.core.ids import peer_id_from_seed
from p2psync.net.rendezvous_point import BoundedRendezvous, RendezvousLimits

RELAY = peer_id_from_seed(b"\x09" * 32)
RELAY_ADDR = f"/ip4/203.0.113.10/tcp/4001/p2p/{RELAY}"
NS = "/p2psync/kitchen/v4/members"
OK = Message.ResponseStatus.OK


class FakeHost:
    def set_stream_handler(self, protocol: Any, handler: Any) -> None:
        pass


def peer(k: int) -> ID:
    return ID.from_base58(peer_id_from_seed(bytes([k % 256, k // 256]) + b"\x00" * 30))


def point(reserved: set[ID] | None = None, **limits: Any) -> BoundedRendezvous:
    return BoundedRendezvous(
        FakeHost(),  # type: ignore[arg-type]
        RELAY,
        1024,
        RendezvousLimits(**limits),
        admit=lambda _peer: True,
        may_register=(lambda _p: True) if reserved is None else reserved.__contains__,
    )


def register(
    rdv: BoundedRendezvous, who: ID, ns: str = NS, ttl: int = 600, addrs: list[bytes] | None = None
) -> Message.RegisterResponse:
    message = Message()
    message.register.ns = ns
    message.register.ttl = ttl
    message.register.peer.id = who.to_bytes()
    if addrs is None:
        addrs = [multiaddr.Multiaddr(f"{RELAY_ADDR}/p2p-circuit").to_bytes()]
    message.register.peer.addrs.extend(addrs)
    answer: Message = rdv._handle_register(who, message.register)
    return answer.registerResponse


def discover(rdv: BoundedRendezvous, limit: int = 200, cookie: bytes = b"") -> Any:
    asker = peer(999)
    return rdv._handle_discover(asker, create_discover_message(NS, limit, cookie).discover)


def test_ttl_is_clamped_to_twice_what_nodes_ask() -> None:
    rdv = point()
    answer = register(rdv, peer(1), ttl=72 * 3600)
    assert answer.status == OK and answer.ttl == 1200
    record = rdv.registrations[NS][peer(1)]
    assert record.expires_at - record.registered_at == 1200


def test_fat_many_or_foreign_addresses_are_refused() -> None:
    rdv = point()
    circuit = multiaddr.Multiaddr(f"{RELAY_ADDR}/p2p-circuit").to_bytes()
    fat = multiaddr.Multiaddr("/unix/" + "a" * 1900).to_bytes()
    other = peer_id_from_seed(b"\x08" * 32)
    foreign = multiaddr.Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{other}/p2p-circuit").to_bytes()
    for addrs in ([fat], [circuit] * 9, [foreign], [], [b"\x00junk"]):
        assert register(rdv, peer(1), addrs=addrs).status != OK
    assert rdv.registrations == {}
    assert register(rdv, peer(1), addrs=[circuit] * 8).status == OK


def test_one_key_gets_a_few_members_namespaces_only() -> None:
    rdv = point()
    assert register(rdv, peer(1), ns="/ns/0").status == Message.ResponseStatus.E_INVALID_NAMESPACE
    results = [register(rdv, peer(1), ns=f"/p2psync/n{k}/v4/members").status for k in range(10)]
    assert results[:4] == [OK] * 4 and OK not in results[4:]
    assert rdv.namespaces_of(peer(1)) == 4
    assert register(rdv, peer(1), ns="/p2psync/n0/v4/members").status == OK  # renewal


def test_no_reservation_no_registration_and_leaving_drops_them() -> None:
    reserved = {peer(1)}
    rdv = point(reserved)
    assert register(rdv, peer(2)).status == Message.ResponseStatus.E_NOT_AUTHORIZED
    assert register(rdv, peer(1)).status == OK
    reserved.discard(peer(1))  # reservation gone (expired): not listed any more
    assert list(discover(rdv).discoverResponse.registrations) == []
    rdv.forget(peer(1))  # its connection closed
    assert rdv.registrations == {}


def test_answers_are_newest_first_bounded_and_paged() -> None:
    rdv = point(max_answer_bytes=4096)
    for k in range(1, 301):
        assert register(rdv, peer(k)).status == OK
    first = discover(rdv).discoverResponse
    assert 0 < len(first.registrations) < 300 and first.ByteSize() <= 4096 + 512
    assert first.registrations[0].peer.id == peer(300).to_bytes()  # the newest
    seen = [r.peer.id for r in first.registrations]
    cookie = bytes(first.cookie)
    while cookie:
        page = discover(rdv, cookie=cookie).discoverResponse
        seen += [r.peer.id for r in page.registrations]
        cookie = bytes(page.cookie)
    assert sorted(seen) == sorted(peer(k).to_bytes() for k in range(1, 301))
    assert len(discover(rdv, limit=5).discoverResponse.registrations) == 5


async def test_relay_handlers_gate_themselves_before_any_service_runs() -> None:
    # The library registers its own handlers when its services start; the
    # gate is in those handlers, so there is no window without it.
    import secrets

    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair

    from p2psync.net.relay_service import RelayPoint, RelaySettings

    class Stream:
        def __init__(self, peer: ID) -> None:
            self.muxed_conn = type("Conn", (), {"peer_id": peer})()
            self.was_reset = False

        async def reset(self) -> None:
            self.was_reset = True

    host = new_host(key_pair=create_new_key_pair(secrets.token_bytes(32)), enable_mDNS=False)
    relay = RelayPoint(host, frozenset({peer(1).to_base58()}), RelaySettings())
    handlers = (
        relay.protocol._handle_hop_stream,
        relay.protocol._handle_stop_stream,
        relay.rendezvous._handle_stream,
    )
    for handler in handlers:
        stream = Stream(peer(2))
        await handler(stream)  # type: ignore[arg-type]
        assert stream.was_reset
    assert relay.counts.refused_peers == 3
