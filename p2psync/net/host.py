"""A thin trio-native wrapper around py-libp2p 0.8.1: one host, one gossipsub.

Everything the daemon needs from libp2p goes through this module, so the rest
of p2psync never touches py-libp2p types. What it changes in py-libp2p, and
why, is in libp2p_fixes.py; the gossipsub side (topics, publishing with
backpressure, drop counts) is in gossip.py.

API::

    @asynccontextmanager
    async def open_libp2p_host(
        seed: bytes, listen_host: str, listen_port: int, *,
        max_message_bytes: int = 1 << 20,
        connect_timeout: float = 10.0,
    ) -> AsyncIterator[Libp2pHost]

    class Libp2pHost:
        peer_id: str                                   # base58, from the seed
        max_payload_bytes: int                         # largest publish() payload
        peer_events: trio.MemoryReceiveChannel[PeerEvent]
        def listen_addrs(self) -> list[str]            # real IPs, .../p2p/<peer_id>
        async def connect(self, multiaddr: str, *, timeout: float | None = None) -> str
        async def disconnect(self, peer_id: str) -> None
        def connected_peers(self) -> list[str]
        async def subscribe(self, topic: str, *, buffer: int = 1024
                            ) -> trio.MemoryReceiveChannel[Received]
        async def unsubscribe(self, topic: str) -> None
        async def publish(self, topic: str, data: bytes, *, timeout: float = 2.0
                          ) -> PublishResult           # truthy iff queued
        def peers_in_topic(self, topic: str) -> list[str]
        def topics_of(self, peer_id: str) -> list[str]
        def mesh_peers(self, topic: str) -> list[str]
        def has_pubsub_stream(self, peer_id: str) -> bool  # ours to the peer
        async def open_pubsub_stream(self, peer_id: str, timeout: float) -> bool
        async def wait_for_topic_peer(self, topic, peer_id, timeout) -> None
        async def wait_for_mesh_peer(self, topic, peer_id, timeout) -> None
        def drop_counts(self) -> dict[str, int]
        async def ping(self, peer_id: str, timeout: float = 5.0) -> float | None
        def quiet_for(self, peer_id: str) -> float | None   # since its connection spoke
        def heard_from(self, peer_id: str, within: float) -> bool

    PeerEvent(kind: "connected" | "disconnected" | "misbehaved", peer_id, addr, direction)
    Received(sender, data, forwarder)                  # forwarder: who handed it to us
    PublishResult(ok, reason, peers)                   # see its docstring
    ConnectError                                       # dial failed / timed out

Only ``connect()`` dials; a peer that vanished silently is noticed only by
``ping()`` (libp2p itself does not notice).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetwork
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize
from libp2p.tools.anyio_service import background_trio_service

from p2psync.net import liveness
from p2psync.net.addresses import tcp_multiaddr, with_peer_id
from p2psync.net.gossip import (
    ENVELOPE_HEADROOM,
    Gossip,
    PublishResult,
    Received,
    Validator,
    remembered,
)
from p2psync.net.libp2p_fixes import (
    ConnectionNotifee,
    expand_unspecified,
    find_socket_stream,
    forget_failed_dials,
    guard_dials,
    new_tcp_host,
    one_connection_per_peer,
)

__all__ = [
    "ConnectError",
    "Libp2pHost",
    "PeerEvent",
    "PublishResult",
    "Received",
    "open_libp2p_host",
]

logger = logging.getLogger(__name__)

_SHUTDOWN_SECONDS = 5.0


class ConnectError(Exception):
    """Dialing a peer failed or timed out; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PeerEvent:
    kind: Literal["connected", "disconnected", "misbehaved"]
    peer_id: str
    addr: str | None  # the remote transport address, e.g. /ip4/10.0.0.2/tcp/4001
    direction: str  # "inbound", "outbound" or "unknown"


class _PeerNotifee(ConnectionNotifee):
    def __init__(self, owner: Libp2pHost) -> None:
        self._owner = owner

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._owner._on_conn_opened(conn)
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._owner._on_conn_closed(conn)
        await trio.lowlevel.checkpoint()


def _direction_of(conn: INetConn) -> str:
    direction = getattr(conn, "direction", None)
    name = getattr(direction, "name", None)
    return name.lower() if isinstance(name, str) else "unknown"


