"""`p2psync relay`: a circuit relay v2 and rendezvous point, and nothing else.

Both protocols are py-libp2p 0.8.1's (``CircuitV2Protocol`` with hop on,
``RendezvousService``); this module builds the host they run on (TCP,
Noise, yamux, as the nodes), bounds them, and gates them. Keys are free and
a public relay is reachable by anyone, so every bound holds per peer, per
source address or per pair, not only in total:

- No gossipsub, no store: the relay joins no topic and keeps no entry.
  Circuits carry the two nodes' own Noise sessions end to end, so the relay
  moves ciphertext it cannot read or change; what it sees is listed in
  docs/OPERATIONS.md ("What a relay can see").
- ``allow`` (``--allow-peer``/``--allow-file``): a connection from any other
  peer is closed as soon as it is up, and its hop, stop and rendezvous
  streams are reset before a byte is read. The gate is in place before the
  host listens (the handlers check it themselves, whenever they are set).
- Reservations: at most ``max_reservations``, at most
  ``max_reservations_per_ip`` per source IP address, and one is freed when
  its peer's last connection closes (py-libp2p frees them only on expiry:
  128 keys that connect, reserve and leave filled the table for an hour).
  Each allows ``max_circuit_conns`` circuits of at most ``circuit_seconds``
  and ``circuit_bytes``, and at most ``max_circuits_per_pair`` between one
  source and one destination (a stranger cannot take all of a peer's
  slots). A RESERVE is always for the connection's own peer: py-libp2p
  takes the optional ``peer`` field of the message as the one to reserve
  for; the field is cleared before the library sees it.
- Rendezvous (``BoundedRendezvous``, rendezvous_point.py): registrations
  only from peers holding a reservation, in p2psync members namespaces,
  with a clamped TTL and a few short circuit addresses through this relay;
  dropped with the reservation; answers newest first and bounded in size.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.tools.anyio_service import background_trio_service

from p2psync.net import liveness
from p2psync.net.addresses import tcp_multiaddr, with_peer_id
from p2psync.net.libp2p_fixes import (
    ConnectionNotifee,
    expand_unspecified,
    new_tcp_host,
)
from p2psync.net.rendezvous_point import BoundedRendezvous, RendezvousLimits

log = logging.getLogger(__name__)

SWEEP_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class RelaySettings:
    max_reservations: int = 128
    max_reservations_per_ip: int = 4
    max_circuit_conns: int = 16  # per reservation
    max_circuits_per_pair: int = 2  # open circuits from one source to one destination
    circuit_seconds: int = 3600  # a circuit is cut after this; the nodes dial again
    circuit_bytes: int = 1 << 30
    reservation_ttl: int = 3600
    max_namespaces: int = 1024
    rendezvous: RendezvousLimits = field(default_factory=RendezvousLimits)


@dataclass(slots=True)
class RelayCounts:
    refused_peers: int = 0  # connections and streams from peers not on the allow list
    refused_reservations: int = 0  # per-IP cap
    refused_circuits: int = 0  # per-pair cap
    freed_reservations: int = 0  # their peer disconnected


class _Gate(ConnectionNotifee):
    """Closes every connection from a peer not on the allow list; frees what a
    peer held when its last connection closes."""

    def __init__(self, relay: RelayPoint) -> None:
        self._relay = relay

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if not self._relay.allowed(peer):
            self._relay.counts.refused_peers += 1
            log.info("refused %s: not on the allow list", peer)
            await conn.close()
        else:
            # A node that vanished frees its reservation and circuits in ~10 s
            # instead of holding them until the reservation expires.
            liveness.keep_alive(conn)
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if not network.connections.get(peer):  # the swarm forgot the conn before telling us
            self._relay.forget(peer)
        await trio.lowlevel.checkpoint()


def remote_ip(stream: INetStream) -> str:
    """The source IP address of the stream's connection ("?" when unknown)."""
    try:
        remote = stream.get_remote_address()
    except Exception:
        remote = None
    return str(remote[0]) if remote else "?"


