"""A thin trio-native wrapper around py-libp2p 0.8.1: one host, one gossipsub.

Everything the daemon needs from libp2p goes through this module, so the rest
of p2psync never touches py-libp2p types except ``Stream`` (an ``INetStream``).

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
        def remote_addr(self, peer_id: str) -> str | None
        async def subscribe(self, topic: str, *, buffer: int = 1024
                            ) -> trio.MemoryReceiveChannel[Received]
        async def unsubscribe(self, topic: str) -> None
        async def publish(self, topic: str, data: bytes, *, timeout: float = 2.0
                          ) -> PublishResult           # truthy iff queued
        def peers_in_topic(self, topic: str) -> list[str]
        def mesh_peers(self, topic: str) -> list[str]
        async def wait_for_topic_peer(self, topic, peer_id, timeout) -> None
        async def wait_for_mesh_peer(self, topic, peer_id, timeout) -> None
        def pending_counts(self) -> dict[str, int]     # outbound queue per peer
        def drop_counts(self) -> dict[str, int]
        async def ping(self, peer_id: str, timeout: float = 5.0) -> float | None
        def set_stream_handler(self, protocol: str, handler) -> None
        async def open_stream(self, peer_id: str, protocol: str) -> Stream

    PeerEvent(kind: "connected" | "disconnected", peer_id, addr, direction)
    Received(sender, data)                             # a NamedTuple
    PublishResult(ok, reason, peers)                   # see its docstring
    ConnectError                                       # dial failed / timed out

What the wrapper fixes or works around in py-libp2p 0.8.1 (all measured):

- Security is Noise only: the default ``sec_opt`` also offers TLS, SECIO and
  *plaintext*. The muxer is yamux only. ``max_connections_per_peer=1``
  (``ConnectionConfig``), else each dial costs about 250 ms.
- The swarm's AutoConnector re-dials every peer in the peerstore while there
  are fewer than ``min_connections`` (50) connections, i.e. always on a LAN.
  It is disabled: the daemon owns dial policy (static peers with backoff,
  disconnecting a misbehaving peer must stick). ``connect()`` also clears the
  swarm's 60 s "all addresses failed" cache so the daemon's own backoff rules.
  Likewise only ``connect()`` may dial at all: pubsub re-dials a peer whose
  stream died just before its connection was seen closed (a peer that just
  disconnected or shut down gets dialed right back), and ``new_stream``
  dials any peer with known addresses.
- Gossipsub: heartbeat 1 s, adaptive gossip, spam and eclipse protection off
  (with them on, throughput collapses to about 10 msg/s per topic), strict
  signing on, default score parameters (all thresholds -inf: scoring never
  gates our traffic). Only ``/meshsub/1.1.0`` and ``1.0.0`` are offered: on
  1.2.0, py sends an IDONTWANT RPC to every mesh peer for every message, even
  200-byte ones and its own publishes, which doubles the RPCs per message and
  cut one-process throughput from about 570 to 250 msg/s here.
- Send side: every peer has an outbound queue of 32 RPCs
  (``rpc_queue.OutBoundQueueSize``); ``publish()`` never blocks and a full
  queue drops the message with only a DEBUG log. ``publish()`` here looks at
  the queues of the peers the message would go to and waits (up to
  ``timeout``) for room; if there is none it refuses, publishing nothing, and
  says why. Drops that still happen inside the router (forwarded messages,
  races) are counted through ``GossipSub._handle_dropped_rpc``.
- Send side: py gossipsub sends only to mesh peers of a subscribed topic (no
  flood publish). ``publish()`` also waits for the mesh when the topic has
  subscribers but no mesh yet (formed at the latest by the next heartbeat).
- Receive side: ``Pubsub.subscribe`` hands out a channel of 32 and
  ``notify_subscriptions`` drops with ``send_nowait`` when the reader lags
  (one test run: 17 of 200 delivered). Delivery is rerouted into channels of
  ``buffer`` items here, and overflow is counted. Our own messages are not
  echoed back.
- Oversized: the per-peer queue drops any RPC over 1 MiB (the message plus a
  signed peer record of our addresses, signature and key). ``publish()``
  refuses payloads above ``max_payload_bytes`` instead.
- Identify's observed addresses are off (on TCP they are ephemeral dial
  ports); a bound 0.0.0.0 is expanded to the interface IPv4 addresses for
  both ``listen_addrs()`` and what identify / peer records advertise.
- Shutdown order: disconnect every peer, then stop gossipsub, then pubsub,
  then the host. Stopping pubsub while peers are still connected crashes
  ("Nursery is closed to new arrivals"). The teardown is shielded (bounded)
  so it also runs when the surrounding scope is cancelled.
- A silently vanished peer is not noticed by libp2p; ``ping()`` is the
  health check (``/ipfs/ping/1.0.0``, answered by every py/js/go host).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import ifaddr
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import PING_LENGTH
from libp2p.io.utils import read_exactly
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID as MESHSUB_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_V11
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize, OutBoundQueueSize
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

__all__ = [
    "ConnectError",
    "Libp2pHost",
    "PeerEvent",
    "PublishResult",
    "Received",
    "Stream",
    "StreamHandler",
    "interface_ipv4_addrs",
    "open_libp2p_host",
]

logger = logging.getLogger(__name__)

Stream = INetStream
StreamHandler = Callable[[INetStream], Awaitable[None]]

GOSSIPSUB_PROTOCOLS = (MESHSUB_V11, MESHSUB_V10)
HEARTBEAT_SECONDS = 1
# Room for what travels next to the payload in the same RPC: origin key and
# signature (~140 B), topic, seqno and the signed peer record of our listen
# addresses (~100 B per address). 8 KiB is generous for any LAN host.
ENVELOPE_HEADROOM = 8 * 1024
# Leave a few slots of each 32-slot queue free for GRAFT/PRUNE/IHAVE, which
# share the queue with data and are dropped just the same when it is full.
_QUEUE_HIGH_WATER = OutBoundQueueSize - 4
_POLL_SECONDS = 0.002
_SHUTDOWN_SECONDS = 5.0


class ConnectError(Exception):
    """Dialing a peer failed or timed out; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PeerEvent:
    kind: Literal["connected", "disconnected", "misbehaved"]
    peer_id: str
    addr: str | None  # the remote transport address, e.g. /ip4/10.0.0.2/tcp/4001
    direction: str  # "inbound", "outbound" or "unknown"


