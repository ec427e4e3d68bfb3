"""A connection on which py-libp2p has no pubsub stream to the peer is replaced.

Seen with 32 nodes dialing each other at once (the `scale` benchmark): a
connection came up while another to the same peer failed its muxer upgrade,
and py-libp2p ended with no pubsub stream to that peer on the one that stayed
("Cannot flush pending messages ...: no stream available"). It opens one only
when a connection comes up, so the pair's sessions restarted forever and never
finished a round. Two in-process nodes here; A loses its stream to B the way
py-libp2p loses it, without the retry that would re-open it.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path

import trio
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.app import _tick_forever
from p2psync.node.config import NodeConfig
from p2psync.node.network import NetworkTransport, serve_network
from p2psync.node.node import Node
from p2psync.store.sqlite import SqliteStore


async def _start_node(
    nursery: trio.Nursery, root: Path, name: str, peers: tuple[str, ...] = ()
) -> tuple[Node, list[str]]:
    config = NodeConfig(
        data_dir=root / name,
        host="127.0.0.1",
        mdns=False,
        repl=False,
        peers=peers,
        sync_interval=1.0,
    )
    config.data_dir.mkdir()
    seed = secrets.token_bytes(32)
    metrics = Metrics()
    store = SqliteStore.open(config.data_dir / "p2psync.db")
    node = Node(config, SigningKey(seed), store, metrics)
    # A stalled round fails after a second, not fifteen: the test waits for three.
    node.engine.config = dataclasses.replace(node.engine.config, round_timeout=1.0)
    nursery.start_soon(_tick_forever, node)
    addrs = await nursery.start(serve_network, node, config, metrics, seed)
    return node, addrs


def _transport(node: Node) -> NetworkTransport:
    assert isinstance(node.transport, NetworkTransport)
    return node.transport


async def _wait(condition: Callable[[], bool], what: str, timeout: float = 25) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"no {what} within {timeout} s")


async def test_a_connection_without_our_pubsub_stream_is_cut_and_redialed(
    tmp_path: Path,
) -> None:
    with trio.fail_after(75):
        async with trio.open_nursery() as nursery:
            b, b_addrs = await _start_node(nursery, tmp_path, "b")
            a, _ = await _start_node(nursery, tmp_path, "a", (b_addrs[0],))
            ta, b_id = _transport(a), b.peer_id

            def synced_with_b() -> int:
                view = next((v for v in ta.peers() if v.peer_id == b_id), None)
                return 0 if view is None else view.syncs_ok

            await _wait(lambda: synced_with_b() >= 1, "a first round with b")
            (conn_before,) = ta.host._conns[ID.from_base58(b_id)]
            pubsub = ta.host._pubsub
            peer = ID.from_base58(b_id)
            pubsub.peers.pop(peer)
            pubsub.peer_queues.pop(peer).close()
            pubsub.router.remove_peer(peer)
            assert not ta.host.has_pubsub_stream(b_id)
            rounds_before = synced_with_b()

            # Rounds fail, the session restarts, the connection is replaced.
            await _wait(lambda: ta.host.has_pubsub_stream(b_id), "a new pubsub stream to b")
            assert conn_before not in ta.host._conns.get(peer, set())
            await _wait(lambda: synced_with_b() > rounds_before, "a round on the new connection")
            nursery.cancel_scope.cancel()
