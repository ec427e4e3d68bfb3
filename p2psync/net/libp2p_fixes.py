"""Everything p2psync changes in py-libp2p 0.8.1, each piece with its reason.

``host.py`` builds the host from these pieces; nothing else imports them.
The gossipsub router has a module of its own (``router.py``), and so has the
pubsub receive path (``pubsub_receive.py``).
Every note names the library behaviour it corrects, measured here. Two
fixes live in ``host.py`` because they are the shape of its code rather than
a piece to plug in:

- Shutdown order: disconnect every peer, then stop gossipsub, then pubsub,
  then the host. Stopping pubsub while peers are still connected crashes
  ("Nursery is closed to new arrivals"). The teardown is shielded (bounded)
  so it also runs when the surrounding scope is cancelled.
- A silently vanished peer is not noticed by libp2p; ``Libp2pHost.ping()``
  (a yamux PING frame, ``net/liveness.py``; ``/ipfs/ping/1.0.0`` on other
  muxers) is the health check.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee, ISubscriptionAPI
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import OutBoundQueueSize, RpcQueue
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2psync.net.addresses import interface_ipv4_addrs
from p2psync.net.peer_record import RecordOnce
from p2psync.net.pubsub_receive import NoValidationCache, read_rpcs
from p2psync.net.pubsub_send import encode_rpcs, send_queued, widen, write_bytes
from p2psync.net.router import P2psyncGossipSub, may_join
from p2psync.net.yamux_reads import read_bodies_without_a_timer
from p2psync.net.yamux_windows import grant_window_at_half

logger = logging.getLogger(__name__)


# --- transport: what new_host() is given ------------------------------------


def noise_only(key_pair: KeyPair) -> dict[TProtocol, Any]:
    """``sec_opt``: Noise only. The default also offers TLS, SECIO and *plaintext*."""
    return {
        NOISE_PROTOCOL_ID: NoiseTransport(
            key_pair, noise_privkey=create_x25519_key_pair().private_key
        )
    }


# ``muxer_opt``: yamux only (the default also offers mplex).
YAMUX_ONLY: dict[TProtocol, Any] = {TProtocol(YAMUX_PROTOCOL_ID): Yamux}


def one_connection_per_peer() -> ConnectionConfig:
    """Without ``max_connections_per_peer=1`` each dial costs about 250 ms."""
    return ConnectionConfig(max_connections_per_peer=1)


def expand_unspecified(addrs: Iterable[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """``addrs_factory``: a bound 0.0.0.0 becomes the interface IPv4 addresses.

    py-libp2p advertises the bound address as is, and 0.0.0.0 cannot be
    dialed. Identify's observed addresses are switched off next to this
    (``disable_identify_address_discovery``): on TCP they are the peers'
    ephemeral dial ports. Used for ``listen_addrs()`` and for what identify
    and signed peer records advertise.
    """
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


def new_tcp_host(key_pair: KeyPair, listen: multiaddr.Multiaddr, **options: Any) -> IHost:
    """A py-libp2p host as every p2psync process runs one: TCP on ``listen``,
    Noise and yamux only, no mDNS or UPnP of py-libp2p's own, 0.0.0.0
    advertised as the interface addresses, and no auto-dialing (only
    ``connect()`` dials). ``options`` go to ``new_host`` as they are."""
    grant_window_at_half()
    read_bodies_without_a_timer()
    host = new_host(
        key_pair=key_pair,
        sec_opt=noise_only(key_pair),
        muxer_opt=YAMUX_ONLY,
        listen_addrs=[listen],
        enable_mDNS=False,
        enable_upnp=False,
        addrs_factory=expand_unspecified,
        **options,
    )
    disable_auto_connector(host.get_network())
    return host


# --- dialing: only connect() may dial -----------------------------------------


class _NoAutoConnector(AutoConnector):
    async def start(self) -> None:
        # Leaving `_started` False makes every auto-dial path a no-op.
        await trio.lowlevel.checkpoint()


def disable_auto_connector(swarm: Any) -> None:
    """The swarm's AutoConnector re-dials every peer in the peerstore while
    there are fewer than ``min_connections`` (50) connections, i.e. always on
    a LAN. The daemon owns dial policy (static peers with backoff; cutting off
    a misbehaving peer must stick), so it is switched off."""
    swarm.auto_connector = _NoAutoConnector(swarm)


def guard_dials(swarm: Any, allowed: Container[ID]) -> None:
    """Let the swarm dial only peers in ``allowed`` (those ``connect()`` is dialing).

    Without this, py-libp2p dials on its own: ``host.new_stream`` dials a
    peer that is not connected, and pubsub retries its stream after the
    stream dies but before the connection is seen closed, so a peer that just
    disconnected (or shut down) is dialed right back.
    """
    dial_peer = swarm.dial_peer

    async def guarded_dial_peer(peer_id: ID) -> list[INetConn]:
        if peer_id not in allowed and not swarm.get_connections(peer_id):
            raise SwarmException(f"p2psync: dial to {peer_id} not requested by connect()")
        result: list[INetConn] = await dial_peer(peer_id)
        return result

    swarm.dial_peer = guarded_dial_peer


def forget_failed_dials(swarm: Any, peer_id: ID) -> None:
    """The swarm refuses to dial a peer for 60 s after "all addresses failed";
    the daemon's own backoff decides when to retry, so clear that cache."""
    swarm.unblock_peer(peer_id)


