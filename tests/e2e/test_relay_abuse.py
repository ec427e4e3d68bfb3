"""A public relay under abuse, and a relay that abuses its nodes (loopback).

Keys are free and anyone can reach a public relay: strangers that reserve
and leave, many keys from one address, a stranger opening circuits to one
peer; and a --relay that speaks gossipsub and subscribes to our topics.
Each test failed on the first version of the relay (see the attacker
review scripts); each is one bound of net/relay_service.py, or the pubsub
refusal of node/network.py.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from multiaddr import Multiaddr

from p2psync.core.ids import peer_id_from_seed
from p2psync.net.circuit import RelayClient, RelayError, circuit_addr
from p2psync.net.host import ConnectError, open_libp2p_host
from p2psync.net.relay_service import RelaySettings, open_relay
from p2psync.net.topics import live_topic
from p2psync.node.config import NodeConfig
from p2psync.node.network import pubsub_refusals
from tests.e2e.test_liveness import assert_kernel_watches

pytestmark = pytest.mark.e2e

NS = "/p2psync/test/v4/members"


async def _stranger(addr: str) -> None:
    """A fresh key: connect, reserve, register, leave."""
    async with (
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as host,
        trio.open_nursery() as nursery,
    ):
        client = RelayClient(host, dcutr=False)
        await nursery.start(client.run)
        relay_id = await client.connect_relay(addr, 5)
        await client.reserve(relay_id, 5)
        await client.register(relay_id, NS, addr, 72 * 3600, 5)
        nursery.cancel_scope.cancel()


async def test_strangers_that_leave_free_their_reservations_and_registrations() -> None:
    settings = RelaySettings(max_reservations=4, max_reservations_per_ip=8)
    async with open_relay(secrets.token_bytes(32), "127.0.0.1", 0, settings=settings) as relay:
        addr = relay.listen_addrs()[0]
        for _ in range(4):
            await _stranger(addr)
        with trio.fail_after(10):
            while relay.reservations() or relay.registrations():
                await trio.sleep(0.05)
        assert relay.counts.freed_reservations == 4
        async with open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as host:
            client = RelayClient(host, dcutr=False)
            relay_id = await client.connect_relay(addr, 5)
            assert await client.reserve(relay_id, 5) > 0  # was RESOURCE_LIMIT_EXCEEDED


async def test_one_address_holds_a_few_reservations_only() -> None:
    settings = RelaySettings(max_reservations_per_ip=2)
    async with (
        open_relay(secrets.token_bytes(32), "127.0.0.1", 0, settings=settings) as relay,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as a,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as b,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as c,
    ):
        addr = relay.listen_addrs()[0]
        clients = [RelayClient(h, dcutr=False) for h in (a, b, c)]
        relay_ids = [await cl.connect_relay(addr, 5) for cl in clients]
        relay_id = relay_ids[0]
        await clients[0].reserve(relay_id, 5)
        await clients[1].reserve(relay_id, 5)
        with pytest.raises(RelayError) as refused:
            await clients[2].reserve(relay_id, 5)
        assert "RESOURCE_LIMIT_EXCEEDED" in str(refused.value)
        assert await clients[0].reserve(relay_id, 5) > 0  # a renewal is no new slot
        assert relay.reservations() == 2 and relay.counts.refused_reservations == 1


async def _connect_to(host: object, relay_id: ID, target: str) -> tuple[object, int]:
    stream = await host.libp2p.new_stream(relay_id, [HOP_PROTOCOL])  # type: ignore[attr-defined]
    request = HopMessage(
        type=HopMessage.CONNECT, peer=CircuitPeerId(id=ID.from_base58(target).to_bytes())
    )
    await write_delimited_msg(stream, request)
    answer = await read_delimited_msg(stream, HopMessage)
    return stream, answer.status


async def test_a_stranger_cannot_take_every_circuit_slot_of_a_peer() -> None:
    settings = RelaySettings(max_circuits_per_pair=2)
    async with (
        open_relay(secrets.token_bytes(32), "127.0.0.1", 0, settings=settings) as relay,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as victim,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as stranger,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as friend,
        trio.open_nursery() as nursery,
    ):
        addr = relay.listen_addrs()[0]
        victim_client = RelayClient(victim, dcutr=False)
        await nursery.start(victim_client.run)  # accepts circuits (STOP)
        relay_id = await victim_client.connect_relay(addr, 5)
        await victim_client.reserve(relay_id, 5)
        for host in (stranger, friend):
            await RelayClient(host, dcutr=False).connect_relay(addr, 5)
        statuses = []
        for _ in range(3):  # raw CONNECTs, held open
            _stream, status = await _connect_to(stranger, relay_id, victim.peer_id)
            statuses.append(status)
        assert statuses[:2] == [StatusCode.OK, StatusCode.OK]
        assert statuses[2] == StatusCode.RESOURCE_LIMIT_EXCEEDED
        _stream, status = await _connect_to(friend, relay_id, victim.peer_id)
        assert status == StatusCode.OK  # the victim still takes circuits from others
        assert relay.counts.refused_circuits == 1
        nursery.cancel_scope.cancel()


async def test_a_relay_speaking_gossipsub_reads_no_topic_and_strangers_neither(
    tmp_path: Path,
) -> None:
    topic = live_topic("smith-kitchen")
    async with (
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as node,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as evil_relay,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as member,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as stranger,
        trio.open_nursery() as nursery,
    ):
        relay_addr = evil_relay.listen_addrs()[0]
        config = NodeConfig(
            data_dir=tmp_path, relays=(relay_addr,), allow_peers=frozenset({member.peer_id})
        )
        node.refuse_pubsub(pubsub_refusals(config))  # what serve_network does
        await node.subscribe(topic)
        spies = [await evil_relay.subscribe(topic), await stranger.subscribe(topic)]
        client = RelayClient(node, dcutr=False)
        await nursery.start(client.run)
        await client.connect_relay(relay_addr, 5)
        await member.connect(node.listen_addrs()[0], timeout=5)
        await node._pubsub.wait_for_peer(ID.from_base58(member.peer_id), timeout=5)
        inbox = await member.subscribe(topic)  # after the pubsub streams (a py-libp2p race)
        # A stranger dials in (the node's policy would cut it soon: not soon enough).
        node_info = info_from_p2p_addr(Multiaddr(node.listen_addrs()[0]))
        stranger.allow_dial(node_info.peer_id)
        await stranger.libp2p.connect(node_info)
        await node.wait_for_mesh_peer(topic, member.peer_id, 10)
        assert await node.publish(topic, b"an entry of a closed network", timeout=5)
        with trio.fail_after(5):
            assert (await inbox.receive()).data == b"an entry of a closed network"
        await trio.sleep(2)  # heartbeats, gossip, cache replays: time to leak
        for spy in spies:
            with pytest.raises(trio.WouldBlock):
                spy.receive_nowait()
        assert evil_relay.peer_id not in node.peers_in_topic(topic)
        assert stranger.peer_id not in node.peers_in_topic(topic)
        nursery.cancel_scope.cancel()


async def test_a_listed_peer_without_a_reservation_is_not_dialed_again() -> None:
    async with (
        open_relay(secrets.token_bytes(32), "127.0.0.1", 0) as relay,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as dialer,
        trio.open_nursery() as nursery,
    ):
        addr = relay.listen_addrs()[0]
        client = RelayClient(dialer, dcutr=False)
        await nursery.start(client.run)
        await client.connect_relay(addr, 5)
        invented = peer_id_from_seed(b"\x06" * 32)  # a hostile relay lists it; nobody reserved
        assert not client.unreserved(invented)
        with pytest.raises(ConnectError):
            await dialer.connect(circuit_addr(addr, invented), timeout=5)
        assert client.unreserved(invented)
        nursery.cancel_scope.cancel()


async def test_the_kernel_watches_the_relays_connections_too() -> None:
    # The relay has no health ping: without keep-alive a node that vanished
    # would hold its reservation and circuits until they expire.
    async with (
        open_relay(secrets.token_bytes(32), "127.0.0.1", 0) as relay,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as host,
    ):
        client = RelayClient(host, dcutr=False)
        relay_id = await client.connect_relay(relay.listen_addrs()[0], 5)
        with trio.fail_after(10):
            while not relay._host.get_network().get_connections(ID.from_base58(host.peer_id)):
                await trio.sleep(0.05)
        assert relay_id
        assert_kernel_watches(
            relay._host.get_network().get_connections(ID.from_base58(host.peer_id))[0]
        )
