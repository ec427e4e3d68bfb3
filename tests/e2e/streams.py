"""Raw libp2p streams on a ``Libp2pHost``, for tests and benchmarks only.

The daemon speaks gossipsub alone, so ``p2psync.net.host`` offers no stream
API; this reaches into the host's py-libp2p ``IHost`` instead. Like the
host, ``open_stream`` never dials: ``connect()`` first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2psync.net.host import ConnectError, Libp2pHost

Stream = INetStream
StreamHandler = Callable[[INetStream], Awaitable[None]]

logger = logging.getLogger(__name__)


def set_stream_handler(host: Libp2pHost, protocol: str, handler: StreamHandler) -> None:
    """Serve ``protocol``; an exception in ``handler`` resets that stream only."""

    async def guarded(stream: INetStream) -> None:
        try:
            await handler(stream)
        except Exception:
            logger.warning("stream handler for %s failed", protocol, exc_info=True)
            with trio.move_on_after(1) as scope:
                scope.shield = True
                try:
                    await stream.reset()
                except Exception:
                    logger.debug("stream reset failed", exc_info=True)

    host._host.set_stream_handler(TProtocol(protocol), guarded)


async def open_stream(host: Libp2pHost, peer_id: str, protocol: str) -> Stream:
    """Open a stream to a connected peer; ConnectError if not connected (never dials)."""
    if peer_id not in host.connected_peers():
        raise ConnectError(f"not connected to {peer_id}")
    return await host._host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
