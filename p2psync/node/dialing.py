"""Whom to dial and when: discovered peers, static peers, and peers that vanished.

Three loops share one peer table. Discovered peers are dialed once (the
smaller peer id first, so two nodes that find each other at once do not
both dial); static peers are kept connected with capped, jittered backoff;
a peer whose health check failed is re-dialed for a few minutes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from p2psync.net.addresses import has_peer_id, peer_id_of
from p2psync.net.host import ConnectError, Libp2pHost
from p2psync.node.peers import PeerTable

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
TIE_BREAK_DELAY = 2.0
DIAL_TIMEOUT = 5.0
LOST_PEER_REDIALS = 12
STATIC_CHECK_SECONDS = 1.0


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Exponential, capped, with full jitter on the upper half."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * (2 ** min(failures, 16)))
    return float(ceiling / 2 + rng.random() * ceiling / 2)


class Dialer:
    def __init__(
        self,
        host: Libp2pHost,
        table: PeerTable,
        *,
        allowed: Callable[[str], bool],
        has_session: Callable[[str], bool],
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.table = table
        self._allowed = allowed
        self._has_session = has_session
        self._rng = rng or random.Random()
        self._dialing: set[str] = set()

    def _banned(self, peer_id: str) -> bool:
        return self.table.banned(peer_id, trio.current_time())

    def discovered(
        self, nursery: trio.Nursery, peer_id: str, addrs: list[str], source: str
    ) -> None:
        """A discovery mechanism saw `peer_id`: dial it unless we already are."""
        if peer_id == self.host.peer_id or not self._allowed(peer_id) or self._banned(peer_id):
            return
        record = self.table.learn(peer_id, addrs, source)
        if record.connected or peer_id in self._dialing:
            log.debug("discovered %s again (%s)", peer_id, record.state)
            return
        # Both sides usually discover each other at once; the smaller id dials
        # first and the other only if nothing happened after a short delay.
        delay = 0.0 if self.host.peer_id < peer_id else TIE_BREAK_DELAY
        self._dialing.add(peer_id)
        nursery.start_soon(self._dial_discovered, peer_id, delay)

    async def _dial_discovered(self, peer_id: str, delay: float) -> None:
        try:
            await trio.sleep(delay)
            record = self.table.get(peer_id)
            if record is None or record.connected or record.state == "backing_off":
                return
            for addr in [a for a in record.addrs if has_peer_id(a)]:
                if self._has_session(peer_id):
                    return
                self.table.set_state(peer_id, "connecting")
                log.info("dialing %s at %s", peer_id, addr)
                try:
                    await self.host.connect(addr, timeout=DIAL_TIMEOUT)
                    log.info("connected to %s", peer_id)
                    return
                except (ConnectError, ValueError) as exc:
                    log.info("dial %s failed: %s", addr, exc)
            self.table.set_state(peer_id, "failed")
        finally:
            self._dialing.discard(peer_id)

    async def redial_lost(self, peer_id: str) -> None:
        """Try to get a vanished peer back, with backoff, for a few minutes."""
        for failures in range(LOST_PEER_REDIALS):
            await trio.sleep(backoff_delay(failures, self._rng))
            record = self.table.get(peer_id)
            if record is None or record.connected or self._has_session(peer_id):
                return
            if self._banned(peer_id):
                continue
            for addr in [a for a in record.addrs if has_peer_id(a)]:
                try:
                    await self.host.connect(addr, timeout=DIAL_TIMEOUT)
                    return
                except (ConnectError, ValueError) as exc:
                    log.debug("redial %s failed: %s", addr, exc)

    async def keep_static_peer(self, multiaddr: str) -> None:
        """Keep one static peer connected, re-dialing with backoff."""
        peer_id = peer_id_of(multiaddr)
        if not self._allowed(peer_id):
            log.warning("not dialing %s: it is not in the allow list", multiaddr)
            return
        self.table.learn(peer_id, [multiaddr], "static")
        failures = 0
        while True:
            record = self.table.get(peer_id)
            if (record is not None and record.connected) or self._banned(peer_id):
                if record is not None and record.connected:
                    failures = 0
                await trio.sleep(STATIC_CHECK_SECONDS)
                continue
            self.table.set_state(peer_id, "connecting")
            try:
                await self.host.connect(multiaddr, timeout=DIAL_TIMEOUT)
                failures = 0
                await trio.sleep(STATIC_CHECK_SECONDS)
                continue
            except (ConnectError, ValueError) as exc:
                failures += 1
                log.info("static peer %s unreachable: %s", multiaddr, exc)
            self.table.set_state(peer_id, "backing_off")
            await trio.sleep(backoff_delay(failures, self._rng))
