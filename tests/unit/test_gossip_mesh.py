"""The live topic's mesh keeps to D_low..D_high (4..12) and holds still: no opportunistic
grafting, so no GRAFT/PRUNE churn and no complete mesh with many peers (issue 13)."""

from __future__ import annotations

from types import SimpleNamespace

from libp2p.peer.id import ID

from p2psync.net.router import new_gossipsub

TOPIC = "/p2psync/default/v4/live"


def _peer(i: int) -> ID:
    return ID(b"\x00\x24\x08\x01\x12\x20" + bytes([i]) * 32)


def _router_with_mesh(size: int, subscribers: int):  # type: ignore[no-untyped-def]
    router = new_gossipsub(on_drop=lambda reason, count: None)
    peers = [_peer(i) for i in range(subscribers)]
    router.pubsub = SimpleNamespace(peer_topics={TOPIC: set(peers)})  # type: ignore[assignment]
    router.peer_protocol = {p: router.protocols[0] for p in peers}
    router.mesh[TOPIC] = set(peers[:size])
    return router


def test_a_mesh_at_its_low_mark_or_above_gets_no_more_peers() -> None:
    # py-libp2p grafted up to 2 more peers at every heartbeat while a mesh was
    # at 4 or more (its "opportunistic grafting"; every peer of ours scores 0,
    # so all qualified): meshes grew to the high mark, were pruned to 6, grew
    # again, and with a high mark above the peer count stayed complete.
    for size in (4, 6, 12):
        router = _router_with_mesh(size, 16)
        to_graft, to_prune = router.mesh_heartbeat()
        assert not to_graft and not to_prune
        assert len(router.mesh[TOPIC]) == size


def test_a_mesh_that_inbound_grafts_grew_past_twelve_is_pruned_to_six() -> None:
    # The spec's high mark: without opportunistic grafting it no longer churns.
    router = _router_with_mesh(13, 16)
    _, to_prune = router.mesh_heartbeat()
    assert len(to_prune) == 7 and len(router.mesh[TOPIC]) == 6


def test_a_thin_mesh_is_still_grafted_up_and_a_huge_one_pruned() -> None:
    thin = _router_with_mesh(2, 30)
    to_graft, _ = thin.mesh_heartbeat()
    assert len(to_graft) == 4 and len(thin.mesh[TOPIC]) == 6
    huge = _router_with_mesh(30, 30)
    _, to_prune = huge.mesh_heartbeat()
    assert len(to_prune) == 24 and len(huge.mesh[TOPIC]) == 6


async def test_a_full_mesh_refuses_a_graft_instead_of_pruning_at_random_later() -> None:
    # Keys cost nothing: py-libp2p took every GRAFT and pruned back to 6 at
    # random, so a dozen fresh keys grafting at once could push honest peers
    # out. As go-libp2p does, a mesh at its high mark answers with a PRUNE.
    from libp2p.pubsub.pb import rpc_pb2

    router = _router_with_mesh(12, 20)
    pruned: list[tuple[str, ID]] = []

    async def emit_prune(topic: str, peer: ID, do_px: bool, is_unsubscribe: bool) -> None:
        pruned.append((topic, peer))

    router.emit_prune = emit_prune  # type: ignore[method-assign]
    stranger = _peer(19)
    await router.handle_graft(rpc_pb2.ControlGraft(topicID=TOPIC), stranger)
    assert pruned == [(TOPIC, stranger)]
    assert stranger not in router.mesh[TOPIC] and len(router.mesh[TOPIC]) == 12
