"""Puts a node on the network: libp2p host, topics, discovery, peer sessions.

Task tree (all under the nursery of `serve_network`):

    serve_network
      ├─ live reader         live topic -> engine.live_received
      ├─ live sender         PublishLive actions, paced through one channel
      ├─ query reader        `ls r all` requests -> answer on the pair topic
      ├─ peer events         connect / disconnect -> start / cancel sessions
      ├─ session per peer    pair-topic reader + sender + health check
      ├─ peer policy tick    dials, session resumes (core/peer_policy.py via dialing.py)
      ├─ local discovery     <data root>/run/<network>/*.json
      └─ mDNS                zeroconf, unless --no-mdns

Engine actions are synchronous; sends are queued into bounded channels
drained by sender tasks, and a full channel is a counted drop that the next
anti-entropy round repairs (SPEC invariant 5).
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from libp2p.peer.id import ID

from p2psync.core import protocol
from p2psync.core.peer_policy import CUT_NO_PUBSUB, CUT_UNRESPONSIVE, PeerPolicy, PolicyAction
from p2psync.core.query import QueryReply
from p2psync.core.reasons import Drop, Reason
from p2psync.net.addresses import peer_id_of
from p2psync.net.gossip import Validator
from p2psync.net.host import Libp2pHost, PeerEvent, open_libp2p_host
from p2psync.net.local import serve_local_discovery
from p2psync.net.topics import live_topic, query_topic, sync_topic
from p2psync.node.batch_checks import check_batches_ahead
from p2psync.node.config import NodeConfig
from p2psync.node.dialing import PeerDriver
from p2psync.node.node import Node
from p2psync.node.observer import Observer
from p2psync.node.peers import peer_views
from p2psync.node.queries import RecipeQueries
from p2psync.node.service import PeerView, RecipeView
from p2psync.node.transport import Transport
from p2psync.node.validation import TopicChecks

if TYPE_CHECKING:
    # trio.TaskStatus itself: libp2p installs trio-typing, whose stubs shadow
    # trio's own types and spell it this way.
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

OUTBOX_SIZE = 64
LIVE_OUTBOX_SIZE = 1024
LIVE_GROUP_ENTRIES = 256  # live entries waiting together, applied in one commit
MESH_WAIT_SECONDS = 10.0
# The kernel ends a TCP connection to a host that vanished in about 10 s
# (liveness.keep_alive: keep-alive probes, user timeout), at no cost to us.
# The yamux ping (one frame, answered by the peer's muxer) is left to catch a
# peer whose kernel answers while its process hangs, and relayed circuits: a
# connection quiet this long is pinged, two unanswered in a row cut it (about
# 33 to 48 s). Every 3 s it cost ~0.4 % of a core per node with 15 idle peers.
HEALTH_INTERVAL = 15.0
HEALTH_TIMEOUT = 3.0
HEALTH_FAILURES = 2
PUBLISH_TIMEOUT = 5.0
PUBSUB_REOPEN_SECONDS = 10.0


@dataclass
class _Session:
    peer_id: str
    topic: str
    outbox_send: trio.MemorySendChannel[bytes]
    outbox_receive: trio.MemoryReceiveChannel[bytes]
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    ready: bool = False


class NetworkTransport(Transport):
    """The node's window onto libp2p; all methods run in the trio thread."""

    def __init__(
        self,
        node: Node,
        host: Libp2pHost,
        config: NodeConfig,
        observer: Observer,
        nursery: trio.Nursery,
    ) -> None:
        self.node = node
        self.host = host
        self.config = config
        self.observer = observer
        self.nursery = nursery
        self.policy = PeerPolicy(
            host.peer_id, random.Random(), allow=config.allow_peers, network=config.network
        )
        self.sessions: dict[str, _Session] = {}
        # --relay peers are no members: their connections skip the policy
        # (node/relaying.py keeps them); `is_relayed` is set while it runs.
        self.relay_ids = frozenset(peer_id_of(addr) for addr in config.relays)
        self.is_relayed: Callable[[str], bool] = lambda _peer: False
        self.live_send, self.live_receive = trio.open_memory_channel[bytes](LIVE_OUTBOX_SIZE)
        self.driver = PeerDriver(
            host,
            self.policy,
            observer,
            nursery,
            start_session=self._start_session,
            stop_session=self._stop_session,
        )
        self.queries = RecipeQueries(
            host,
            query_topic(config.network),
            send=self.send,
            published=node.list_recipes,
            observer=observer,
            version=node.store.digest,  # changes with every visible recipe change
        )

    # ------------------------------------------------------------ Effects and views

    def send(self, peer: str, data: bytes) -> bool:
        session = self.sessions.get(peer)
        if session is None or not session.ready:
            return False
        return _offer(session.outbox_send, data)

    def publish_live(self, data: bytes) -> bool:
        if not self.policy.connected_ids():
            return False
        return _offer(self.live_send, data)

    def listen_addrs(self) -> list[str]:
        return self.host.listen_addrs()

    def peers(self) -> list[PeerView]:
        return peer_views(self.policy, self.is_relayed)

    def query_received(self, peer: str, query_id: int) -> None:
        self.queries.answer(peer, query_id)

    def query_answered(self, peer: str, reply: QueryReply) -> None:
        self.queries.answered(peer, reply)

    def round_finished(self, peer: str, ok: bool, seconds: float) -> None:
        wall_ms = self.node.now().wall_ms
        self._policy_event(self.policy.round_finished, peer, ok, seconds, wall_ms)

    def restart_session(self, peer: str) -> None:
        session = self.sessions.get(peer)
        if session is None:
            return
        if not self.host.has_pubsub_stream(peer):
            self.nursery.start_soon(self._reopen_pubsub_stream, peer)
        session.cancel.cancel()  # its end resumes a fresh session if still connected

    async def _reopen_pubsub_stream(self, peer: str) -> None:
        """Without our pubsub stream to the peer a new session would stall
        again. py-libp2p lost it (or never opened it: seen when 32 nodes
        dialed each other at once) and gave up re-opening it; try once more,
        then cut the connection and re-dial: a new one brings new streams."""
        if await self.host.open_pubsub_stream(peer, PUBSUB_REOPEN_SECONDS):
            log.info("re-opened the pubsub stream to %s", peer)
        elif peer in self.policy.connected_ids():  # not if it left meanwhile
            log.warning("no pubsub stream to %s on this connection; reconnecting", peer)
            self._policy_event(self.policy.peer_lost, peer, CUT_NO_PUBSUB)

    def penalize(self, peer: str, reason: str) -> None:
        """Score a peer down; too many offences in a short time get it banned."""
        self._policy_event(self.policy.offence, peer, reason)

    async def remote_published(
        self, peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        connected = [p for p in self.policy.connected_ids() if p in self.sessions]
        return await self.queries.ask(connected, peer_prefix, timeout)

    # ------------------------------------------------------------ the peer policy

    def _policy_event(self, event: Callable[..., list[PolicyAction]], *args: object) -> None:
        """Hand the policy one event, stamped with the time, and carry out its answer."""
        self.driver.run(event(*args, self.driver.now()))
        self.observer.set_peers_connected(len(self.policy.connected_ids()))

    def discovered(self, peer_id: str, addrs: list[str], source: str) -> None:
        self._policy_event(self.policy.discovered, peer_id, addrs, source)

    def add_static_peer(self, multiaddr: str) -> None:
        self._policy_event(self.policy.add_static, peer_id_of(multiaddr), multiaddr)

    # ------------------------------------------------------------ sessions

    async def watch_peer_events(self) -> None:
        async for event in self.host.peer_events:
            self._on_peer_event(event)

    def _on_peer_event(self, event: PeerEvent) -> None:
        peer = event.peer_id
        if peer in self.relay_ids:
            return
        if event.kind == "misbehaved":
            # Its pubsub stream is gone; a clean reconnect restores it.
            log.warning(
                "peer %s sent an unreadable stream (%s); reconnecting", peer, event.direction
            )
            self._policy_event(self.policy.peer_lost, peer, "unreadable_stream")
        elif event.kind == "connected":
            self._policy_event(self.policy.connected, peer, event.addr)
            # Any libp2p node may have dialed us or been found: is it of our network?
            self.nursery.start_soon(self.driver.learn_network, peer, self.config.network)
        elif peer not in self.host.connected_peers():  # else another connection is still up
            self._policy_event(self.policy.disconnected, peer)

    def _stop_session(self, peer: str) -> None:
        session = self.sessions.get(peer)
        if session is not None:
            session.cancel.cancel()

    def _start_session(self, peer: str) -> None:
        if peer in self.sessions:
            return  # the old one is winding down; its end resumes one (policy)
        send, receive = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        topic = sync_topic(self.config.network, self.host.peer_id, peer)
        session = _Session(peer, topic, send, receive)
        self.sessions[peer] = session
        self.nursery.start_soon(self._run_session, session)

    async def _run_session(self, session: _Session) -> None:
        peer = session.peer_id
        node = self.node
        try:
            with session.cancel:
                try:
                    receive = await self.host.subscribe(
                        session.topic, validator=self._validator(TopicChecks().pair, peer)
                    )
                    with trio.move_on_after(MESH_WAIT_SECONDS):
                        await self.host.wait_for_mesh_peer(session.topic, peer, MESH_WAIT_SECONDS)
                    session.ready = True
                    node.run_actions(node.engine.peer_connected(peer, node.now()))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._session_sender, session)
                        nursery.start_soon(self._health_check, session)
                        # The validator let through only what this peer signed and handed us.
                        expects = functools.partial(node.engine.expects_batches, peer)
                        async for data, verified in check_batches_ahead(nursery, receive, expects):
                            node.engine.checked_signatures.note_verified(verified)
                            node.run_actions(node.engine.message_received(peer, data, node.now()))
                        nursery.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await self.host.unsubscribe(session.topic)
        finally:
            session.ready = False
            if self.sessions.get(peer) is session:
                del self.sessions[peer]
            node.run_actions(node.engine.peer_disconnected(peer, node.now()))
            # The policy resumes a session shortly if the peer is still (or
            # again) connected: its "connected" event may have found this one.
            shutting_down = trio.current_effective_deadline() == float("-inf")
            if not shutting_down:
                self._policy_event(self.policy.session_ended, peer)

    async def _session_sender(self, session: _Session) -> None:
        async for data in session.outbox_receive:
            result = await self.host.publish(session.topic, data, timeout=PUBLISH_TIMEOUT)
            if not result:
                self.observer.dropped(f"publish_{result.reason}")

    async def _health_check(self, session: _Session) -> None:
        """Notice a peer that vanished without closing its connection.

        Any bytes from the peer prove it alive (its data, gossip control, its
        own pings): only a connection quiet for a whole interval is pinged,
        and since our ping is news to the peer, of two healthy idle peers
        usually only one pings. An answer that queues behind the data the
        peer is busy sending us still comes as bytes: a busy peer is no miss.
        The checks start at a random phase, so a node's peers are not all
        pinged at the same moment.
        """
        peer = session.peer_id
        failures = 0
        await trio.sleep(random.uniform(0, HEALTH_INTERVAL))
        while True:
            await trio.sleep(HEALTH_INTERVAL)
            quiet = self.host.quiet_for(peer)
            if quiet is not None and quiet < HEALTH_INTERVAL:
                failures = 0  # it spoke: no ping needed
                continue
            rtt = await self.host.ping(peer, timeout=HEALTH_TIMEOUT)
            alive = rtt is not None or self.host.heard_from(peer, HEALTH_TIMEOUT)
            failures = 0 if alive else failures + 1
            if failures >= HEALTH_FAILURES:
                log.info("peer %s stopped answering pings; disconnecting", peer)
                # Disconnects in the service's nursery, stops this session and
                # re-dials a while: all through the policy.
                self._policy_event(self.policy.peer_lost, peer, CUT_UNRESPONSIVE)
                session.cancel.cancel()
                return

    # ------------------------------------------------------------ live and query topics

    async def run_live_reader(self) -> None:
        node = self.node
        validator = self._validator(TopicChecks(node.engine.checked_signatures).live)
        receive = await self.host.subscribe(live_topic(self.config.network), validator=validator)
        async for received in receive:
            # A backlog is applied together: one commit for up to ~256 entries.
            backlog, entries = [received], protocol.entries_claimed(received.data)
            while entries < LIVE_GROUP_ENTRIES:
                try:
                    backlog.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                entries += protocol.entries_claimed(backlog[-1].data)
            now = node.now()
            # Blame is the forwarder's, budgets the publisher's (live_received).
            node.run_grouped(
                [node.engine.live_received(r.forwarder, r.data, now, publisher=r.sender)
                 for r in backlog]
            )  # fmt: skip

    async def run_live_sender(self) -> None:
        topic = live_topic(self.config.network)
        async for data in self.live_receive:
            result = await self.host.publish(topic, data, timeout=PUBLISH_TIMEOUT)
            if not result:
                self.observer.dropped(f"publish_{result.reason}")

    async def run_query_reader(self) -> None:
        node = self.node
        validator = self._validator(TopicChecks().query)
        receive = await self.host.subscribe(query_topic(self.config.network), validator=validator)
        async for received in receive:
            if received.sender in self.sessions:
                # Through the engine, which holds the asker to its query budget.
                node.run_actions(
                    node.engine.message_received(received.sender, received.data, node.now())
                )

    def _validator(
        self, check: Callable[[bytes], Reason | None], pair_peer: str | None = None
    ) -> Validator:
        """A router validator: `check` the payload (and, on a pair topic, that it
        comes from that peer); a refusal is counted and blamed on the forwarder."""

        def validate(forwarder: str, sender: str, data: bytes) -> bool:
            # On a pair topic only the pair's other peer may sign or hand us anything.
            wrong_sender = pair_peer is not None and (sender, forwarder) != (pair_peer, pair_peer)
            reason: str | None = Drop.WRONG_SENDER if wrong_sender else check(data)
            if reason is None:
                return True
            self.observer.dropped(reason)
            self.penalize(forwarder, reason)
            return False

        return validate

    async def run_drop_counter(self) -> None:
        """Export the drops that happen inside the libp2p wrapper."""
        seen: dict[str, int] = {}
        while True:
            await trio.sleep(1.0)
            for reason, count in self.host.drop_counts().items():
                if reason.startswith("publish_"):
                    continue  # already counted where publish() was refused
                if count > seen.get(reason, 0):
                    self.observer.dropped(reason, count - seen.get(reason, 0))
                    seen[reason] = count