class Received(NamedTuple):
    sender: str  # origin peer id (base58), authenticated by its signature
    data: bytes


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Outcome of ``publish``; truthy iff the message was queued for a peer.

    ``reason`` when not ok:
    - ``"no_peers"``: no known subscriber. The message was still handed to
      libp2p, which holds it briefly for connected peers whose subscriptions
      are not known yet, but nothing is guaranteed.
    - ``"mesh_pending"``: subscribers exist, the mesh did not form within the
      timeout; nothing was sent.
    - ``"queue_full"``: a target peer's outbound queue stayed full for the
      whole timeout; nothing was sent.
    - ``"oversized"``: payload above ``max_payload_bytes``; nothing was sent.
    - ``"closed"``: the host is shutting down; nothing was sent.
    """

    ok: bool
    reason: str | None = None
    peers: int = 0

    def __bool__(self) -> bool:
        return self.ok


class _NoAutoConnector(AutoConnector):
    async def start(self) -> None:
        # Leaving `_started` False makes every auto-dial path a no-op.
        await trio.lowlevel.checkpoint()


class _CountingGossipSub(GossipSub):
    def __init__(self, *args: Any, on_drop: Callable[[str, int], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_drop = on_drop

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        if len(rpc.publish):
            self._on_drop(reason, len(rpc.publish))
        super()._handle_dropped_rpc(peer_id, rpc, reason)


class _RoutedPubsub(Pubsub):
    def __init__(
        self,
        host: IHost,
        router: GossipSub,
        *,
        deliver: Callable[[rpc_pb2.Message], None],
        on_bad_stream: Callable[[ID, str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(host, router, **kwargs)
        self._deliver = deliver
        self._on_bad_stream = on_bad_stream

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        self._deliver(publish_message)

    async def continuously_read_stream(self, stream: INetStream) -> None:
        # py-libp2p 0.8.1 lets a protobuf DecodeError (a corrupt or hostile
        # RPC) escape its read loop, and the exception then takes down the
        # whole pubsub service and our node with it. Contain it: drop this
        # peer's stream and let the owner disconnect it; the peer can
        # reconnect and anti-entropy repairs whatever was lost.
        peer_id = stream.muxed_conn.peer_id
        try:
            await super().continuously_read_stream(stream)
        except Exception as exc:
            logger.warning("unreadable pubsub stream from %s: %r", peer_id, exc)
            with contextlib.suppress(Exception):
                await stream.reset()
            self._handle_dead_peer(peer_id)
            self._on_bad_stream(peer_id, type(exc).__name__)


class _PeerNotifee(INotifee):
    def __init__(self, owner: Libp2pHost) -> None:
        self._owner = owner

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._owner._on_conn_opened(conn)
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._owner._on_conn_closed(conn)
        await trio.lowlevel.checkpoint()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()


def interface_ipv4_addrs() -> list[str]:
    """This machine's IPv4 addresses: LAN ones first, loopback last, always 127.0.0.1."""
    found: set[ipaddress.IPv4Address] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.add(ipaddress.IPv4Address(ip.ip))
    found.add(ipaddress.IPv4Address("127.0.0.1"))
    ordered = sorted(found, key=lambda a: (a.is_loopback, a))
    return [str(a) for a in ordered if not a.is_unspecified]


