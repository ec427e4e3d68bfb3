"""DCUtR (hole punching) for a node behind NAT: py-libp2p's, calmed down.

Split from net/circuit.py, which starts it for a ``RelayClient``.
"""

from __future__ import annotations

import contextlib

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

CIRCUIT = "/p2p-circuit"


class CalmDCUtR(DCUtRProtocol):
    """py-libp2p's DCUtR, without its dial storms (measured in tests/netns/nat_lab.py).

    - Every 2 s its auto-drive loop re-tries each relayed peer, and each try
      starts with a "unilateral upgrade": a dial of every address identify
      gave for the peer, which for a peer behind NAT are its LAN and
      loopback addresses (its 127.0.0.1 is our own port: we dialed
      ourselves). Those tries do not count against the 3-attempt budget, so
      they never stopped; with the swarm's own retries they kept the node
      busy until its API timed out. Here a peer reached through a relay is
      never tried unilaterally, and the loop runs every AUTO_DRIVE_SECONDS.
    - Loopback addresses are never hole-punch targets.
    """

    AUTO_DRIVE_SECONDS = 10.0

    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        await trio.lowlevel.checkpoint()
        return False

    async def _dial_peer(
        self,
        peer_id: ID,
        addr: multiaddr.Multiaddr,
        source: tuple[str, int] | None = None,
        as_responder: bool = False,
    ) -> None:
        text = str(addr)
        if text.startswith(("/ip4/127.", "/ip6/::1/")):
            await trio.lowlevel.checkpoint()
            return
        await super()._dial_peer(peer_id, addr, source, as_responder)

    async def _auto_drive_loop(self) -> None:
        while True:
            await trio.sleep(self.AUTO_DRIVE_SECONDS)
            network = self.host.get_network()
            for peer_id, conns in list(network.connections.items()):
                if peer_id in self._in_progress or peer_id in self._direct_connections:
                    continue
                if self._hole_punch_attempts.get(peer_id, 0) >= 3 or not conns:
                    continue
                addrs: list[str] = []
                for conn in conns:
                    with contextlib.suppress(Exception):
                        addrs.extend(str(a) for a in conn.get_transport_addresses())
                if connection_is_relayed(addrs):
                    await self.initiate_hole_punch(peer_id)


def connection_is_relayed(addrs: list[str]) -> bool:
    """A connection whose transport addresses all go through a relay."""
    return bool(addrs) and all(CIRCUIT in a for a in addrs)


__all__ = ["CalmDCUtR", "connection_is_relayed"]