class HopService(CircuitV2Protocol):
    """py-libp2p's hop service, gated and bounded per peer, per IP and per pair."""

    def __init__(self, host: IHost, relay: RelayPoint, settings: RelaySettings) -> None:
        limits = RelayLimits(
            duration=settings.circuit_seconds,
            data=settings.circuit_bytes,
            max_circuit_conns=settings.max_circuit_conns,
            max_reservations=settings.max_reservations,
            reservation_ttl=settings.reservation_ttl,
        )
        super().__init__(host, limits=limits, allow_hop=True)
        self._relay = relay
        self._settings = settings
        self._ip_of: dict[ID, str] = {}
        self._pairs: Counter[tuple[ID, ID]] = Counter()

    def holds_reservation(self, peer: ID) -> bool:
        return self.resource_manager.get_reservation(peer) is not None

    def forget(self, peer: ID) -> bool:
        """Free the peer's reservation; whether it had one."""
        self._ip_of.pop(peer, None)
        return self.resource_manager._reservations.pop(peer, None) is not None

    def reservations_from(self, ip: str) -> int:
        return sum(1 for p, a in self._ip_of.items() if a == ip and self.holds_reservation(p))

    async def _handle_hop_stream(self, stream: INetStream) -> None:
        if await self._relay.refuse(stream):
            return
        await super()._handle_hop_stream(stream)

    async def _handle_stop_stream(self, stream: INetStream) -> None:
        if await self._relay.refuse(stream):
            return
        await super()._handle_stop_stream(stream)

    async def _handle_reserve(self, stream: INetStream, msg: HopMessage) -> None:
        msg.ClearField("peer")
        peer = stream.muxed_conn.peer_id
        ip = remote_ip(stream)
        if not self.holds_reservation(peer):
            if self.reservations_from(ip) >= self._settings.max_reservations_per_ip:
                self._relay.counts.refused_reservations += 1
                await self._send_status(
                    stream, StatusCode.RESOURCE_LIMIT_EXCEEDED, "too many reservations from here"
                )
                return
            self._ip_of[peer] = ip
        await super()._handle_reserve(stream, msg)

    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        try:
            pair = (stream.muxed_conn.peer_id, ID(msg.peer.id))
        except Exception:
            pair = None  # garbage: the library answers it
        if pair is not None and self._pairs[pair] >= self._settings.max_circuits_per_pair:
            self._relay.counts.refused_circuits += 1
            await self._send_status(
                stream, StatusCode.RESOURCE_LIMIT_EXCEEDED, "too many circuits to this peer"
            )
            await trio.sleep(0.5)  # time to read the STATUS before the reset
            await stream.reset()
            return
        if pair is None:
            await super()._handle_connect(stream, msg)
            return
        self._pairs[pair] += 1
        try:
            await super()._handle_connect(stream, msg)
        finally:
            self._pairs[pair] -= 1
            if self._pairs[pair] <= 0:
                del self._pairs[pair]


class RelayPoint:
    """A running relay; made only by ``open_relay``."""

    def __init__(self, host: IHost, allow: frozenset[str], settings: RelaySettings) -> None:
        self._host = host
        self._allow = allow
        self.counts = RelayCounts()
        self.peer_id: str = host.get_id().to_base58()
        self.protocol = HopService(host, self, settings)
        self.rendezvous = BoundedRendezvous(
            host,
            self.peer_id,
            settings.max_namespaces,
            settings.rendezvous,
            admit=self._admit,
            may_register=self.protocol.holds_reservation,
        )

    def allowed(self, peer: ID) -> bool:
        return not self._allow or peer.to_base58() in self._allow

    def _admit(self, peer: ID) -> bool:
        if self.allowed(peer):
            return True
        self.counts.refused_peers += 1
        return False

    async def refuse(self, stream: INetStream) -> bool:
        """Reset the stream if its peer is not on the allow list; whether it was."""
        if self.allowed(stream.muxed_conn.peer_id):
            return False
        self.counts.refused_peers += 1
        await stream.reset()
        return True

    def forget(self, peer: ID) -> None:
        """The peer's last connection closed: free its reservation and registrations."""
        if self.protocol.forget(peer):
            self.counts.freed_reservations += 1
        self.rendezvous.forget(peer)

    def listen_addrs(self) -> list[str]:
        addrs = expand_unspecified(self._host.get_transport_addrs())
        return [with_peer_id(str(a), self.peer_id) for a in addrs]

    def reservations(self) -> int:
        return len(self.protocol.resource_manager._reservations)

    def registrations(self) -> int:
        return sum(len(peers) for peers in self.rendezvous.registrations.values())


@asynccontextmanager
async def open_relay(
    seed: bytes,
    listen_host: str,
    listen_port: int,
    *,
    allow: frozenset[str] = frozenset(),
    settings: RelaySettings | None = None,
) -> AsyncIterator[RelayPoint]:
    """Run a relay and rendezvous point for the duration of the block."""
    settings = settings or RelaySettings()
    key_pair = create_new_key_pair(seed)
    listen = multiaddr.Multiaddr(tcp_multiaddr(listen_host, listen_port))
    host = new_tcp_host(key_pair, listen)
    # Gate and handlers before the host listens: no window without them.
    relay = RelayPoint(host, allow, settings)
    host.get_network().register_notifee(_Gate(relay))
    async with host.run([listen]), background_trio_service(relay.protocol):
        await relay.protocol.event_started.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sweep, relay.rendezvous)
            try:
                yield relay
            finally:
                nursery.cancel_scope.cancel()


async def _sweep(rendezvous: BoundedRendezvous) -> None:
    while True:
        await trio.sleep(SWEEP_SECONDS)
        rendezvous.cleanup_all_expired()
