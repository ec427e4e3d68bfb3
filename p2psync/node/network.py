"""Puts a node on the network: libp2p host, topics, discovery, peer sessions.

Task tree (all under the nursery of `serve_network`):

    serve_network
      ├─ live reader         live topic -> engine.live_received
      ├─ live sender         PublishLive actions, paced through one channel
      ├─ query reader        `ls r all` requests -> answer on the pair topic
      ├─ peer events         connect / disconnect -> start / cancel sessions
      ├─ session per peer    pair-topic reader + sender + health check
      ├─ static dialers      one per --peer, exponential backoff with jitter
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2psync.api.metrics import Metrics
from p2psync.core import protocol
from p2psync.core.engine import QueryAnswered, QueryReceived
from p2psync.core.errors import RemoteError
from p2psync.core.ids import InvalidPeerId, public_key_from_peer_id
from p2psync.net.host import ConnectError, Libp2pHost, PeerEvent, open_libp2p_host
from p2psync.net.local import serve_local_discovery
from p2psync.net.topics import live_topic, query_topic, sync_topic
from p2psync.node.config import NodeConfig
from p2psync.node.node import Node, Transport
from p2psync.node.peers import PeerTable
from p2psync.node.service import PeerView, RecipeView, UserError

log = logging.getLogger(__name__)

OUTBOX_SIZE = 64
LIVE_OUTBOX_SIZE = 1024
MESH_WAIT_SECONDS = 10.0
HEALTH_INTERVAL = 2.0
HEALTH_TIMEOUT = 3.0
HEALTH_FAILURES = 2
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
TIE_BREAK_DELAY = 2.0
PUBLISH_TIMEOUT = 5.0
STRIKE_WINDOW = 10.0  # seconds
STRIKES_TO_BAN = 20  # offences within the window that get a peer cut off
BAN_SECONDS = 120.0
LOST_PEER_REDIALS = 12
SESSION_RESUME_DELAY = 0.5


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Exponential, capped, with full jitter on the upper half."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * (2 ** min(failures, 16)))
    return float(ceiling / 2 + rng.random() * ceiling / 2)


@dataclass
class _Session:
    peer_id: str
    topic: str
    outbox_send: trio.MemorySendChannel[bytes]
    outbox_receive: trio.MemoryReceiveChannel[bytes]
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    ready: bool = False


@dataclass
class _PendingQuery:
    answers: dict[str, list[dict[str, object]]]
    expected: set[str]
    done: trio.Event = field(default_factory=trio.Event)


class NetworkTransport(Transport):
    """The node's window onto libp2p; all methods run in the trio thread."""

    def __init__(self, node: Node, host: Libp2pHost, config: NodeConfig, metrics: Metrics) -> None:
        self.node = node
        self.host = host
        self.config = config
        self.metrics = metrics
        self.table = PeerTable()
        self.sessions: dict[str, _Session] = {}
        self.live_send, self.live_receive = trio.open_memory_channel[bytes](LIVE_OUTBOX_SIZE)
        self.dialing: set[str] = set()
        self.queries: dict[int, _PendingQuery] = {}
        self.rng = random.Random()
        self.nursery: trio.Nursery | None = None

    # ------------------------------------------------------------ Transport

    def send(self, peer: str, data: bytes) -> bool:
        session = self.sessions.get(peer)
        if session is None or not session.ready:
            return False
        return _offer(session.outbox_send, data)

    def publish_live(self, data: bytes) -> bool:
        if not self.table.connected_ids():
            return False
        return _offer(self.live_send, data)

    def listen_addrs(self) -> list[str]:
        return self.host.listen_addrs()

    def peers(self) -> list[PeerView]:
        return self.table.views()

    def on_action(self, action: object) -> None:
        if isinstance(action, QueryReceived):
            self._answer_query(action.peer, action.query_id)
        elif isinstance(action, QueryAnswered):
            pending = self.queries.get(action.query_id)
            if pending is not None and action.peer in pending.expected:
                pending.answers[action.peer] = action.recipes
                if set(pending.answers) >= pending.expected:
                    pending.done.set()

    def round_finished(self, peer: str, ok: bool, seconds: float) -> None:
        self.table.round_finished(peer, ok, seconds)

    def penalize(self, peer: str, reason: str) -> None:
        """Score a peer down; too many offences in a short time get it banned."""
        record = self.table.get(peer)
        if record is None or self.nursery is None:
            return
        now = trio.current_time()
        record.strikes = [t for t in record.strikes if now - t < STRIKE_WINDOW]
        record.strikes.append(now)
        if len(record.strikes) >= STRIKES_TO_BAN and record.banned_until <= now:
            log.warning(
                "peer %s misbehaves (%d bad messages in %g s, last: %s); disconnecting it for %g s",
                peer, len(record.strikes), STRIKE_WINDOW, reason, BAN_SECONDS,
            )  # fmt: skip
            record.banned_until = now + BAN_SECONDS
            record.strikes.clear()
            self.metrics.dropped("peer_banned")
            self.nursery.start_soon(self.host.disconnect, peer)

    def banned(self, peer: str) -> bool:
        record = self.table.get(peer)
        return record is not None and record.banned_until > trio.current_time()

    # ------------------------------------------------------------ discovery

    def discovered(self, peer_id: str, addrs: list[str], source: str) -> None:
        if peer_id == self.host.peer_id or not self._allowed(peer_id) or self.banned(peer_id):
            return
        record = self.table.learn(peer_id, addrs, source)
        if record.connected or peer_id in self.dialing or self.nursery is None:
            log.debug("discovered %s again (%s)", peer_id, record.state)
            return
        # Both sides usually discover each other at once; the smaller id dials
        # first and the other only if nothing happened after a short delay.
        delay = 0.0 if self.host.peer_id < peer_id else TIE_BREAK_DELAY
        self.dialing.add(peer_id)
        self.nursery.start_soon(self._dial_discovered, peer_id, delay)

    def _allowed(self, peer_id: str) -> bool:
        allow = self.config.allow_peers
        return not allow or peer_id in allow

    async def _dial_discovered(self, peer_id: str, delay: float) -> None:
        try:
            await trio.sleep(delay)
            record = self.table.get(peer_id)
            if record is None or record.connected:
                return
            if record.state == "backing_off":
                return
            for addr in [a for a in record.addrs if "/p2p/" in a]:
                if peer_id in self.sessions:
                    return
                self.table.set_state(peer_id, "connecting")
                log.info("dialing %s at %s", peer_id, addr)
                try:
                    await self.host.connect(addr, timeout=5)
                    log.info("connected to %s", peer_id)
                    return
                except (ConnectError, ValueError) as exc:
                    log.info("dial %s failed: %s", addr, exc)
            self.table.set_state(peer_id, "failed")
        finally:
            self.dialing.discard(peer_id)

    async def _reconnect(self, peer_id: str) -> None:
        with trio.move_on_after(5):
            await self.host.disconnect(peer_id)
        await self._redial_lost(peer_id)

    async def _redial_lost(self, peer_id: str) -> None:
        """Try to get a vanished peer back, with backoff, for a few minutes."""
        for failures in range(LOST_PEER_REDIALS):
            await trio.sleep(backoff_delay(failures, self.rng))
            record = self.table.get(peer_id)
            if record is None or record.connected or peer_id in self.sessions:
                return
            if self.banned(peer_id):
                continue
            for addr in [a for a in record.addrs if "/p2p/" in a]:
                try:
                    await self.host.connect(addr, timeout=5)
                    return
                except (ConnectError, ValueError) as exc:
                    log.debug("redial %s failed: %s", addr, exc)

    async def dial_static(self, multiaddr: str) -> None:
        """Keep one static peer connected, re-dialing with backoff."""
        peer_id = multiaddr.rsplit("/p2p/", 1)[-1]
        if not self._allowed(peer_id):
            log.warning("not dialing %s: it is not in the allow list", multiaddr)
            return
        self.table.learn(peer_id, [multiaddr], "static")
        failures = 0
        while True:
            record = self.table.get(peer_id)
            if record is not None and record.connected:
                failures = 0
                await trio.sleep(1.0)
                continue
            if self.banned(peer_id):
                await trio.sleep(1.0)
                continue
            self.table.set_state(peer_id, "connecting")
            try:
                await self.host.connect(multiaddr, timeout=5)
                failures = 0
                await trio.sleep(1.0)
                continue
            except (ConnectError, ValueError) as exc:
                failures += 1
                log.info("static peer %s unreachable: %s", multiaddr, exc)
            self.table.set_state(peer_id, "backing_off")
            await trio.sleep(backoff_delay(failures, self.rng))

    # ------------------------------------------------------------ sessions

    async def watch_peer_events(self, nursery: trio.Nursery) -> None:
        async for event in self.host.peer_events:
            self._on_peer_event(event, nursery)

    def _on_peer_event(self, event: PeerEvent, nursery: trio.Nursery) -> None:
        peer = event.peer_id
        if event.kind == "misbehaved":
            # Its pubsub stream is gone; a clean reconnect restores it.
            log.warning(
                "peer %s sent an unreadable stream (%s); reconnecting", peer, event.direction
            )
            nursery.start_soon(self._reconnect, peer)
            return
        if event.kind == "connected":
            if not self._allowed(peer) or not _is_ed25519(peer) or self.banned(peer):
                self.metrics.dropped("peer_refused")
                nursery.start_soon(self.host.disconnect, peer)
                return
            self.table.learn(peer, [event.addr] if event.addr else [], "inbound")
            self.table.set_state(peer, "connected")
            if peer not in self.sessions:
                self._start_session(peer, nursery)
        else:
            if peer in self.host.connected_peers():
                return  # another connection to it is still up
            self.table.set_state(peer, "known")
            existing = self.sessions.get(peer)
            if existing is not None:
                existing.cancel.cancel()
        self.metrics.set_peers_connected(len(self.table.connected_ids()))

    def _start_session(self, peer: str, nursery: trio.Nursery) -> None:
        send, receive = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        topic = sync_topic(self.config.network, self.host.peer_id, peer)
        session = _Session(peer, topic, send, receive)
        self.sessions[peer] = session
        nursery.start_soon(self._run_session, session)

    async def _run_session(self, session: _Session) -> None:
        peer = session.peer_id
        try:
            with session.cancel:
                try:
                    receive = await self.host.subscribe(session.topic)
                    with trio.move_on_after(MESH_WAIT_SECONDS):
                        await self.host.wait_for_mesh_peer(session.topic, peer, MESH_WAIT_SECONDS)
                    session.ready = True
                    self.node.run_actions(self.node.engine.peer_connected(peer))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._session_sender, session)
                        nursery.start_soon(self._health_check, session)
                        async for received in receive:
                            if received.sender != peer:
                                # Signed by its sender: honest nodes never post
                                # on another pair's topic, so this counts against it.
                                self.metrics.dropped("wrong_sender")
                                self.penalize(received.sender, "wrong_sender")
                                continue
                            self.node.run_actions(
                                self.node.engine.message_received(peer, received.data)
                            )
                        nursery.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await self.host.unsubscribe(session.topic)
        finally:
            session.ready = False
            if self.sessions.get(peer) is session:
                del self.sessions[peer]
            self.node.run_actions(self.node.engine.peer_disconnected(peer))
            self.metrics.set_peers_connected(len(self.table.connected_ids()))
            # The peer may have reconnected while this session was winding
            # down (its "connected" event found the old session and did
            # nothing): give the new connection a session of its own.
            shutting_down = trio.current_effective_deadline() == float("-inf")
            if not shutting_down and self.nursery is not None:
                self.nursery.start_soon(self._resume_session, peer)

    async def _resume_session(self, peer: str) -> None:
        # A short pause bounds the rate should a session keep failing at once.
        await trio.sleep(SESSION_RESUME_DELAY)
        if (
            self.nursery is not None
            and peer not in self.sessions
            and peer in self.host.connected_peers()
            and self._allowed(peer)
            and not self.banned(peer)
        ):
            self._start_session(peer, self.nursery)

    async def _session_sender(self, session: _Session) -> None:
        async for data in session.outbox_receive:
            result = await self.host.publish(session.topic, data, timeout=PUBLISH_TIMEOUT)
            if not result:
                self.metrics.dropped(f"publish_{result.reason}")

    async def _health_check(self, session: _Session) -> None:
        """Notice a peer that vanished without closing its connection."""
        failures = 0
        while True:
            await trio.sleep(HEALTH_INTERVAL)
            rtt = await self.host.ping(session.peer_id, timeout=HEALTH_TIMEOUT)
            failures = 0 if rtt is not None else failures + 1
            if failures >= HEALTH_FAILURES:
                log.info("peer %s stopped answering pings; disconnecting", session.peer_id)
                self.table.set_state(session.peer_id, "failed")
                # Disconnect before cancelling the session: this task lives
                # inside the session's scope and would be cancelled with it.
                with trio.move_on_after(5):
                    await self.host.disconnect(session.peer_id)
                if self.nursery is not None:
                    self.nursery.start_soon(self._redial_lost, session.peer_id)
                session.cancel.cancel()
                return

    # ------------------------------------------------------------ live topic

    async def run_live_reader(self) -> None:
        receive = await self.host.subscribe(live_topic(self.config.network))
        async for received in receive:
            self.node.run_actions(self.node.engine.live_received(received.sender, received.data))

    async def run_live_sender(self) -> None:
        topic = live_topic(self.config.network)
        async for data in self.live_receive:
            result = await self.host.publish(topic, data, timeout=PUBLISH_TIMEOUT)
            if not result:
                self.metrics.dropped(f"publish_{result.reason}")

    # ------------------------------------------------------------ queries

    async def run_query_reader(self) -> None:
        receive = await self.host.subscribe(query_topic(self.config.network))
        async for received in receive:
            try:
                message = protocol.decode(received.data)
            except RemoteError as exc:
                self.metrics.dropped(exc.reason)
                continue
            if not isinstance(message, protocol.Query):
                self.metrics.dropped("unexpected")
                continue
            if received.sender in self.sessions:
                self._answer_query(received.sender, message.query_id)

    async def run_drop_counter(self) -> None:
        """Export the drops that happen inside the libp2p wrapper."""
        seen: dict[str, int] = {}
        while True:
            await trio.sleep(1.0)
            for reason, count in self.host.drop_counts().items():
                if reason.startswith("publish_"):
                    continue  # already counted where publish() was refused
                if count > seen.get(reason, 0):
                    self.metrics.dropped(reason, count - seen.get(reason, 0))
                    seen[reason] = count

    def _answer_query(self, peer: str, query_id: int) -> None:
        recipes = [r.to_json() for r in self.node.list_recipes() if r.published]
        reply = protocol.QueryReply(query_id, recipes[: protocol.MAX_QUERY_REPLY_RECIPES])
        data = protocol.encode(reply)
        limit = min(protocol.MAX_MESSAGE_BYTES, self.host.max_payload_bytes)
        while len(data) > limit and reply.recipes:
            reply = protocol.QueryReply(query_id, reply.recipes[: len(reply.recipes) // 2])
            data = protocol.encode(reply)
        if not self.send(peer, data):
            self.metrics.dropped("query_reply_not_sent")

    async def remote_published(
        self, peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        connected = [p for p in self.table.connected_ids() if p in self.sessions]
        if peer_prefix is not None:
            connected = [p for p in connected if p.startswith(peer_prefix)]
            if not connected:
                raise UserError(f"no connected peer id starts with {peer_prefix!r}", status=404)
            if len(connected) > 1:
                raise UserError(f"{peer_prefix!r} matches {len(connected)} peers; type more of it")
        if not connected:
            return {}
        query_id = self.rng.getrandbits(63)
        pending = _PendingQuery({}, set(connected))
        self.queries[query_id] = pending
        try:
            data = protocol.encode(protocol.Query(query_id))
            if peer_prefix is None:
                # One request on the query topic reaches everyone; each peer
                # answers on its pair topic with us, so only we see the answers.
                result = await self.host.publish(query_topic(self.config.network), data)
                if not result:
                    self.metrics.dropped(f"publish_{result.reason}")
            elif not self.send(connected[0], data):
                self.metrics.dropped("send_failed")
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            del self.queries[query_id]
        answer: dict[str, list[RecipeView]] = {}
        for peer in connected:
            recipes = pending.answers.get(peer)
            if recipes is None:
                continue
            answer[peer] = [view for r in recipes if (view := _recipe_from_json(r)) is not None]
        return answer


def _offer(outbox: trio.MemorySendChannel[bytes], data: bytes) -> bool:
    """Queue without waiting; False when the bounded outbox is full or closed."""
    try:
        outbox.send_nowait(data)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


def _is_ed25519(peer_id: str) -> bool:
    try:
        public_key_from_peer_id(peer_id)
    except InvalidPeerId:
        return False
    return True


def _recipe_from_json(body: dict[str, object]) -> RecipeView | None:
    try:
        fields = {k: body[k] for k in ("id", "name", "ingredients", "instructions", "author")}
        if not all(isinstance(v, str) for v in fields.values()):
            return None
        updated = body.get("updated", 0)
        return RecipeView(
            id=str(fields["id"]),
            name=str(fields["name"]),
            ingredients=str(fields["ingredients"]),
            instructions=str(fields["instructions"]),
            author=str(fields["author"]),
            published=bool(body.get("published", True)),
            updated=updated if isinstance(updated, int) else 0,
        )
    except KeyError:
        return None


class NetworkStartError(Exception):
    """The node could not get onto the network (e.g. its port is taken)."""


async def serve_network(
    node: Node,
    config: NodeConfig,
    metrics: Metrics,
    seed: bytes,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node's networking until cancelled; started() once listening."""
    async with open_libp2p_host(seed, config.host, config.port) as host:
        if not host.listen_addrs():
            raise NetworkStartError(
                f"cannot listen on {config.host}:{config.port} (address in use or not ours?);"
                " choose another --port or --host"
            )
        transport = NetworkTransport(node, host, config, metrics)
        async with trio.open_nursery() as nursery:
            transport.nursery = nursery
            node.attach_transport(transport)
            nursery.start_soon(transport.watch_peer_events, nursery)
            nursery.start_soon(transport.run_live_reader)
            nursery.start_soon(transport.run_live_sender)
            nursery.start_soon(transport.run_query_reader)
            nursery.start_soon(transport.run_drop_counter)
            for multiaddr in config.peers:
                nursery.start_soon(transport.dial_static, multiaddr)
            if config.data_root is not None:
                found = functools.partial(transport.discovered, source="local")
                await nursery.start(
                    functools.partial(
                        serve_local_discovery,
                        config.data_root,
                        config.network,
                        host.peer_id,
                        host.listen_addrs(),
                        found,
                    )
                )
            if config.mdns:
                await _start_mdns(nursery, transport, config, host)
            task_status.started(host.listen_addrs())
            try:
                await trio.sleep_forever()
            finally:
                node.detach_transport()
                transport.live_send.close()


async def _start_mdns(
    nursery: trio.Nursery, transport: NetworkTransport, config: NodeConfig, host: Libp2pHost
) -> None:
    from p2psync.net.mdns import serve_mdns

    found = functools.partial(transport.discovered, source="mdns")
    start: Callable[..., Awaitable[Any]] = serve_mdns
    await nursery.start(
        functools.partial(start, host.peer_id, host.listen_addrs(), config.network, found)
    )
