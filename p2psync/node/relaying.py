"""Beyond the LAN: a reservation on every ``--relay``, and the network met there.

For each relay address one task keeps, for as long as the node runs::

    connect (10 s) -> RESERVE -> REGISTER <namespace> -> every DISCOVER_SECONDS:
        DISCOVER <namespace>: each member -> discovered(peer, [circuit addr], "relay")
        the reservation renewed RESERVE_MARGIN s before it expires,
        the registration REGISTER_SECONDS after the last one
    until the relay connection closes (a relay restart): connect again

A relay that refuses, cannot be reached, or answers garbage gets one log
line, a count in ``p2psync_relay_events_total{event}``, and a retry after a
backoff (1 s doubling to 60 s, jittered); the node keeps working on its LAN
meanwhile. A peer the rendezvous point lists is only a candidate: the peer
policy dials it through the relay like any discovered peer (allow list,
bans, backoff: a stranger that does not answer is not dialed in a loop),
and a peer that is not in our network never meshes our topics.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from p2psync.net.circuit import RelayClient, RelayError, circuit_addr
from p2psync.net.host import Libp2pHost
from p2psync.net.topics import topic_prefix
from p2psync.node.config import NodeConfig
from p2psync.node.observer import Observer

if TYPE_CHECKING:
    from libp2p.peer.id import ID
    from trio_typing import TaskStatus

    from p2psync.node.network import NetworkTransport

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0
DISCOVER_SECONDS = 5.0
DISCOVER_LIMIT = 200
REGISTER_TTL = 600  # seconds; the rendezvous point forgets a silent node after this
REGISTER_SECONDS = 120.0
RESERVE_MARGIN = 120.0  # renew the reservation this long before it expires
WATCH_SECONDS = 0.5
BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0


def rendezvous_namespace(network: str) -> str:
    """Where the members of ``network`` meet: ``/p2psync/<network>/v4/members``."""
    return f"{topic_prefix(network)}/members"


def backoff(failures: int, rng: random.Random) -> float:
    """Seconds before retry number ``failures`` (>= 1): uniform in [c/2, c],
    c = min(BACKOFF_MAX, BACKOFF_BASE * 2^(failures-1))."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, failures - 1))
    return rng.uniform(ceiling / 2, ceiling)


@dataclass(slots=True)
class RelayStatus:
    addr: str
    state: str = "connecting"  # connecting | reserved | backing_off
    reservations: int = 0  # reservations made so far (renewals included)
    failures: int = 0  # failures in a row
    last_error: str | None = None


class RelayKeeper:
    """Keeps this node reserved and registered on every relay it was given."""

    def __init__(
        self,
        client: RelayClient,
        relays: tuple[str, ...],
        network: str,
        found: Callable[[str, list[str]], None],
        observer: Observer,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.namespace = rendezvous_namespace(network)
        self.status = {addr: RelayStatus(addr) for addr in relays}
        self._found = found
        self._observer = observer
        self._rng = rng or random.Random()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for addr in self.status:
                nursery.start_soon(self._keep, addr)
            task_status.started()

    async def _keep(self, addr: str) -> None:
        status = self.status[addr]
        while True:
            try:
                await self._serve(status)
            except RelayError as error:
                status.failures += 1
                status.last_error = str(error)
                status.state = "backing_off"
                delay = backoff(status.failures, self._rng)
                self._observer.relay_event(error.kind)
                log.warning("relay %s: %s; retrying in %.0f s", addr, error, delay)
                await trio.sleep(delay)
                status.state = "connecting"

    async def _serve(self, status: RelayStatus) -> None:
        """One life of the relay connection; raises RelayError when it ends.

        Only a lost connection or a refused reservation ends it: a refused
        REGISTER (a full namespace, say) or a failed DISCOVER is retried
        after a backoff while the reservation is kept, so the node stays
        reachable through the relay by the peers that know it.
        """
        client, addr = self.client, status.addr
        relay = await client.connect_relay(addr, CONNECT_TIMEOUT)
        try:
            expires = await client.reserve(relay, REQUEST_TIMEOUT)
        except RelayError:
            await client.disconnect_relay(relay)
            raise
        status.reservations += 1
        status.state = "reserved"
        status.failures = 0
        status.last_error = None
        self._observer.relay_event("reserved")
        log.info("relay %s: reserved; meeting the network at %s", addr, self.namespace)
        register_at = trio.current_time()
        register_failures = 0
        discover_at = trio.current_time()
        discover_failures = 0
        try:
            while True:
                now = trio.current_time()
                if now >= register_at:
                    if await self._attempt(addr, "register", self._register(relay, addr)):
                        register_failures = 0
                        register_at = now + REGISTER_SECONDS
                    else:
                        register_failures += 1
                        register_at = now + backoff(register_failures, self._rng)
                if now >= discover_at:
                    if await self._attempt(addr, "discover", self._discover(relay, addr)):
                        discover_failures = 0
                        discover_at = now + DISCOVER_SECONDS
                    else:
                        discover_failures += 1
                        discover_at = now + max(
                            DISCOVER_SECONDS, backoff(discover_failures, self._rng)
                        )
                deadline = min(register_at, discover_at, trio.current_time() + DISCOVER_SECONDS)
                while trio.current_time() < deadline:
                    if not client.relay_connected(relay):
                        raise RelayError("lost", "connection to the relay closed")
                    await trio.sleep(WATCH_SECONDS)
                if expires - time.time() < RESERVE_MARGIN:
                    expires = await client.reserve(relay, REQUEST_TIMEOUT)
                    status.reservations += 1
        finally:
            status.state = "connecting"
            if client.relay_connected(relay) and _shutting_down():
                with trio.CancelScope(shield=True):
                    await client.unregister(relay, self.namespace)

    async def _attempt(self, addr: str, what: str, request: Awaitable[None]) -> bool:
        """Await one REGISTER or DISCOVER; a RelayError is counted and logged, not raised."""
        try:
            await request
        except RelayError as error:
            self._observer.relay_event(f"{what}_{error.kind}")
            log.warning("relay %s: %s failed: %s; reservation kept, retrying", addr, what, error)
            return False
        return True

    async def _register(self, relay: ID, addr: str) -> None:
        await self.client.register(relay, self.namespace, addr, REGISTER_TTL, REQUEST_TIMEOUT)

    async def _discover(self, relay: ID, addr: str) -> None:
        result = await self.client.discover(relay, self.namespace, DISCOVER_LIMIT, REQUEST_TIMEOUT)
        if result.garbage:
            self._observer.relay_event("garbage", result.garbage)
            log.warning(
                "relay %s: ignored %d garbage registration(s) in its rendezvous answer",
                addr, result.garbage,
            )  # fmt: skip
        for registration in result.peers:
            if self.client.unreserved(registration.peer_id):
                continue  # its last dial through this relay found no reservation
            self._found(registration.peer_id, [circuit_addr(addr, registration.peer_id)])


def _shutting_down() -> bool:
    return trio.current_effective_deadline() == float("-inf")


async def serve_relays(
    transport: NetworkTransport,
    host: Libp2pHost,
    config: NodeConfig,
    observer: Observer,
    *,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The relay client on ``host`` and a RelayKeeper for ``config.relays``, until cancelled."""
    client = RelayClient(host, dcutr=config.hole_punch)
    keeper = RelayKeeper(
        client,
        config.relays,
        config.network,
        functools.partial(transport.discovered, source="relay"),
        observer,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        transport.is_relayed = client.is_relayed
        try:
            await nursery.start(keeper.run)
            task_status.started()
            await trio.sleep_forever()
        finally:
            transport.is_relayed = lambda _peer: False
