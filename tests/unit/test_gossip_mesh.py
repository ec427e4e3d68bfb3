"""The live topic's mesh holds still while idle: no GRAFT/PRUNE churn with many peers."""

from __future__ import annotations

from types import SimpleNamespace

from libp2p.peer.id import ID

from p2psync.net.libp2p_fixes import new_gossipsub

TOPIC = "/p2psync/default/v3/live"


def _peer(i: int) -> ID:
    return ID(b"\x00\x24\x08\x01\x12\x20" + bytes([i]) * 32)


def _router_with_mesh(size: int, subscribers: int):  # type: ignore[no-untyped-def]
    router = new_gossipsub(on_drop=lambda reason, count: None)
    peers = [_peer(i) for i in range(subscribers)]
    router.pubsub = SimpleNamespace(peer_topics={TOPIC: set(peers)})  # type: ignore[assignment]
    router.peer_protocol = {p: router.protocols[0] for p in peers}
    router.mesh[TOPIC] = set(peers[:size])
    return router


def test_a_mesh_that_inbound_grafts_grew_past_twelve_is_not_pruned() -> None:
    # 15 peers each grafting 6: inbound GRAFTs push some meshes to 13..16.
    # Pruned back to 6 at once (py-libp2p's default high mark of 12), those
    # peers fell below 4 elsewhere and re-grafted: churn every few heartbeats.
    router = _router_with_mesh(16, 16)
    to_graft, to_prune = router.mesh_heartbeat()
    assert not to_prune and not to_graft
    assert len(router.mesh[TOPIC]) == 16


def test_a_thin_mesh_is_still_grafted_up_and_a_huge_one_pruned() -> None:
    thin = _router_with_mesh(2, 30)
    to_graft, _ = thin.mesh_heartbeat()
    assert len(to_graft) == 4 and len(thin.mesh[TOPIC]) == 6
    huge = _router_with_mesh(30, 30)
    _, to_prune = huge.mesh_heartbeat()
    assert len(to_prune) == 24 and len(huge.mesh[TOPIC]) == 6
