"""Carries out the peer policy on the libp2p host: the one place that runs its actions.

The policy (`core/peer_policy.py`) decides whom to dial, refuse, ban and
sync with; `PeerDriver` feeds it the time, ticks it every `TICK_SECONDS`,
and turns its actions into dials, disconnects, log lines, metrics and
session starts and stops (the latter through the callbacks the network
service hands in). It also learns which p2psync network each newly
connected peer is in (`learn_network`) and tells the policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import trio

from p2psync.core.peer_policy import (
    Ban,
    Dial,
    Disconnect,
    Notice,
    PeerPolicy,
    PolicyAction,
    StartSession,
    StopSession,
)
from p2psync.core.reasons import Drop
from p2psync.net.addresses import has_peer_id
from p2psync.net.host import ConnectError, Libp2pHost
from p2psync.net.topics import live_topic, networks_of
from p2psync.node.observer import Observer

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
DIAL_TIMEOUT = 5.0
DISCONNECT_TIMEOUT = 5.0
# Dials in flight at once; the rest wait their turn. Discovery (mDNS, a
# rendezvous answer) can name thousands of made-up peers at once.
MAX_CONCURRENT_DIALS = 16
# A p2psync node subscribes to its live topic from the start and gossipsub
# tells a new peer its subscriptions at once (well under a second here), but
# py-libp2p retries a pubsub stream that failed to open after 0.5, 1, 2 and
# 4 s, and a loaded machine is slower still: a slow honest peer must not be
# taken for another application. Topics of others only: decided after
# NETWORK_WAIT (js-libp2p announces each subscription as it is made); no
# subscription at all (no pubsub stream yet, or none ever): NETWORK_WAIT_SILENT.
NETWORK_WAIT = 15.0
NETWORK_WAIT_SILENT = 60.0
NETWORK_POLL = 0.05


class PeerDriver:
    def __init__(
        self,
        host: Libp2pHost,
        policy: PeerPolicy,
        observer: Observer,
        nursery: trio.Nursery,
        *,
        start_session: Callable[[str], None],
        stop_session: Callable[[str], None],
    ) -> None:
        self.host = host
        self.policy = policy
        self.observer = observer
        self.nursery = nursery
        self._start_session = start_session
        self._stop_session = stop_session
        self._disconnecting: dict[str, trio.Event] = {}
        self._learning: set[str] = set()
        self._dial_slots = trio.CapacityLimiter(MAX_CONCURRENT_DIALS)

    @staticmethod
    def now() -> float:
        return trio.current_time()

    def run(self, actions: Iterable[PolicyAction]) -> None:
        """Carry out the policy's actions, in order, without waiting."""
        for action in actions:
            if isinstance(action, Dial):
                self.nursery.start_soon(self._dial, action)
            elif isinstance(action, Disconnect):
                if action.refused:
                    log.info("refused a connection from %s (%s)", action.peer_id, action.reason)
                    self.observer.dropped(Drop.PEER_REFUSED)
                self.nursery.start_soon(self._disconnect, action.peer_id)
            elif isinstance(action, Ban):
                log.warning(
                    "peer %s misbehaves (%d bad messages in %g s, last: %s); banned for %g s",
                    action.peer_id, action.strikes, action.window, action.reason, action.seconds,
                )  # fmt: skip
                self.observer.dropped(Drop.PEER_BANNED)
            elif isinstance(action, StartSession):
                self._start_session(action.peer_id)
            elif isinstance(action, StopSession):
                self._stop_session(action.peer_id)
            elif isinstance(action, Notice):
                log.log(logging.WARNING if action.warning else logging.INFO, "%s", action.message)

    async def run_ticks(self) -> None:
        while True:
            self.run(self.policy.tick(self.now()))
            await trio.sleep(TICK_SECONDS)

    async def learn_network(self, peer_id: str, network: str) -> None:
        """Tell the policy which network a newly connected peer is in.

        Our live topic among its subscriptions: ours. Another network's live
        topic: that one, at once. Neither within NETWORK_WAIT (other topics)
        or NETWORK_WAIT_SILENT (none at all): it runs no p2psync (another
        libp2p application). Nothing if it left meanwhile.
        """
        if peer_id in self._learning:
            return
        self._learning.add(peer_id)
        try:
            ours = live_topic(network)
            start = trio.current_time()
            while peer_id in self.host.connected_peers():
                topics = self.host.topics_of(peer_id)
                others = networks_of(topics)
                waited = trio.current_time() - start
                if (
                    ours in topics
                    or others
                    or waited >= (NETWORK_WAIT if topics else NETWORK_WAIT_SILENT)
                ):
                    learned = network if ours in topics else (others[0] if others else None)
                    self.run(self.policy.network_learned(peer_id, learned, self.now()))
                    return
                await trio.sleep(NETWORK_POLL)
        finally:
            self._learning.discard(peer_id)

    async def _disconnect(self, peer_id: str) -> None:
        done = self._disconnecting.setdefault(peer_id, trio.Event())
        try:
            with trio.move_on_after(DISCONNECT_TIMEOUT):
                await self.host.disconnect(peer_id)
        finally:
            done.set()
            if self._disconnecting.get(peer_id) is done:
                del self._disconnecting[peer_id]

    async def _dial(self, dial: Dial) -> None:
        """Each address in turn until one connects; the outcome goes back to the policy."""
        async with self._dial_slots:
            await self._dial_addresses(dial)

    async def _dial_addresses(self, dial: Dial) -> None:
        peer_id, ok, error = dial.peer_id, False, ""
        if (disconnecting := self._disconnecting.get(peer_id)) is not None:
            await disconnecting.wait()  # else connect() may return the dying connection
        for addr in [a for a in dial.addrs if has_peer_id(a)]:
            record = self.policy.get(peer_id)
            if record is not None and record.connected:
                ok = True  # it dialed us meanwhile
                break
            log.info("dialing %s at %s", peer_id, addr)
            try:
                await self.host.connect(addr, timeout=DIAL_TIMEOUT)
            except (ConnectError, ValueError) as exc:
                log.info("dial %s failed: %s", addr, exc)
                error = str(exc)
                continue
            log.info("connected to %s", peer_id)
            ok = True
            break
        if not ok:
            record = self.policy.get(peer_id)
            if error and record is not None and record.static:
                # Asked for by name: news the user wants (repeats are counted, cli/logs.py).
                log.warning("static peer %s unreachable: %s", peer_id, error)
            self.run(self.policy.dial_failed(peer_id, self.now()))
            return
        self.run(self.policy.dial_succeeded(peer_id, self.now()))
        record = self.policy.get(peer_id)
        if (record is None or not record.connected) and peer_id in self.host.connected_peers():
            # Already connected before our dial: no new "connected" event comes.
            self.run(self.policy.connected(peer_id, None, self.now()))
