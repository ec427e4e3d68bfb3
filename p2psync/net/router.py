"""The gossipsub router p2psync runs: py-libp2p's ``GossipSub`` with its mesh
rules corrected and its per-message work trimmed (issue 13).

``new_gossipsub`` is the one way to make it; ``libp2p_fixes.RoutedPubsub``
drives it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from itertools import islice
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.gossipsub import PROTOCOL_ID as MESHSUB_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_V11
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import OutBoundQueueSize
from libp2p.pubsub.utils import safe_bytes_from_hex

from p2psync.net.topics import pair_members

HEARTBEAT_SECONDS = 1

# Only /meshsub/1.1.0 and 1.0.0: on 1.2.0 py sends an IDONTWANT RPC to every
# mesh peer for every message, even 200-byte ones and its own publishes, which
# doubles the RPCs per message and cut one-process throughput from about 570
# to 250 msg/s here.
GOSSIPSUB_PROTOCOLS = (MESHSUB_V11, MESHSUB_V10)


class P2psyncGossipSub(GossipSub):
    """The router, with these corrections.

    - Drops inside the router (forwarded messages, races) are only logged at
      DEBUG by py-libp2p; this reports them through ``on_drop(reason, count)``.
    - Mesh back-off never blocks a pair topic for long. py-libp2p keeps a
      peer's back-off per topic (``back_off``: 10 s after an unsubscribe PRUNE,
      60 s after any other) across unsubscribe/subscribe and even across
      reconnects (``remove_peer`` leaves it), and it refuses a GRAFT that
      comes during back-off or within 10 s of that peer's own PRUNE ("GRAFT
      flood", ``graft_flood_tracking``, checked whatever
      ``spam_protection_enabled`` says) with a PRUNE that stretches the
      back-off to 60 s on both sides. A sync session that ends and starts
      again (a reconnect, a resumed session) unsubscribes and resubscribes
      its pair topic, and its GRAFT goes out before its subscription (control
      RPCs jump the queue), so the two peers could not re-form that mesh for
      10 to 60 s: measured 9.5 s for every resubscribe here, and a minute
      after a GRAFT crossed the back-off, sessions connected but silent. So a
      GRAFT is taken on its merits (``handle_graft`` forgets the sender's
      back-off first), and ``forget_backoff`` also runs when a peer announces
      a subscription and when we subscribe (``RoutedPubsub``): a
      (re)subscription starts the membership afresh. Our own heartbeat still
      respects back-off, so a peer we PRUNEd is not grafted straight back.
    - No peer scoring. py-libp2p always builds a ``PeerScorer``, with
      default parameters (every weight 0, every threshold -inf) when none
      are given, so it never gates anything, yet it was asked on every
      message (the publish gate for the forwarder, the gossip and graylist
      gates for each mesh peer, a first-delivery count) and decayed every
      peer's counters at each heartbeat. Without it (``scorer = None``, which
      every call site of py-libp2p checks) nothing is decided differently.
    - No pending-message queue (``NoPendingMessages``).
    """

    def __init__(self, *args: Any, on_drop: Callable[[str, int], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_drop = on_drop
        self.scorer = None
        self._pending_messages = NoPendingMessages()

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        """Forward a new, validated message (or send our own) to its topic's mesh.

        py-libp2p's ``publish`` also did, per message, work that decides
        nothing here, and kept what it never let go:

        - ``recent_message_deliveries[topic]`` got a timestamp per message,
          pruned only by adaptive gossip, which we turn off: a node kept a
          float for every message it ever sent or forwarded (about 32 bytes
          each, 270 MB a day at 100 ops/s).
        - ``equivocation_detection`` kept up to 1 000 whole messages
          (backfill batches of up to 1 MiB among them) to refuse a known id
          with other content; the seen cache already drops a known id, and
          our validators judge the content of every message they pass.
        - an IDONTWANT to every gossipsub 1.2 mesh peer and an IHAVE to
          every 1.3 observer: we speak 1.1 (``GOSSIPSUB_PROTOCOLS``), so
          there are none, but the mesh was walked per message to find out;
        - the loop over every connected peer for the pending queue
          (``NoPendingMessages``).

        And it sent nothing on a topic none of whose subscribers it knew,
        mesh or no mesh: a stream failure on a half-registered peer makes
        py-libp2p forget the peer's subscriptions but not its place in our
        meshes, and the peer does not announce them again, so on a pair
        topic (one subscriber) it got nothing while our mesh (and
        ``send_targets``) counted it (1 start in about 15 of two hosts
        here). A message goes to every mesh peer of its topic.
        14 % of a node's CPU in a 16-node burst went to ``publish``.
        With spam protection on (not ours) py-libp2p's own runs.
        """
        pubsub = self.pubsub
        if pubsub is None or self.spam_protection_enabled:
            await super().publish(msg_forwarder, pubsub_msg)
            return
        self.mcache.put(pubsub_msg)
        rpc = rpc_pb2.RPC(publish=[pubsub_msg])
        rpc.senderRecord = env_to_send_in_RPC(pubsub.host)[0]
        origin = ID(pubsub_msg.from_id)
        targets = set(self._get_peers_to_send(pubsub_msg.topicIDs, msg_forwarder, origin))
        for topic in pubsub_msg.topicIDs:
            targets.update(self.mesh.get(topic, ()))
        targets.discard(msg_forwarder)
        targets.discard(origin)
        for peer in targets:
            if peer in pubsub.peers:
                self.send_rpc(peer, rpc)
        now = int(time.time())
        for topic in pubsub_msg.topicIDs:
            self.time_since_last_publish[topic] = now  # the fanout's expiry reads it

    def send_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, priority: bool = False) -> None:
        """Queue ``rpc`` itself for ``peer_id`` when it fits in one message and
        no GRAFT/PRUNE waits to ride along.

        py-libp2p copied the RPC for every peer it went to, then split the
        copy into fresh RPCs by size (a ``ByteSize`` per message in it): 13 %
        of a node's CPU in a 16-node burst, for a forwarded 300-byte op that
        is never split. Queued RPCs are shared, so nothing may change one in
        place: the writer copies one to strip our peer record
        (``peer_record.without_record``), and the retry path below copies.
        """
        pubsub = self.pubsub
        queue = None if pubsub is None else pubsub.peer_queues.get(peer_id)
        if (
            queue is None
            or peer_id in self._pending_control
            or rpc.ByteSize() > queue.max_message_size
        ):
            super().send_rpc(peer_id, rpc, priority)
            return
        if not queue.push(rpc, priority=priority):
            self._handle_dropped_rpc(peer_id, rpc, "queue_full")

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        if len(rpc.publish):
            self._on_drop(reason, len(rpc.publish))
        super()._handle_dropped_rpc(peer_id, rpc, reason)

    def _perform_opportunistic_grafting(
        self, topic: str, peers_to_graft: defaultdict[ID, list[str]]
    ) -> int:
        """Never: py-libp2p grafts up to 2 more peers at EVERY heartbeat while a
        mesh holds D_low or more, and every peer of ours qualifies (nobody is
        scored, all score 0), so meshes grew by 2 a second to D_high, were
        pruned to D and grew again, or stayed complete: each live op went to
        every peer and was forwarded by every peer. go-libp2p does it every 60
        heartbeats, and only for a mesh whose median score fell below a
        threshold; we do not score, so the mesh keeps to D_low..D_high."""
        return 0

    async def handle_graft(self, graft_msg: rpc_pb2.ControlGraft, sender_peer_id: ID) -> None:
        topic = graft_msg.topicID
        if not may_join(topic, sender_peer_id):
            # A pair topic's mesh is its two members. py-libp2p took anyone,
            # who then got our sync traffic to the other member (backfill
            # batches of up to 1 MiB) and could stall it by not reading.
            await self.emit_prune(topic, sender_peer_id, False, False)
            return
        mesh = self.mesh.get(topic)
        if mesh is not None and sender_peer_id not in mesh and len(mesh) >= self.degree_high:
            # go-libp2p's rule: a full mesh takes no more. py-libp2p took every
            # GRAFT and pruned at random later, so fresh keys grafting at once
            # could push honest peers out (and into 60 s of back-off).
            await self.emit_prune(topic, sender_peer_id, False, False)
            return
        self.forget_backoff(topic, sender_peer_id)
        await super().handle_graft(graft_msg, sender_peer_id)
        pubsub = self.pubsub
        if (
            pubsub is not None
            and sender_peer_id in self.mesh.get(topic, ())
            and sender_peer_id not in pubsub.peer_topics.get(topic, ())
        ):
            # A GRAFT says the peer is in the topic. Its announcement may have
            # been forgotten (see ``publish``); without it the peer is missing
            # from the topic's peers that the node and the heartbeat read.
            pubsub.handle_subscription(
                sender_peer_id, rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)
            )

    async def handle_iwant(self, iwant_msg: rpc_pb2.ControlIWant, sender_peer_id: ID) -> None:
        """Answer an IWANT with each wanted message we hold once, at most
        ``IWANT_ANSWER_MESSAGES`` of them and about ``IWANT_ANSWER_BYTES``, a
        pair topic's only to that pair's other member, and nothing to a peer
        whose queue is at py-libp2p's 32 (it is not reading: the answer would
        wait there, or be dropped if larger than 20 KiB).

        py-libp2p answered every id as named, in one RPC built in the event
        loop: an IWANT naming one cached message 10 000 times (one 1 MiB RPC,
        ten a second allowed) made an answer of 10 000 copies, 170 MB for
        17 KiB live entries, every tenth of a second. And anyone who guessed
        a pair topic's message ids (our seqnos count up) was sent that
        pair's sync messages.
        """
        pubsub = self.pubsub
        if pubsub is None or not self._check_iwant_rate_limit(sender_peer_id):
            return
        queue = pubsub.peer_queues.get(sender_peer_id)
        if queue is None or len(queue) >= OutBoundQueueSize:
            return
        seen: set[bytes] = set()
        answer: list[rpc_pb2.Message] = []
        size = 0
        for wire_id in islice(iwant_msg.messageIDs, IWANT_IDS_READ):
            mid = safe_bytes_from_hex(wire_id)
            if mid is None or mid in seen:
                continue
            seen.add(mid)
            msg = self.mcache.get(mid)
            if msg is None or not all(may_join(t, sender_peer_id) for t in msg.topicIDs):
                continue
            size += msg.ByteSize()
            if answer and size > IWANT_ANSWER_BYTES:
                break  # the peer asks again for what it still lacks
            answer.append(msg)
            if len(answer) >= IWANT_ANSWER_MESSAGES:
                break
        if answer:
            rpc = rpc_pb2.RPC(publish=answer)
            rpc.senderRecord = env_to_send_in_RPC(pubsub.host)[0]
            self.send_rpc(sender_peer_id, rpc)
            await trio.lowlevel.checkpoint()  # one RPC may carry several IWANTs

    def forget_backoff(self, topic: str, peer: ID | None = None) -> None:
        """Drop back-off and GRAFT-flood state for ``peer`` (every peer if None) on ``topic``."""
        if peer is None:
            self.back_off.pop(topic, None)
            for pruned in self.graft_flood_tracking.values():
                pruned.pop(topic, None)
            return
        self.back_off.get(topic, {}).pop(peer, None)
        pruned_by = self.graft_flood_tracking.get(peer)
        if pruned_by is not None:
            pruned_by.pop(topic, None)


class NoPendingMessages(defaultdict[ID, list[tuple[float, rpc_pb2.RPC]]]):
    """Keeps nothing. py-libp2p's ``publish`` queued each message, for 30 s,
    for every connected peer not known in its topic, to send if that peer
    subscribed to the topic before then (a race at connect). A pair topic
    has one other member, so each sync message was queued for every other
    peer, whose list was walked to expire old entries at each append, and up
    to 100 messages per peer were kept (backfill batches of up to 1 MiB among
    them). Our lean ``publish`` skips py-libp2p's loop over the peers too;
    this still empties the queue for the py-libp2p paths that fill it.
    What the queue would have delivered late: a live message published in
    the seconds before a new peer's subscription reached us (the round a
    connection starts fetches it), or a sync message sent before a pair
    mesh formed within MESH_WAIT_SECONDS (the round fails, the next one
    repairs it)."""

    def __contains__(self, peer: object) -> bool:
        return False

    def __getitem__(self, peer: ID) -> list[tuple[float, rpc_pb2.RPC]]:
        return []  # what py-libp2p appends to it goes nowhere


def may_join(topic: str, peer: ID) -> bool:
    """May ``peer`` be in our mesh for ``topic`` and count as its subscriber?
    Anyone for a shared topic; on a pair (sync) topic, only its members."""
    members = pair_members(topic)
    return members is None or peer.to_base58() in members


DEGREE, DEGREE_LOW, DEGREE_HIGH = 6, 4, 12

# What one IWANT gets: ids read, distinct messages answered, and the answer's
# size past its first message (under the 1 MiB RPC limit with room to spare).
IWANT_IDS_READ = 5000  # go-libp2p's MaxIHaveLength (its limit on an IHAVE's ids)
IWANT_ANSWER_MESSAGES = 500
IWANT_ANSWER_BYTES = 512 * 1024


def new_gossipsub(on_drop: Callable[[str, int], None]) -> P2psyncGossipSub:
    """The router: heartbeat 1 s, mesh degree 6 (low 4, high 12: the gossipsub
    spec's defaults), no opportunistic grafting, no peer scoring.

    The high mark was 24 for a while: with 12, meshes churned (GRAFT/PRUNE
    every few heartbeats while idle, 16 peers). The churn was py-libp2p's
    opportunistic grafting (``P2psyncGossipSub``), which also kept every
    mesh complete; without it, 12 and 24 measured the same idle cost.

    Adaptive gossip, spam and eclipse protection are off: with them on,
    throughput collapses to about 10 msg/s per topic.
    """
    return P2psyncGossipSub(
        protocols=list(GOSSIPSUB_PROTOCOLS),
        degree=DEGREE,
        degree_low=DEGREE_LOW,
        degree_high=DEGREE_HIGH,
        heartbeat_interval=HEARTBEAT_SECONDS,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
        on_drop=on_drop,
    )