def _expand_unspecified(addrs: Iterable[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    out: list[multiaddr.Multiaddr] = []
    seen: set[str] = set()
    for addr in addrs:
        expanded = [addr]
        try:
            ip4 = addr.value_for_protocol("ip4")
        except multiaddr.exceptions.ProtocolLookupError:
            ip4 = None
        if ip4 == "0.0.0.0":
            port = addr.value_for_protocol("tcp")
            expanded = [
                multiaddr.Multiaddr(f"/ip4/{ip}/tcp/{port}") for ip in interface_ipv4_addrs()
            ]
        for one in expanded:
            if str(one) not in seen:
                seen.add(str(one))
                out.append(one)
    return out


def _tcp_multiaddr(host: str, port: int) -> multiaddr.Multiaddr:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen host must be an IP address, got {host!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen port must be 0..65535, got {port}")
    family = "ip4" if ip.version == 4 else "ip6"
    return multiaddr.Multiaddr(f"/{family}/{ip}/tcp/{port}")


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
        self._my_id_bytes = self._my_id.to_bytes()
        self.peer_id: str = self._my_id.to_base58()
        self.max_payload_bytes = max_message_bytes - ENVELOPE_HEADROOM
        self._connect_timeout = connect_timeout
        self._drops: Counter[str] = Counter()
        self._subs: dict[str, trio.MemorySendChannel[Received]] = {}
        self._conns: dict[ID, set[INetConn]] = {}
        self._sender_names: dict[bytes, str] = {}
        self._closing = False
        self._dial_allowed: set[ID] = set()
        self._event_send, self.peer_events = trio.open_memory_channel[PeerEvent](math.inf)

        self._router = _CountingGossipSub(
            protocols=list(GOSSIPSUB_PROTOCOLS),
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=HEARTBEAT_SECONDS,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
            on_drop=self._count_router_drop,
        )
        self._pubsub = _RoutedPubsub(
            host,
            self._router,
            deliver=self._deliver,
            on_bad_stream=self._bad_stream,
            strict_signing=True,
            # Inbound must accept what any peer's queue lets out (1 MiB), even
            # when we publish smaller: an oversized frame resets the stream.
            max_inbound_rpc_size=DefaultMaxMessageSize,
        )
        # py-libp2p starts message seqnos at int(time.time()) and counts up by
        # one per message; message ids are (peer id, seqno) and peers remember
        # them for 120 s. A node restarted within that time under the same
        # peer id would reuse the ids of its last life's messages and have
        # them silently dropped as duplicates. Nanoseconds leave room for a
        # billion messages a second between lives.
        self._pubsub.counter = time.time_ns()
        host.get_network().register_notifee(_PeerNotifee(self))
        self._guard_dials()

    # -- addresses and peers -------------------------------------------------

    def listen_addrs(self) -> list[str]:
        suffix = f"/p2p/{self.peer_id}"
        return [str(a) + suffix for a in _expand_unspecified(self._host.get_transport_addrs())]

    def connected_peers(self) -> list[str]:
        return sorted(p.to_base58() for p in self._conns)

    def remote_addr(self, peer_id: str) -> str | None:
        conns = self._conns.get(ID.from_base58(peer_id))
        if not conns:
            return None
        return _remote_addr_of(next(iter(conns)))

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
        swarm: Any = self._host.get_network()
        swarm.unblock_peer(info.peer_id)
        self._dial_allowed.add(info.peer_id)
        try:
            with trio.fail_after(limit):
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
            socket_stream = None if polite else _find_socket_stream(conn.muxed_conn)
            if socket_stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await socket_stream.aclose()
            self._on_conn_closed(conn)
        swarm.connections.pop(peer, None)

    # -- gossipsub -----------------------------------------------------------

    async def subscribe(
        self, topic: str, *, buffer: int = 1024
    ) -> trio.MemoryReceiveChannel[Received]:
        """Join ``topic``; messages from others arrive on the returned channel.

        One reader per topic. The channel ends when ``unsubscribe(topic)`` is
        called or the host shuts down. A reader that lags more than ``buffer``
        messages loses the excess (counted as ``recv_buffer_full``).
        """
        if topic in self._subs:
            raise ValueError(f"already subscribed to {topic}")
        send, receive = trio.open_memory_channel[Received](buffer)
        self._subs[topic] = send
        try:
            await self._pubsub.subscribe(topic)
        except BaseException:
            # Cancelled (or failed) half way: leave no stale record behind, or
            # the next subscribe to this topic would be refused.
            self._subs.pop(topic, None)
            send.close()
            raise
        return receive

    async def unsubscribe(self, topic: str) -> None:
        send = self._subs.pop(topic, None)
        if send is not None:
            send.close()
        await self._pubsub.unsubscribe(topic)

    async def publish(self, topic: str, data: bytes, *, timeout: float = 2.0) -> PublishResult:
        """Queue ``data`` for ``topic``'s peers, waiting up to ``timeout`` for room.

        Returns a falsy ``PublishResult`` with a reason when the message could
        not be queued; see ``PublishResult``. ``timeout=0`` never waits.
        """
        if self._closing:
            return self._refuse("closed")
        if len(data) > self.max_payload_bytes:
            return self._refuse("oversized")
        deadline = trio.current_time() + timeout
        while True:
            targets, blocked = self._targets(topic)
            if blocked is None:
                break
            if trio.current_time() >= deadline:
                return self._refuse(blocked)
            await trio.sleep(_POLL_SECONDS)
            if self._closing:
                return self._refuse("closed")
        await self._pubsub.publish(topic, data)
        if not targets:
            return PublishResult(False, "no_peers", 0)
        return PublishResult(True, None, len(targets))

    def peers_in_topic(self, topic: str) -> list[str]:
        """Peers that told us they subscribe to ``topic``."""
        return sorted(p.to_base58() for p in self._pubsub.peer_topics.get(topic, ()))

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers our published messages on ``topic`` go to (we must be subscribed)."""
        return sorted(p.to_base58() for p in self._router.mesh.get(topic, ()))

    async def wait_for_topic_peer(self, topic: str, peer_id: str, timeout: float) -> None:
        """Wait until ``peer_id`` announced ``topic``; raises ``trio.TooSlowError``."""
        await self._pubsub.wait_for_subscription(ID.from_base58(peer_id), topic, timeout)

    async def wait_for_mesh_peer(self, topic: str, peer_id: str, timeout: float) -> None:
        """Wait until ``peer_id`` is in our mesh for ``topic``; raises ``trio.TooSlowError``."""
        await self._pubsub.wait_for_mesh(ID.from_base58(peer_id), topic, timeout)

    def pending_counts(self) -> dict[str, int]:
        """RPCs waiting in each peer's outbound queue (libp2p drops at 32)."""
        return {p.to_base58(): len(q) for p, q in self._pubsub.peer_queues.items()}

    def drop_counts(self) -> dict[str, int]:
        """Messages lost or refused so far, by reason.

        ``publish_<reason>``: refused by ``publish`` (nothing sent);
        ``send_queue_full`` / ``send_oversized``: dropped inside the router
        (forwarded messages, races); ``recv_buffer_full``: a subscription
        reader lagged; ``recv_reader_gone``: its reader closed the channel.
        """
        return dict(self._drops)

    # -- streams and health --------------------------------------------------

    async def ping(self, peer_id: str, timeout: float = 5.0) -> float | None:
        """Round-trip time in seconds, or None if the peer did not answer in time.

        Never dials: a peer we are not connected to gives None at once.
        """
        pid = ID.from_base58(peer_id)
        if pid not in self._conns:
            return None
        with trio.move_on_after(timeout):
            try:
                stream = await self._host.new_stream(pid, [PING_PROTOCOL])
            except Exception as exc:
                logger.debug("ping %s: cannot open stream: %s", peer_id, exc)
                return None
            closed = False
            try:
                payload = secrets.token_bytes(PING_LENGTH)
                start = trio.current_time()
                await stream.write(payload)
                echo = await read_exactly(stream, PING_LENGTH)
                rtt = trio.current_time() - start
                if echo != payload:
                    logger.debug("ping %s: wrong echo", peer_id)
                    return None
                await stream.close()
                closed = True
                return rtt
            except Exception as exc:
                logger.debug("ping %s failed: %s", peer_id, exc)
                return None
            finally:
                if not closed:
                    await _reset_quietly(stream)
        return None

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``; an exception in ``handler`` resets that stream only."""

        async def guarded(stream: INetStream) -> None:
            try:
                await handler(stream)
            except Exception:
                logger.warning("stream handler for %s failed", protocol, exc_info=True)
                await _reset_quietly(stream)

        self._host.set_stream_handler(TProtocol(protocol), guarded)

    async def open_stream(self, peer_id: str, protocol: str) -> Stream:
        """Open a stream to a connected peer; never dials (``connect`` first)."""
        pid = ID.from_base58(peer_id)
        if pid not in self._conns:
            raise ConnectError(f"not connected to {peer_id}")
        return await self._host.new_stream(pid, [TProtocol(protocol)])

    # -- internals -----------------------------------------------------------

    def _guard_dials(self) -> None:
        """Let only ``connect()`` open new connections.

        Without this, py-libp2p dials on its own: ``host.new_stream`` dials
        a peer that is not connected, and pubsub retries its stream after
        the stream dies but before the connection is seen closed, so a peer
        that just disconnected (or shut down) is dialed right back.
        """
        swarm: Any = self._host.get_network()
        dial_peer = swarm.dial_peer

        async def guarded_dial_peer(peer_id: ID) -> list[INetConn]:
            if peer_id not in self._dial_allowed and not swarm.get_connections(peer_id):
                raise SwarmException(f"p2psync: dial to {peer_id} not requested by connect()")
            result: list[INetConn] = await dial_peer(peer_id)
            return result

        swarm.dial_peer = guarded_dial_peer

    def _targets(self, topic: str) -> tuple[set[ID], str | None]:
        """The peers gossipsub would send to now, and why we must wait, if so."""
        pubsub, router = self._pubsub, self._router
        subscribers = {p for p in pubsub.peer_topics.get(topic, ()) if p in pubsub.peers}
        if topic in router.mesh:
            targets = {p for p in router.mesh[topic] if p in pubsub.peers}
            if not targets and subscribers:
                return targets, "mesh_pending"
        else:
            # Not subscribed: the router picks up to D fanout peers among the
            # subscribers; checking them all is the conservative superset.
            targets = subscribers
        for peer in targets:
            queue = pubsub.peer_queues.get(peer)
            if queue is not None and len(queue) >= _QUEUE_HIGH_WATER:
                return targets, "queue_full"
        return targets, None

    def _refuse(self, reason: str) -> PublishResult:
        self._drops[f"publish_{reason}"] += 1
        return PublishResult(False, reason, 0)

    def _count_router_drop(self, reason: str, messages: int) -> None:
        self._drops[f"send_{reason}"] += messages

    def _deliver(self, msg: rpc_pb2.Message) -> None:
        if msg.from_id == self._my_id_bytes:
            return
        sender = self._sender_names.get(msg.from_id)
        if sender is None:
            sender = ID(msg.from_id).to_base58()
            if len(self._sender_names) < 10_000:
                self._sender_names[msg.from_id] = sender
        for topic in msg.topicIDs:
            channel = self._subs.get(topic)
            if channel is None:
                continue
            try:
                channel.send_nowait(Received(sender, msg.data))
            except trio.WouldBlock:
                self._drops["recv_buffer_full"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drops["recv_reader_gone"] += 1

    def _on_conn_opened(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        conns = self._conns.setdefault(peer, set())
        first = not conns
        conns.add(conn)
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
            self._emit(
                PeerEvent(
                    "disconnected", peer.to_base58(), _remote_addr_of(conn), _direction_of(conn)
                )
            )

    def _bad_stream(self, peer: ID, reason: str) -> None:
        """A peer's pubsub stream broke with garbage: count it, cut the peer."""
        self._drops["recv_bad_rpc"] += 1
        self._emit(PeerEvent("misbehaved", peer.to_base58(), None, reason))

    def _emit(self, event: PeerEvent) -> None:
        # Nobody listens any more, or we are past shutdown: nothing to tell.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._event_send.send_nowait(event)

    async def _shutdown(self) -> None:
        self._closing = True
        for send in self._subs.values():
            send.close()
        self._subs.clear()
        for peer in list(self._conns):
            try:
                await self._host.disconnect(peer)
            except Exception:
                logger.debug("error disconnecting %s during shutdown", peer, exc_info=True)
        self._event_send.close()


def _find_socket_stream(obj: object, depth: int = 6) -> trio.SocketStream | None:
    """The TCP stream under a muxed connection (yamux -> noise -> raw -> trio)."""
    if isinstance(obj, trio.SocketStream):
        return obj
    if depth == 0:
        return None
    for name in ("secured_conn", "conn", "stream", "read_writer", "read_writecloser"):
        inner = getattr(obj, name, None)
        if inner is not None and inner is not obj:
            found = _find_socket_stream(inner, depth - 1)
            if found is not None:
                return found
    return None


async def _reset_quietly(stream: INetStream) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await stream.reset()
        except Exception:
            logger.debug("stream reset failed", exc_info=True)


@asynccontextmanager
async def open_libp2p_host(
    seed: bytes,
    listen_host: str,
    listen_port: int,
    *,
    max_message_bytes: int = DefaultMaxMessageSize,
    connect_timeout: float = 10.0,
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
    listen = _tcp_multiaddr(listen_host, listen_port)
    key_pair = create_new_key_pair(seed)
    host = new_host(
        key_pair=key_pair,
        sec_opt={
            NOISE_PROTOCOL_ID: NoiseTransport(
                key_pair, noise_privkey=create_x25519_key_pair().private_key
            )
        },
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=[listen],
        enable_mDNS=False,
        enable_upnp=False,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
        addrs_factory=_expand_unspecified,
        disable_identify_address_discovery=True,
    )
    swarm: Any = host.get_network()
    swarm.auto_connector = _NoAutoConnector(swarm)
    net = Libp2pHost(host, max_message_bytes=max_message_bytes, connect_timeout=connect_timeout)

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
