"""What the node needs from the network, and the stand-in used while it has none.

`node/network.py`'s `NetworkTransport` implements it while `serve_network`
runs; before and after, sends go nowhere and are counted as dropped.
"""

from __future__ import annotations

from p2psync.node.executor import Offline
from p2psync.node.service import PeerView, RecipeView, UserError


class Transport(Offline):
    """The network as the node sees it: the executor's Effects plus views and queries."""

    def listen_addrs(self) -> list[str]:
        return []

    def peers(self) -> list[PeerView]:
        return []

    async def remote_published(
        self, peer_prefix: str | None, timeout: float
    ) -> dict[str, list[RecipeView]]:
        if peer_prefix is not None:
            raise UserError(f"no connected peer id starts with {peer_prefix!r}", status=404)
        return {}