def _remote_addr_of(conn: INetConn) -> str | None:
    try:
        addrs = conn.get_transport_addresses()
    except Exception:  # a half-torn-down connection may not know any more
        return None
    return str(addrs[0]) if addrs else None


class Libp2pHost:
    """A running libp2p host with gossipsub; made only by ``open_libp2p_host``."""

    def __init__(
        self,
        host: IHost,
        *,
        max_message_bytes: int,
        connect_timeout: float,
    ) -> None:
        self._host = host
        self._my_id = host.get_id()
        self.peer_id: str = self._my_id.to_base58()
        self._connect_timeout = connect_timeout
        self._conns: dict[ID, set[INetConn]] = {}
        # Kept for a second, as gossip keeps get_addrs(): listing the
        # interfaces cost 1 ms of the 2.5 ms a GET /api/v0/status took.
        self._listen_addrs = remembered(self._fresh_listen_addrs)
        self._closing = False
        self._dial_allowed: set[ID] = set()
        self._event_send, self.peer_events = trio.open_memory_channel[PeerEvent](math.inf)
        self._gossip = Gossip(host, max_message_bytes=max_message_bytes, on_bad_peer=self._bad_peer)
        self._pubsub = self._gossip.pubsub
        self._router = self._gossip.router
        self.max_payload_bytes = self._gossip.max_payload_bytes
        host.get_network().register_notifee(_PeerNotifee(self))
        guard_dials(self._host.get_network(), self._dial_allowed)
        # Set by net/circuit.py while a RelayClient runs: dials /p2p-circuit addresses.
        self.circuit_dial: Callable[[ID, multiaddr.Multiaddr], Awaitable[None]] | None = None

    # -- addresses and peers -------------------------------------------------

    def listen_addrs(self) -> list[str]:
        return self._listen_addrs()

    def _fresh_listen_addrs(self) -> list[str]:
        addrs = expand_unspecified(self._host.get_transport_addrs())
        return [with_peer_id(str(a), self.peer_id) for a in addrs]

    def connected_peers(self) -> list[str]:
        return sorted(p.to_base58() for p in self._conns)

    # -- net/circuit.py extends the host through these two -------------------

    @property
    def libp2p(self) -> IHost:
        return self._host

    def allow_dial(self, peer: ID, allowed: bool = True) -> None:
        """Let the swarm dial ``peer`` (a relay), or no longer."""
        if allowed:
            forget_failed_dials(self._host.get_network(), peer)
            self._dial_allowed.add(peer)
        else:
            self._dial_allowed.discard(peer)

    async def connect(self, multiaddr_str: str, *, timeout: float | None = None) -> str:
        """Dial, wait until the pubsub stream is up, return the remote peer id."""
        if self._closing:
            raise ConnectError(f"cannot connect to {multiaddr_str}: host is shutting down")
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(multiaddr_str))
        except Exception as exc:
            raise ValueError(
                f"not a dialable multiaddr with /p2p/<peer id>: {multiaddr_str!r} ({exc})"
            ) from exc
        if info.peer_id == self._my_id:
            raise ValueError(f"refusing to dial ourselves: {multiaddr_str}")
        limit = self._connect_timeout if timeout is None else timeout
        forget_failed_dials(self._host.get_network(), info.peer_id)
        self._dial_allowed.add(info.peer_id)
        try:
            with trio.fail_after(limit):
                if self.circuit_dial is not None and "/p2p-circuit" in multiaddr_str:
                    await self.circuit_dial(info.peer_id, multiaddr.Multiaddr(multiaddr_str))
                else:
                    await self._host.connect(info)
                await self._pubsub.wait_for_peer(info.peer_id, timeout=limit)
        except trio.TooSlowError:
            raise ConnectError(
                f"timed out after {limit:g} s connecting to {multiaddr_str}"
            ) from None
        except Exception as exc:
            raise ConnectError(f"could not connect to {multiaddr_str}: {exc}") from exc
        finally:
            self._dial_allowed.discard(info.peer_id)
        return info.peer_id.to_base58()

    async def disconnect(self, peer_id: str, *, timeout: float = 2.0) -> None:
        """Close every connection to the peer, forcibly if it does not answer.

        A peer that vanished without a FIN (cable pulled, partition) can hang
        the muxer's polite close forever; then libp2p would keep the dead
        connection and `connect()` would "succeed" on it. After `timeout` the
        TCP sockets are closed under the muxer and the peer is forgotten.
        """
        peer = ID.from_base58(peer_id)
        polite = False
        with trio.move_on_after(timeout):
            await self._host.disconnect(peer)
            polite = True
        # Whatever libp2p did, nothing of this peer may linger: a stale entry
        # would hide the next connection's "connected" event.
        swarm: Any = self._host.get_network()
        for conn in list(self._conns.get(peer, ())):
            socket_stream = None if polite else find_socket_stream(conn.muxed_conn)
            if socket_stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await socket_stream.aclose()
            self._on_conn_closed(conn)
        swarm.connections.pop(peer, None)

    # -- gossipsub (gossip.py) -----------------------------------------------

    async def subscribe(
        self, topic: str, *, buffer: int = 1024, validator: Validator | None = None
    ) -> trio.MemoryReceiveChannel[Received]:
        """Join ``topic``; see ``Gossip.subscribe``."""
        return await self._gossip.subscribe(topic, buffer=buffer, validator=validator)

    async def unsubscribe(self, topic: str) -> None:
        await self._gossip.unsubscribe(topic)

    async def publish(self, topic: str, data: bytes, *, timeout: float = 2.0) -> PublishResult:
        """Queue ``data`` for ``topic``'s peers; see ``Gossip.publish``."""
        return await self._gossip.publish(topic, data, timeout=timeout)

    def peers_in_topic(self, topic: str) -> list[str]:
        return self._gossip.peers_in_topic(topic)

    def topics_of(self, peer_id: str) -> list[str]:
        """Topics the peer told us it subscribes to (how its network is learned)."""
        peer = ID.from_base58(peer_id)
        return sorted(t for t, peers in self._pubsub.peer_topics.items() if peer in peers)

    def mesh_peers(self, topic: str) -> list[str]:
        return self._gossip.mesh_peers(topic)

    def has_pubsub_stream(self, peer_id: str) -> bool:
        """Whether py-libp2p holds our pubsub stream to the peer: without it
        nothing we publish or forward reaches the peer."""
        return ID.from_base58(peer_id) in self._pubsub.peers

    async def open_pubsub_stream(self, peer_id: str, timeout: float) -> bool:
        """Open our pubsub stream to a connected peer unless it stands,
        retrying up to ``timeout`` seconds; whether it stands after."""
        return await self._pubsub.ensure_peer_stream(ID.from_base58(peer_id), timeout)

    async def wait_for_topic_peer(self, topic: str, peer_id: str, timeout: float) -> None:
        await self._gossip.wait_for_topic_peer(topic, peer_id, timeout)

    async def wait_for_mesh_peer(self, topic: str, peer_id: str, timeout: float) -> None:
        await self._gossip.wait_for_mesh_peer(topic, peer_id, timeout)

    def drop_counts(self) -> dict[str, int]:
        """Messages lost or refused so far, by reason; see ``Gossip.drop_counts``."""
        return self._gossip.drop_counts()

    def refuse_pubsub(self, refused: Callable[[ID], bool]) -> None:
        """No pubsub with the peers ``refused`` names; see ``Gossip.refuse_peers``."""
        self._gossip.refuse_peers(refused)

    # -- health --------------------------------------------------------------

    async def ping(self, peer_id: str, timeout: float = 5.0) -> float | None:
        """Seconds until the peer's connection answered a muxer ping (liveness.py),
        or None if nothing came back in time.

        Never dials: a peer we are not connected to gives None at once.
        """
        pid = ID.from_base58(peer_id)
        conns = self._conns.get(pid)
        if not conns:
            return None
        return await liveness.ping(self._host, pid, next(iter(conns)), timeout)

    def quiet_for(self, peer_id: str) -> float | None:
        """Seconds since the peer's connection last delivered any bytes (None:
        not connected). Its pings count, so a peer that pings us needs none back."""
        quiet = [liveness.quiet_for(c) for c in self._conns.get(ID.from_base58(peer_id), ())]
        known = [q for q in quiet if q is not None]
        return min(known) if known else None

    def heard_from(self, peer_id: str, within: float) -> bool:
        """True if the peer's pubsub stream delivered bytes in the last ``within`` s.

        A ping queues behind everything the connection already carries, so a
        peer busy sending us a backfill or a flood can miss pings while its
        data keeps arriving; this tells the two apart.
        """
        heard = self._pubsub.last_heard.get(ID.from_base58(peer_id))
        return heard is not None and trio.current_time() - heard <= within

    # -- internals -----------------------------------------------------------

    def _on_conn_opened(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        conns = self._conns.setdefault(peer, set())
        first = not conns
        conns.add(conn)
        liveness.watch(conn)
        liveness.keep_alive(conn)
        if first:
            self._emit(
                PeerEvent("connected", peer.to_base58(), _remote_addr_of(conn), _direction_of(conn))
            )

    def _on_conn_closed(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        conns = self._conns.get(peer)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        if not conns:
            del self._conns[peer]
            self._pubsub.last_heard.pop(peer, None)
            self._emit(
                PeerEvent(
                    "disconnected", peer.to_base58(), _remote_addr_of(conn), _direction_of(conn)
                )
            )

    def _bad_peer(self, peer: ID, reason: str) -> None:
        """A peer's pubsub stream broke with garbage: tell the owner to cut it."""
        self._emit(PeerEvent("misbehaved", peer.to_base58(), None, reason))

    def _emit(self, event: PeerEvent) -> None:
        # Nobody listens any more, or we are past shutdown: nothing to tell.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._event_send.send_nowait(event)

    async def _shutdown(self) -> None:
        self._closing = True
        self._gossip.close()
        for peer in list(self._conns):
            try:
                await self._host.disconnect(peer)
            except Exception:
                logger.debug("error disconnecting %s during shutdown", peer, exc_info=True)
        self._event_send.close()


@asynccontextmanager
async def open_libp2p_host(
    seed: bytes,
    listen_host: str,
    listen_port: int,
    *,
    max_message_bytes: int = DefaultMaxMessageSize,
    connect_timeout: float = 10.0,
    observed_addrs: bool = False,  # identify's, for DCUtR (net/circuit.py)
) -> AsyncIterator[Libp2pHost]:
    """Run a libp2p host with gossipsub for the duration of the block.

    ``seed`` is the 32-byte Ed25519 seed of the node identity (same seed, same
    peer id). ``listen_port=0`` picks a free port; ``listen_addrs()`` tells
    which. ``max_message_bytes`` caps one published RPC; py-libp2p's send
    queue cannot take more than 1 MiB, so neither can this.
    """
    if len(seed) != 32:
        raise ValueError(f"identity seed must be 32 bytes, got {len(seed)}")
    if not 2 * ENVELOPE_HEADROOM <= max_message_bytes <= DefaultMaxMessageSize:
        raise ValueError(
            f"max_message_bytes must be {2 * ENVELOPE_HEADROOM}..{DefaultMaxMessageSize},"
            f" got {max_message_bytes}"
        )
    listen = multiaddr.Multiaddr(tcp_multiaddr(listen_host, listen_port))
    key_pair = create_new_key_pair(seed)
    host = new_tcp_host(
        key_pair,
        listen,
        connection_config=one_connection_per_peer(),
        disable_identify_address_discovery=not observed_addrs,
    )
    net = Libp2pHost(host, max_message_bytes=max_message_bytes, connect_timeout=connect_timeout)

    # Shutdown order matters (libp2p_fixes.py): the block below leaves in
    # reverse, so peers are disconnected (net._shutdown) before gossipsub,
    # then pubsub, then the host stop; stopping pubsub while peers are still
    # connected crashes ("Nursery is closed to new arrivals").
    async with (
        host.run([listen]),
        background_trio_service(net._pubsub),
        background_trio_service(net._router),
    ):
        await net._pubsub.wait_until_ready()
        try:
            yield net
        finally:
            with trio.move_on_after(_SHUTDOWN_SECONDS) as scope:
                scope.shield = True
                await net._shutdown()
            if scope.cancelled_caught:
                logger.warning(
                    "libp2p shutdown: disconnecting peers took over %ss", _SHUTDOWN_SECONDS
                )
