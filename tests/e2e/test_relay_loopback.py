"""The relay and its client in one process over loopback: no root, no NAT.

`open_relay` (net/relay_service.py) against `RelayClient` (net/circuit.py)
on two real p2psync hosts: reserve, register, discover, dial through, gossip
over the circuit; a relay that refuses a peer not on its allow list; an
unreachable relay; garbage in a rendezvous answer; the bounds of the
rendezvous point.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p.discovery.rendezvous.service import RegistrationRecord
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from p2psync.core.ids import peer_id_from_seed
from p2psync.net.circuit import RelayClient, RelayError, circuit_addr
from p2psync.net.host import ConnectError, Libp2pHost, open_libp2p_host
from p2psync.net.relay_service import RelayPoint, RelaySettings, open_relay

pytestmark = pytest.mark.e2e

NS = "/p2psync/test/v4/members"


@asynccontextmanager
async def two_clients(
    nursery: trio.Nursery, seeds: tuple[bytes, bytes]
) -> AsyncIterator[tuple[Libp2pHost, RelayClient, Libp2pHost, RelayClient]]:
    async with (
        open_libp2p_host(seeds[0], "127.0.0.1", 0) as a,
        open_libp2p_host(seeds[1], "127.0.0.1", 0) as b,
    ):
        client_a, client_b = RelayClient(a, dcutr=False), RelayClient(b, dcutr=False)
        await nursery.start(client_a.run)
        await nursery.start(client_b.run)
        yield a, client_a, b, client_b


async def test_two_hosts_meet_and_gossip_through_the_relay() -> None:
    seeds = (secrets.token_bytes(32), secrets.token_bytes(32))
    async with open_relay(secrets.token_bytes(32), "127.0.0.1", 0) as relay:
        addr = relay.listen_addrs()[0]
        async with trio.open_nursery() as nursery, two_clients(nursery, seeds) as (a, ca, b, cb):
            for client in (ca, cb):
                relay_id = await client.connect_relay(addr, 5)
                assert await client.reserve(relay_id, 5) > 0
                assert await client.register(relay_id, NS, addr, 120, 5) == 120
            assert (relay.reservations(), relay.registrations()) == (2, 2)

            found = await cb.discover(relay_id, NS, 100, 5)
            assert found.garbage == 0
            assert [r.peer_id for r in found.peers] == [a.peer_id]  # not itself
            empty = await cb.discover(relay_id, "/p2psync/elsewhere/v4/members", 100, 5)
            assert (empty.peers, empty.garbage) == ([], 0)

            assert await b.connect(circuit_addr(addr, a.peer_id), timeout=10) == a.peer_id
            assert cb.is_relayed(a.peer_id) and not cb.is_relayed(relay.peer_id)
            # py-libp2p pubsub race (any transport, wider through a relay): a
            # topic subscribed before our own pubsub stream to the new peer is
            # open can miss that peer's messages, so wait for it, as dialers do.
            await a._pubsub.wait_for_peer(ID.from_base58(b.peer_id), timeout=5)
            inbox = await a.subscribe("t")
            await b.subscribe("t")
            await b.wait_for_mesh_peer("t", a.peer_id, 5)
            assert await b.publish("t", b"through the relay", timeout=5)
            with trio.fail_after(5):
                assert (await inbox.receive()).data == b"through the relay"
            nursery.cancel_scope.cancel()


async def test_a_peer_off_the_allow_list_gets_nothing() -> None:
    seeds = (secrets.token_bytes(32), secrets.token_bytes(32))
    allowed = frozenset({peer_id_from_seed(seeds[0])})
    async with open_relay(secrets.token_bytes(32), "127.0.0.1", 0, allow=allowed) as relay:
        addr = relay.listen_addrs()[0]
        async with trio.open_nursery() as nursery, two_clients(nursery, seeds) as (a, ca, b, cb):
            relay_id = await ca.connect_relay(addr, 5)
            await ca.reserve(relay_id, 5)
            await ca.register(relay_id, NS, addr, 120, 5)
            with pytest.raises(RelayError) as refused:
                stranger_relay = await cb.connect_relay(addr, 5)
                await cb.reserve(stranger_relay, 5)
                await cb.discover(stranger_relay, NS, 100, 5)
            assert refused.value.kind in ("refused", "unreachable")
            assert relay.counts.refused_peers >= 1
            assert relay.reservations() == 1
            with pytest.raises(ConnectError):
                await b.connect(circuit_addr(addr, a.peer_id), timeout=5)
            assert a.peer_id not in b.connected_peers()
            nursery.cancel_scope.cancel()


async def test_unreachable_relay_is_a_one_line_error() -> None:
    async with open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as host:
        client = RelayClient(host, dcutr=False)
        with trio.socket.socket() as sock:  # a port nobody listens on
            await sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        nobody = peer_id_from_seed(b"\x07" * 32)
        with pytest.raises(RelayError) as error:
            await client.connect_relay(f"/ip4/127.0.0.1/tcp/{port}/p2p/{nobody}", 3)
        assert error.value.kind == "unreachable" and "\n" not in str(error.value)
        with pytest.raises(RelayError) as bad:
            await client.connect_relay("/ip4/127.0.0.1/tcp/1", 3)
        assert bad.value.kind == "bad_address"


def _record(relay: RelayPoint, peer: ID, addrs: list[bytes]) -> None:
    relay.rendezvous.registrations.setdefault(NS, {})[peer] = RegistrationRecord(
        peer, addrs, NS, 120
    )


async def test_garbage_in_a_rendezvous_answer_is_counted_and_skipped() -> None:
    seeds = (secrets.token_bytes(32), secrets.token_bytes(32))
    async with open_relay(secrets.token_bytes(32), "127.0.0.1", 0) as relay:
        addr = relay.listen_addrs()[0]
        async with trio.open_nursery() as nursery, two_clients(nursery, seeds) as (a, _, _, cb):
            relay_id = await cb.connect_relay(addr, 5)
            # A hostile rendezvous point lists whatever it likes: play one.
            relay.rendezvous._may_register = lambda _peer: True
            good = ID.from_base58(a.peer_id)
            circuit = multiaddr.Multiaddr(f"{addr}/p2p-circuit").to_bytes()
            _record(relay, good, [circuit])
            _record(relay, ID(b"\x00\x05hello"), [circuit])  # not an Ed25519 peer id
            elsewhere = ID.from_base58(peer_id_from_seed(b"\x03" * 32))
            _record(relay, elsewhere, [multiaddr.Multiaddr("/ip4/10.9.9.9/tcp/1").to_bytes()])
            junk = ID.from_base58(peer_id_from_seed(b"\x04" * 32))
            _record(relay, junk, [b"\xff\xfe garbage"])
            _record(relay, relay_id, [circuit])  # the relay itself: no member
            found = await cb.discover(relay_id, NS, 100, 5)
            assert [r.peer_id for r in found.peers] == [a.peer_id]
            assert found.garbage == 4
            nursery.cancel_scope.cancel()


async def test_rendezvous_point_stays_bounded() -> None:
    settings = RelaySettings(max_namespaces=2)
    async with (
        open_relay(secrets.token_bytes(32), "127.0.0.1", 0, settings=settings) as relay,
        open_libp2p_host(secrets.token_bytes(32), "127.0.0.1", 0) as host,
        trio.open_nursery() as nursery,
    ):
        client = RelayClient(host, dcutr=False)
        await nursery.start(client.run)
        addr = relay.listen_addrs()[0]
        relay_id = await client.connect_relay(addr, 5)
        for k in range(20):  # asking about namespaces creates none
            await client.discover(relay_id, f"/probe/{k}", 10, 5)
        assert relay.rendezvous.registrations == {}
        with pytest.raises(RelayError) as unreserved:
            await client.register(relay_id, "/p2psync/one/v4/members", addr, 120, 5)
        assert "reserve a slot" in str(unreserved.value)
        await client.reserve(relay_id, 5)
        with pytest.raises(RelayError) as shape:
            await client.register(relay_id, "/one", addr, 120, 5)
        assert "not a p2psync members namespace" in str(shape.value)
        await client.register(relay_id, "/p2psync/one/v4/members", addr, 120, 5)
        assert await client.register(relay_id, "/p2psync/two/v4/members", addr, 86400, 5) == 1200
        with pytest.raises(RelayError) as full:
            await client.register(relay_id, "/p2psync/three/v4/members", addr, 120, 5)
        assert "too many namespaces" in str(full.value)
        assert sorted(relay.rendezvous.registrations) == [
            "/p2psync/one/v4/members",
            "/p2psync/two/v4/members",
        ]
        # A RESERVE naming another peer reserves for the sender all the same.
        victim = ID.from_base58(peer_id_from_seed(b"\x05" * 32))
        stream = await host.libp2p.new_stream(relay_id, [HOP_PROTOCOL])
        forged = HopMessage(type=HopMessage.RESERVE, peer=CircuitPeerId(id=victim.to_bytes()))
        await write_delimited_msg(stream, forged)
        answer = await read_delimited_msg(stream, HopMessage)
        assert answer.status == StatusCode.OK
        reserved = set(relay.protocol.resource_manager._reservations)
        assert reserved == {ID.from_base58(host.peer_id)}
        nursery.cancel_scope.cancel()


def _start_relay_process(root: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PSYNC_")}
    env["P2PSYNC_DATA_ROOT"] = str(root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2psync", "relay", "--host", "127.0.0.1", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(2)]
    assert "serving any peer" in lines[0], lines
    return proc, lines[1].split()[1]


def test_relay_command_keeps_its_identity_and_stops_on_sigterm(tmp_path: Path) -> None:
    first, addr = _start_relay_process(tmp_path)
    try:
        assert addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in addr
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
    finally:
        first.kill()
    key = tmp_path / "relay" / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "relay").iterdir() if p.name != "lock") == [
        "identity.key"
    ]  # no store, no recipes
    second, addr_again = _start_relay_process(tmp_path)
    try:
        assert addr_again.rsplit("/p2p/", 1)[1] == addr.rsplit("/p2p/", 1)[1]
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=20) == 0
    finally:
        second.kill()