def find_socket_stream(obj: object, depth: int = 6) -> trio.SocketStream | None:
    """The TCP stream under a muxed connection (yamux -> noise -> raw -> trio).

    A peer that vanished without a FIN can hang yamux's polite close forever,
    and libp2p then keeps the dead connection; closing this socket under the
    muxer is the only way out.
    """
    if isinstance(obj, trio.SocketStream):
        return obj
    if depth == 0:
        return None
    for name in ("secured_conn", "conn", "stream", "read_writer", "read_writecloser"):
        inner = getattr(obj, name, None)
        if inner is not None and inner is not obj:
            found = find_socket_stream(inner, depth - 1)
            if found is not None:
                return found
    return None


# --- gossipsub -------------------------------------------------------------------

# A full outbound queue drops with only a DEBUG log. Our publishing waits
# while a target's queue is at or above this mark (py-libp2p's size of 32, less a
# few slots for GRAFT/PRUNE/IHAVE, which share the queue); the room above it,
# up to ``pubsub_send.PEER_QUEUE_RPCS``, is for forwards, which cannot wait.
QUEUE_HIGH_WATER = OutBoundQueueSize - 4

SIGNING_PREFIX = PUBSUB_SIGNING_PREFIX.encode()


class RoutedPubsub(Pubsub):
    """Pubsub whose delivery and stream errors go to the owner.

    - Receive side: ``Pubsub.subscribe`` hands out a channel of 32 and
      ``notify_subscriptions`` drops with ``send_nowait`` when the reader lags
      (one test run: 17 of 200 delivered). Every message goes to
      ``deliver(message)`` instead, which feeds channels as large as the
      owner wants.
    - py-libp2p lets a protobuf DecodeError (a corrupt or hostile RPC) escape
      its read loop, and the exception then takes down the whole pubsub
      service and the node with it. Here that peer's stream is dropped and
      ``on_bad_stream(peer, reason)`` tells the owner, who disconnects it;
      the peer can reconnect and anti-entropy repairs whatever was lost.
    - Message ids are (peer id, seqno) and peers remember them for 120 s,
      while seqnos start at ``int(time.time())`` and count up by one: a node
      restarted within that time under the same peer id would reuse its last
      life's ids and have those messages dropped as duplicates. Seqnos start
      at nanoseconds here, room for a billion messages a second between lives.
    - Every RPC written to a peer's pubsub stream goes through ``write_rpcs``
      (``write_msg`` included), and here one writer at a time per stream
      (``_write_locks``). py-libp2p
      has several writers on that one stream: the per-peer queue task
      (``Pubsub.handle_sending_messages``) and, bypassing the queue,
      ``GossipSub.send_recent_messages`` (the mcache replay to a peer that
      just subscribed, spawned by ``Pubsub.handle_subscription`` and
      ``_handle_new_peer``; the hello is written before the stream is
      registered, so alone). yamux writes a message as several frames (at
      most 64 KiB each, fewer when the send window is short) and yields
      between them, so two writers interleave their frames: the receiver's
      varint-delimited protobuf stream is corrupt (DecodeError) and the peer
      is cut and redialed.
      Measured: a peer subscribing while large messages flowed to it read
      garbage 25 times in 8 s; never since.
    - A subscription, ours or a peer's, clears the router's back-off for it
      (``P2psyncGossipSub.forget_backoff``), so a resubscribed pair topic
      meshes again at once instead of after 10 to 60 s.
    - ``last_heard[peer]``: when the peer's pubsub stream last delivered
      bytes (trio time). A ping waits behind whatever the connection already
      carries: while a large backfill streams (yamux lets a stream's window
      grow to 16 MiB) or a flood arrives faster than the reader takes it,
      pings took 1 to 3 s and more here and health checks cut busy, healthy
      peers. A peer whose data keeps arriving is alive.
    - Our signed peer record rides in a stream's hello, not in every RPC
      (``peer_record.py``).
    - Messages are read with buffered reads and handled in line, and every
      one the seen cache does not hold is validated (``pubsub_receive.py``).
    - A subscription made while a peer registers still reaches it
      (``_handle_new_peer``).
    - Our own publications skip the checks meant for others' (``publish``).
    - The per-peer sending task writes what the peer's queue holds in one
      write (``pubsub_send.send_queued``), not one RPC per write, and the
      queue holds 128 RPCs, not 32 (``pubsub_send.PEER_QUEUE_RPCS``).
    - The cached window is replayed to a subscribing peer once per topic and
      connection (``_replay_recent_messages``).
    """

    def __init__(
        self,
        host: IHost,
        router: P2psyncGossipSub,
        *,
        deliver: Callable[[rpc_pb2.Message], None],
        on_bad_stream: Callable[[ID, str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(host, router, **kwargs)
        self._deliver = deliver
        self._on_bad_stream = on_bad_stream
        self.counter = time.time_ns()
        self._router = router
        self.last_heard: dict[ID, float] = {}
        self.refused: Counter[str] = Counter()  # messages read_rpcs skipped, by reason
        self._write_locks: weakref.WeakKeyDictionary[INetStream, trio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._replayed: weakref.WeakKeyDictionary[INetStream, set[str]] = (
            weakref.WeakKeyDictionary()
        )
        self._records = RecordOnce()
        self.validation_cache = NoValidationCache()
        self._subscription_changes = 0
        # (change count, topic) of recent unsubscribes: a registration lasts
        # far fewer than this many changes.
        self._dropped: deque[tuple[int, str]] = deque(maxlen=1024)

    async def subscribe(self, topic_id: str) -> ISubscriptionAPI:
        # Before the announcement goes out: the peers' GRAFTs answer it.
        self._router.forget_backoff(topic_id)
        self._subscription_changes += 1
        return await super().subscribe(topic_id)

    async def unsubscribe(self, topic_id: str) -> None:
        self._subscription_changes += 1
        self._dropped.append((self._subscription_changes, topic_id))
        await super().unsubscribe(topic_id)

    async def _handle_new_peer(self, peer_id: ID) -> None:
        """Register ``peer_id`` as py-libp2p does, then tell it of subscriptions
        that changed meanwhile. py-libp2p builds the hello (our subscriptions)
        and awaits its write before it registers the peer, and a (un)subscribe
        announces itself only to registered peers: one made in between never
        reached the peer, which then never sent us that topic's messages
        (about 1 start of three hosts in 15, ``test_router_pending``)."""
        changes, before = self._subscription_changes, set(self.topic_ids)
        await super()._handle_new_peer(peer_id)
        queue = self.peer_queues.get(peer_id)
        if queue is not None:
            widen(queue)
        if queue is None or self._subscription_changes == changes:
            return
        now = set(self.topic_ids)
        # Dropped since we started: the hello (built later) may have named them.
        dropped = (before | {t for at, t in self._dropped if at > changes}) - now
        catch_up = [rpc_pb2.RPC.SubOpts(subscribe=True, topicid=t) for t in sorted(now)]
        catch_up += [rpc_pb2.RPC.SubOpts(subscribe=False, topicid=t) for t in sorted(dropped)]
        # Behind whatever is queued already (older states), so the last word
        # on each topic the peer reads is the current one.
        if not queue.push(rpc_pb2.RPC(subscriptions=catch_up)):
            for announce in catch_up:  # py-libp2p's retry re-checks the state first
                self._schedule_announce_retry(peer_id, announce)

    def handle_subscription(self, origin_id: ID, sub_message: rpc_pb2.RPC.SubOpts) -> None:
        if sub_message.subscribe:
            if not may_join(sub_message.topicid, origin_id):
                # Someone else's pair topic: as a subscriber the heartbeat
                # would graft it into our mesh there (see ``handle_graft``).
                logger.debug("%s subscribed to a pair topic not its own: ignored", origin_id)
                return
            self._router.forget_backoff(sub_message.topicid, origin_id)
        super().handle_subscription(origin_id, sub_message)

    async def _replay_recent_messages(self, peer_id: ID, topic: str) -> None:
        """py-libp2p's replay of a topic's cached window to a peer that
        subscribes, once per topic and pubsub stream (a connection carries one
        of ours; a failed replay is not retried on it). py-libp2p re-armed it at
        each unsubscribe: a peer looping UNSUBSCRIBE/SUBSCRIBE (70 bytes) had
        the whole window written to it each time, straight onto the stream,
        outside its queue, and one task waited per loop if it stopped reading."""
        stream = self.peers.get(peer_id)
        if stream is None:
            return
        replayed = self._replayed.setdefault(stream, set())
        if topic not in replayed:
            replayed.add(topic)
            await super()._replay_recent_messages(peer_id, topic)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        return await self.write_rpcs(stream, [rpc_msg])

    async def write_rpcs(self, stream: INetStream, rpcs: Sequence[rpc_pb2.RPC]) -> bool:
        """Write ``rpcs`` in order in one stream write; False if the stream is gone."""
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:
            now = trio.current_time()
            hello = self.peers.get(stream.muxed_conn.peer_id) is stream
            data, record = encode_rpcs(stream, rpcs, self._records, now, hello=hello)
            if not await write_bytes(stream, data):
                self.stream_failed(stream.muxed_conn.peer_id, stream)
                return False
            if record is not None:
                self._records.written(stream, record, now)
            return True

    def stream_failed(self, peer: ID, stream: INetStream) -> None:
        """A write to ``stream`` failed: the peer is dropped if that is still
        its stream (py-libp2p dropped it whichever stream failed, so a late
        failure on a replaced stream tore down the new one)."""
        if self.peers.get(peer) is stream:
            self._handle_dead_peer(peer)

    async def handle_sending_messages(
        self, peer_id: ID, stream: INetStream, queue: RpcQueue
    ) -> None:
        await send_queued(self, peer_id, stream, queue)

    async def publish(self, topic_id: str | list[str], data: bytes) -> None:
        """``Pubsub.publish`` without ``push_msg``'s checks of a message from
        elsewhere: py-libp2p verified the signature it had just made (90 us)
        and looked the fresh seqno up in the seen cache and the blacklists;
        our validators pass our own messages anyway."""
        if not self.strict_signing or self.sign_key is None:
            await super().publish(topic_id, data)
            return
        msg = rpc_pb2.Message(
            data=data,
            topicIDs=[topic_id] if isinstance(topic_id, str) else topic_id,
            from_id=self.my_id.to_bytes(),
            seqno=self._next_seqno(),
        )
        msg.signature = self.sign_key.sign(SIGNING_PREFIX + msg.SerializeToString())
        msg.key = self.host.get_public_key().serialize()
        self._mark_msg_seen(msg)
        self.notify_subscriptions(msg)
        await self.router.publish(self.my_id, msg)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        self._deliver(publish_message)

    async def continuously_read_stream(self, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        try:
            await read_rpcs(self, stream, self.last_heard, self.refused)
        except Exception as exc:
            logger.warning("unreadable pubsub stream from %s: %r", peer_id, exc)
            with contextlib.suppress(Exception):
                await stream.reset()
            self._handle_dead_peer(peer_id)
            self._on_bad_stream(peer_id, type(exc).__name__)


def send_targets(pubsub: Pubsub, router: GossipSub, topic: str) -> tuple[set[ID], str | None]:
    """The peers gossipsub would send a message on ``topic`` to now, and why
    publishing must wait, if it must (``"mesh_pending"`` or ``"queue_full"``).

    ``Pubsub.publish`` never blocks: a full per-peer queue drops the message
    silently. And py gossipsub sends only to mesh peers of a subscribed topic
    (no flood publish), so a message published before the mesh forms (at the
    latest by the next heartbeat) reaches nobody.
    """
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
        if queue is not None and len(queue) >= QUEUE_HIGH_WATER:
            return targets, "queue_full"
    return targets, None


class ConnectionNotifee(INotifee):
    """An INotifee for connections only: py-libp2p's interface also asks for
    stream and listen events, which our notifees ignore."""

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()
