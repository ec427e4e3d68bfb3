"""A lost pubsub stream to a peer is re-opened, or its connection replaced.

Seen with 32 nodes dialing each other at once (the `scale` benchmark): a
connection came up while another to the same peer failed its muxer upgrade,
and py-libp2p ended with no pubsub stream to that peer on the one that stayed
(it logged "Cannot flush pending messages ...: no stream available") and
nothing re-opened it, so the pair's sessions restarted forever and never
finished a round. Two in-process nodes here; A loses its stream to B the way
py-libp2p leaves it when it gave up re-opening it. A stalled session has the
stream opened again, and if that fails, the connection cut and re-dialed.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from libp2p.abc import INetConn
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from p2psync.api.metrics import Metrics
from p2psync.app import _tick_forever
from p2psync.net.host import Libp2pHost
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


def _lose_pubsub_stream(node: Node, peer_id: str) -> None:
    """As py-libp2p leaves it when it gave up re-opening the stream."""
    host = _transport(node).host
    pubsub, peer = host._pubsub, ID.from_base58(peer_id)
    pubsub.peers.pop(peer)
    pubsub.peer_queues.pop(peer).close()
    pubsub.router.remove_peer(peer)
    assert not host.has_pubsub_stream(peer_id)


def _rounds_with(node: Node, peer_id: str) -> int:
    view = next((v for v in _transport(node).peers() if v.peer_id == peer_id), None)
    return 0 if view is None else view.syncs_ok


async def _pair_with_a_lost_stream(
    nursery: trio.Nursery, root: Path
) -> tuple[Node, str, Libp2pHost, INetConn]:
    """B, then A dialing B; after their first round A loses its stream to B.
    Returns A, B's id, A's host and A's connection to B."""
    b, b_addrs = await _start_node(nursery, root, "b")
    a, _ = await _start_node(nursery, root, "a", (b_addrs[0],))
    host, b_id = _transport(a).host, b.peer_id
    await _wait(lambda: _rounds_with(a, b_id) >= 1, "first round with b")
    (connection,) = host._conns[ID.from_base58(b_id)]
    _lose_pubsub_stream(a, b_id)
    return a, b_id, host, connection


async def test_a_lost_pubsub_stream_is_reopened_when_the_session_stalls(tmp_path: Path) -> None:
    with trio.fail_after(75):
        async with trio.open_nursery() as nursery:
            a, b_id, host, connection = await _pair_with_a_lost_stream(nursery, tmp_path)
            # Rounds fail, the session restarts and the stream is opened again.
            await _wait(lambda: host.has_pubsub_stream(b_id), "new pubsub stream to b")
            rounds = _rounds_with(a, b_id)
            await _wait(lambda: _rounds_with(a, b_id) > rounds, "round on the new stream")
            assert host._conns[ID.from_base58(b_id)] == {connection}  # kept
            nursery.cancel_scope.cancel()


async def test_a_connection_where_the_stream_cannot_be_reopened_is_cut_and_redialed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(75):
        async with trio.open_nursery() as nursery:
            a, b_id, host, connection = await _pair_with_a_lost_stream(nursery, tmp_path)

            async def cannot_reopen(peer_id: str, timeout: float) -> bool:
                return False

            monkeypatch.setattr(host, "open_pubsub_stream", cannot_reopen)
            await _wait(lambda: connection not in host._conns.get(ID.from_base58(b_id), ()), "cut")
            await _wait(lambda: host.has_pubsub_stream(b_id), "pubsub stream on a new connection")
            rounds = _rounds_with(a, b_id)
            await _wait(lambda: _rounds_with(a, b_id) > rounds, "round on the new connection")
            nursery.cancel_scope.cancel()