def _offer(outbox: trio.MemorySendChannel[bytes], data: bytes) -> bool:
    """Queue without waiting; False when the bounded outbox is full or closed."""
    try:
        outbox.send_nowait(data)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


class NetworkStartError(Exception):
    """The node could not get onto the network (e.g. its port is taken)."""


def pubsub_refusals(config: NodeConfig) -> Callable[[ID], bool]:
    """The peers this node talks no pubsub with: every --relay (no member: it
    must not read our topics) and, in a closed network, anyone off the list."""
    relays = frozenset(ID.from_base58(peer_id_of(addr)) for addr in config.relays)
    allowed = frozenset(ID.from_base58(peer) for peer in config.allow_peers)
    return lambda peer: peer in relays or (bool(allowed) and peer not in allowed)


async def serve_network(
    node: Node,
    config: NodeConfig,
    observer: Observer,
    seed: bytes,
    *,
    task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node's networking until cancelled; started(listen addrs) once listening."""
    async with open_libp2p_host(
        seed, config.host, config.port, observed_addrs=config.hole_punch
    ) as host:
        host.refuse_pubsub(pubsub_refusals(config))  # before any topic is joined
        if not host.listen_addrs():
            raise NetworkStartError(
                f"cannot listen on {config.host}:{config.port} (address in use or not ours?);"
                " choose another --port or --host"
            )
        async with trio.open_nursery() as nursery:
            transport = NetworkTransport(node, host, config, observer, nursery)
            node.attach_transport(transport)
            nursery.start_soon(transport.watch_peer_events)
            nursery.start_soon(transport.run_live_reader)
            nursery.start_soon(transport.run_live_sender)
            nursery.start_soon(transport.run_query_reader)
            nursery.start_soon(transport.run_drop_counter)
            for multiaddr in config.peers:
                transport.add_static_peer(multiaddr)
            nursery.start_soon(transport.driver.run_ticks)
            if config.data_root is not None:
                await nursery.start(
                    functools.partial(
                        serve_local_discovery,
                        config.data_root,
                        config.network,
                        host.peer_id,
                        host.listen_addrs(),
                        functools.partial(transport.discovered, source="local"),
                    )
                )
            if config.mdns:
                from p2psync.net.mdns import serve_mdns  # zeroconf loads only when used

                await nursery.start(
                    serve_mdns,
                    host.peer_id,
                    host.listen_addrs(),
                    config.network,
                    functools.partial(transport.discovered, source="mdns"),
                )
            if config.relays:
                from p2psync.node.relaying import serve_relays

                await nursery.start(serve_relays, transport, host, config, observer)
            task_status.started(host.listen_addrs())
            try:
                await trio.sleep_forever()
            finally:
                node.detach_transport()
                transport.live_send.close()
