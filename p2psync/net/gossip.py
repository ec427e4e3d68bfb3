"""Gossipsub for one host: topics as trio channels, publishing with backpressure.

``Libp2pHost`` (host.py) owns one ``Gossip`` and exposes its methods; the
py-libp2p router and pubsub it drives are built in libp2p_fixes.py.

- ``publish()`` never hands libp2p a message it would drop: it waits (up to
  its timeout) for the mesh to form and for room in the target peers' send
  queues, and otherwise refuses, publishing nothing, and says why.
- Each subscription delivers into a channel of ``buffer`` messages; a reader
  that lags loses the excess, counted. Our own messages are not echoed back.
- Payloads above ``max_payload_bytes`` are refused: libp2p's per-peer queue
  drops any RPC over 1 MiB (the message plus a signed peer record of our
  addresses, signature and key), which ``ENVELOPE_HEADROOM`` leaves room for.
- Whatever is still lost inside the router is counted in ``drop_counts()``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize

from p2psync.net.libp2p_fixes import RoutedPubsub, send_targets
from p2psync.net.router import new_gossipsub

__all__ = ["ENVELOPE_HEADROOM", "Gossip", "PublishResult", "Received"]

# Room for what travels next to the payload in the same RPC: origin key and
# signature (~140 B), topic, seqno and the signed peer record of our listen
# addresses (~100 B per address). 8 KiB is generous for any LAN host.
ENVELOPE_HEADROOM = 8 * 1024
_POLL_SECONDS = 0.002
ADDRS_TTL = 1.0  # seconds a host's address list is reused (see _remember_addrs)
_T = TypeVar("_T")
_MAX_SENDER_NAMES = 10_000


class Received(NamedTuple):
    sender: str  # origin peer id (base58), authenticated by its signature
    data: bytes
    forwarder: str  # the peer whose stream handed it to us (the sender, or a relay)


# A topic validator: (forwarder peer id, origin peer id, payload) -> keep it?
# It runs in the router before delivery and before forwarding: False means
# neither. It must be cheap and must not block (no awaits).
Validator = Callable[[str, str, bytes], bool]


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


class Gossip:
    """Topics, publishing and drop counts of one host's gossipsub.

    ``on_bad_peer(peer, reason)`` is called (in the trio thread) when a
    peer's pubsub stream broke with garbage; the owner should disconnect it.
    """

    def __init__(
        self,
        host: IHost,
        *,
        max_message_bytes: int,
        on_bad_peer: Callable[[ID, str], None],
    ) -> None:
        self.max_payload_bytes = max_message_bytes - ENVELOPE_HEADROOM
        self._my_id_bytes = host.get_id().to_bytes()
        self._on_bad_peer = on_bad_peer
        self._drops: Counter[str] = Counter()
        self._subs: dict[str, trio.MemorySendChannel[Received]] = {}
        self._sender_names: dict[bytes, str] = {}
        # Forwarder of each message between its validation and its delivery
        # (both happen in one pass of libp2p's push_msg): libp2p hands the
        # subscriber only the message, not the peer that sent it to us.
        self._forwarders: dict[tuple[bytes, bytes], str] = {}
        self._closing = False
        self.router = new_gossipsub(on_drop=self._count_router_drop)
        _remember_addrs(host)
        self.pubsub = RoutedPubsub(
            host,
            self.router,
            deliver=self._deliver,
            on_bad_stream=self._bad_stream,
            strict_signing=True,
            # Inbound must accept what any peer's queue lets out (1 MiB), even
            # when we publish smaller: an oversized frame resets the stream.
            max_inbound_rpc_size=DefaultMaxMessageSize,
        )

    async def subscribe(
        self, topic: str, *, buffer: int = 1024, validator: Validator | None = None
    ) -> trio.MemoryReceiveChannel[Received]:
        """Join ``topic``; messages from others arrive on the returned channel.

        One reader per topic. The channel ends when ``unsubscribe(topic)`` is
        called or the host shuts down. A reader that lags more than ``buffer``
        messages loses the excess (counted as ``recv_buffer_full``).
        ``validator`` vets each message in the router: a refused one is
        neither delivered nor forwarded to other peers.
        """
        if topic in self._subs:
            raise ValueError(f"already subscribed to {topic}")
        send, receive = trio.open_memory_channel[Received](buffer)
        self._subs[topic] = send
        self.pubsub.set_topic_validator(topic, self._router_validator(validator), False)
        try:
            await self.pubsub.subscribe(topic)
        except BaseException:
            # Cancelled (or failed) half way: leave no stale record behind, or
            # the next subscribe to this topic would be refused.
            self._subs.pop(topic, None)
            self.pubsub.remove_topic_validator(topic)
            send.close()
            raise
        return receive

    async def unsubscribe(self, topic: str) -> None:
        send = self._subs.pop(topic, None)
        if send is not None:
            send.close()
        self.pubsub.remove_topic_validator(topic)
        await self.pubsub.unsubscribe(topic)

    def _router_validator(
        self, validator: Validator | None
    ) -> Callable[[ID, rpc_pb2.Message], bool]:
        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            if msg.from_id == self._my_id_bytes:
                return True  # our own publication
            name = forwarder.to_base58()
            if validator is not None and not validator(name, self._name_of(msg.from_id), msg.data):
                return False  # the validator counts and blames
            if len(self._forwarders) >= _MAX_SENDER_NAMES:
                self._forwarders.clear()  # undelivered leftovers: forget rather than grow
            self._forwarders[(msg.from_id, msg.seqno)] = name
            return True

        return validate

    def _name_of(self, from_id: bytes) -> str:
        sender = self._sender_names.get(from_id)
        if sender is None:
            sender = ID(from_id).to_base58()
            if len(self._sender_names) < _MAX_SENDER_NAMES:
                self._sender_names[from_id] = sender
        return sender

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
            targets, blocked = send_targets(self.pubsub, self.router, topic)
            if blocked is None:
                break
            if trio.current_time() >= deadline:
                return self._refuse(blocked)
            await trio.sleep(_POLL_SECONDS)
            if self._closing:
                return self._refuse("closed")
        await self.pubsub.publish(topic, data)
        if not targets:
            return PublishResult(False, "no_peers", 0)
        return PublishResult(True, None, len(targets))

    def peers_in_topic(self, topic: str) -> list[str]:
        """Peers that told us they subscribe to ``topic``."""
        return sorted(p.to_base58() for p in self.pubsub.peer_topics.get(topic, ()))

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers our published messages on ``topic`` go to (we must be subscribed)."""
        return sorted(p.to_base58() for p in self.router.mesh.get(topic, ()))

    async def wait_for_topic_peer(self, topic: str, peer_id: str, timeout: float) -> None:
        """Wait until ``peer_id`` announced ``topic``; raises ``trio.TooSlowError``."""
        await self.pubsub.wait_for_subscription(ID.from_base58(peer_id), topic, timeout)

    async def wait_for_mesh_peer(self, topic: str, peer_id: str, timeout: float) -> None:
        """Wait until ``peer_id`` is in our mesh for ``topic``; raises ``trio.TooSlowError``."""
        await self.pubsub.wait_for_mesh(ID.from_base58(peer_id), topic, timeout)

    def drop_counts(self) -> dict[str, int]:
        """Messages lost or refused so far, by reason.

        ``publish_<reason>``: refused by ``publish`` (nothing sent);
        ``send_queue_full`` / ``send_oversized``: dropped inside the router
        (forwarded messages, races); ``recv_buffer_full``: a subscription
        reader lagged; ``recv_reader_gone``: its reader closed the channel;
        ``recv_bad_rpc``: a peer's pubsub stream was unreadable;
        ``recv_topic_list``: a message named no topic or several.
        """
        return dict(self._drops + self.pubsub.refused)

    def refuse_peers(self, refused: Callable[[ID], bool]) -> None:
        """Talk no pubsub at all with a peer ``refused(peer)`` names (a --relay,
        or anyone off the allow list of a closed network).

        py-libp2p's blacklist check gates our stream to a new peer, and so
        every publish, forward and cache replay to it (all need that stream),
        and drops what it forwards; its own pubsub streams are reset unread,
        so its subscriptions and GRAFTs never reach the router. Call it before
        subscribing; ``refused`` must be cheap (it runs per message).
        """
        pubsub = self.pubsub
        blacklisted = pubsub.is_peer_blacklisted
        handler = pubsub.stream_handler
        me = pubsub.my_id  # our own publications pass the same check

        def is_refused(peer: ID) -> bool:
            return (peer != me and refused(peer)) or blacklisted(peer)

        async def gated(stream: INetStream) -> None:
            if refused(stream.muxed_conn.peer_id):
                await stream.reset()
                return
            await handler(stream)

        setattr(pubsub, "is_peer_blacklisted", is_refused)  # noqa: B010 (per instance)
        for protocol in pubsub.protocols:
            pubsub.host.set_stream_handler(protocol, gated)

    def close(self) -> None:
        """Refuse further publishes and end every subscription channel."""
        self._closing = True
        for send in self._subs.values():
            send.close()
        self._subs.clear()

    def _refuse(self, reason: str) -> PublishResult:
        self._drops[f"publish_{reason}"] += 1
        return PublishResult(False, reason, 0)

    def _count_router_drop(self, reason: str, messages: int) -> None:
        self._drops[f"send_{reason}"] += messages

    def _bad_stream(self, peer: ID, reason: str) -> None:
        self._drops["recv_bad_rpc"] += 1
        self._on_bad_peer(peer, reason)

    def _deliver(self, msg: rpc_pb2.Message) -> None:
        forwarder = self._forwarders.pop((msg.from_id, msg.seqno), None)
        if msg.from_id == self._my_id_bytes:
            return
        sender = self._name_of(msg.from_id)
        if forwarder is None:
            forwarder = sender
        for topic in msg.topicIDs:
            channel = self._subs.get(topic)
            if channel is None:
                continue
            try:
                channel.send_nowait(Received(sender, msg.data, forwarder))
            except trio.WouldBlock:
                self._drops["recv_buffer_full"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drops["recv_reader_gone"] += 1


def _remember_addrs(host: IHost) -> None:
    """Make ``host.get_addrs()`` reuse its answer for ADDRS_TTL seconds.

    py-libp2p builds the list afresh for every RPC it sends (to check the
    signed peer record it puts in each one, ``env_to_send_in_RPC``): 1.5 ms
    per message here on a loopback host, 4 ms on 0.0.0.0, where our address
    factory lists the interfaces. Every publish, forward, GRAFT and IHAVE
    paid it. An empty list (not listening yet) is never kept.
    """
    setattr(host, "get_addrs", remembered(host.get_addrs))  # noqa: B010 (an instance attribute, on purpose)


def remembered(fresh: Callable[[], list[_T]]) -> Callable[[], list[_T]]:
    """``fresh``, its answer reused for ADDRS_TTL seconds (a copy each time).
    An empty answer (not listening yet) is never kept."""
    kept: list[_T] = []
    until = [0.0]

    def answer() -> list[_T]:
        now = time.monotonic()
        if now >= until[0] or not kept:
            kept[:] = fresh()
            until[0] = now + ADDRS_TTL
        return list(kept)

    return answer
