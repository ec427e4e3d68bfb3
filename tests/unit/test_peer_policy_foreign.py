"""Peers of another network (core/foreign.py, PeerPolicy.network_learned) and
how a peer's network is read from its subscriptions (net/topics.networks_of)."""

from __future__ import annotations

import random

from p2psync.core.foreign import ForeignPeers
from p2psync.core.peer_policy import (
    CUT_FOREIGN,
    Ban,
    Dial,
    Disconnect,
    Notice,
    PeerPolicy,
    PolicyConfig,
    StartSession,
    StopSession,
)
from p2psync.net.topics import live_topic, networks_of, query_topic, sync_topic
from p2psync.node.peers import peer_view
from tests.unit.test_peer_policy import ME, of, pid

HOUR = 3600.0


def addr(peer: str, port: int = 4001) -> str:
    return f"/ip4/10.0.0.2/tcp/{port}/p2p/{peer}"


def policy(**config: float) -> PeerPolicy:
    cfg = PolicyConfig(**config)  # type: ignore[arg-type]
    return PeerPolicy(ME, random.Random(1), config=cfg, network="home")


def connected_by_mdns(p: PeerPolicy, peer: str, now: float = 0.0) -> None:
    """mDNS found it (we dial: ME is the smaller id), the dial went through."""
    assert peer > ME
    assert of(p.discovered(peer, [addr(peer)], "mdns", now), Dial)
    p.dial_succeeded(peer, now)
    assert p.connected(peer, None, now) == [StartSession(peer)]


def test_a_peer_of_our_network_keeps_its_session() -> None:
    p, peer = policy(), pid(1)
    connected_by_mdns(p, peer)
    assert p.network_learned(peer, "home", 0.2) == []
    record = p.get(peer)
    assert record is not None and record.state == "connected" and record.session


def test_a_peer_of_another_network_is_cut_off_without_blame_and_not_redialed() -> None:
    p, peer = policy(), pid(1)
    connected_by_mdns(p, peer)
    actions = p.network_learned(peer, "work", 0.3)
    assert actions == [
        Notice(f"peer {peer} is in network 'work', not ours: not syncing with it"),
        Disconnect(peer, CUT_FOREIGN),
        StopSession(peer),
    ]
    assert not of(actions, Ban) and not p.banned(peer, 0.3)
    assert p.session_ended(peer, 0.35) == []  # not resumed: it is no longer connected
    assert p.disconnected(peer, 0.4) == []
    record = p.get(peer)
    assert record is not None and record.state == "foreign" and not record.connected
    assert peer_view(record).state == "foreign"

    # mDNS keeps reporting it (every 30 s, on each address change): no dial.
    for t in range(1, 120):
        now = t * 30.0
        assert p.discovered(peer, [addr(peer, 4000 + t)], "mdns", now) == []
        assert not of(p.tick(now + 0.5), Dial)
    record = p.get(peer)
    assert record is not None and record.state == "foreign"
    assert record.addrs[-1] == addr(peer, 4119)  # still shown with what mDNS says

    # After `foreign_seconds` it is given another chance (it may have moved).
    assert p.tick(HOUR + 1.0) == []
    assert of(p.discovered(peer, [addr(peer)], "mdns", HOUR + 2.0), Dial)


def test_a_node_of_another_application_is_foreign_too() -> None:
    p, peer = policy(), pid(1)
    connected_by_mdns(p, peer)
    notices = of(p.network_learned(peer, None, 5.0), Notice)
    assert notices == [
        Notice(f"peer {peer} is in no p2psync network, not ours: not syncing with it")
    ]
    assert p.foreign(peer, 5.0) and not p.foreign(peer, 5.0 + HOUR)


def test_a_foreign_peer_dialing_us_gets_no_session_until_it_joins_our_network() -> None:
    p, peer = policy(), pid(1)
    connected_by_mdns(p, peer)
    p.network_learned(peer, "work", 1.0)
    p.session_ended(peer, 1.05)
    p.disconnected(peer, 1.1)
    # It dials us: accepted (no refusal counted), but no session while foreign.
    assert p.connected(peer, "/ip4/10.0.0.2/tcp/50000", 10.0) == []
    record = p.get(peer)
    assert record is not None and record.connected and record.state == "foreign"
    # Its subscriptions now say it is one of us (restarted with --network home).
    assert p.network_learned(peer, "home", 10.2) == [StartSession(peer)]
    assert not p.foreign(peer, 10.2)
    record = p.get(peer)
    assert record is not None and record.state == "connected"


def test_a_foreign_static_peer_is_retried_only_after_foreign_seconds() -> None:
    p, peer = policy(foreign_seconds=600.0), pid(1)
    assert of(p.add_static(peer, addr(peer), 0.0), Dial)
    p.dial_succeeded(peer, 0.1)
    p.connected(peer, None, 0.1)
    assert of(p.network_learned(peer, "work", 0.5), Disconnect)
    p.disconnected(peer, 0.6)
    dials = [t for t in range(1, 1200) if of(p.tick(float(t)), Dial)]
    assert dials == [601], dials  # once, when it is no longer remembered as foreign


def test_learning_about_a_peer_that_already_left_only_remembers_it() -> None:
    p, peer = policy(), pid(1)
    assert p.network_learned(peer, "work", 0.0) == [
        Notice(f"peer {peer} is in network 'work', not ours: not syncing with it")
    ]
    assert p.discovered(peer, [addr(peer)], "mdns", 1.0) == []
    assert p.network_learned(pid(2), "home", 0.0) == []


def test_foreign_memory_is_bounded_and_expires() -> None:
    memory = ForeignPeers(seconds=10.0, limit=3)
    for i in range(5):
        memory.mark(pid(i), "x", float(i))
    remembered = [memory.get(pid(i), 5.0) is not None for i in range(5)]
    assert remembered == [False, False, True, True, True]
    assert memory.expire(12.5) == [pid(2)]
    memory.clear(pid(3))
    assert memory.get(pid(3), 0.0) is None and memory.get(pid(4), 13.9) is not None
    assert memory.get(pid(4), 14.0) is None  # remembered until, not at, `until`


def test_networks_are_read_from_live_topics_only() -> None:
    a, b = pid(1), pid(2)
    assert networks_of([live_topic("home"), sync_topic("home", a, b), query_topic("home")]) == [
        "home"
    ]
    assert networks_of([live_topic("work"), live_topic("home")]) == ["home", "work"]
    assert networks_of(["/p2psync/home/v2/live", "/p2psync/home/v3/query"]) == ["home/v2"]
    # Not p2psync, or not a live topic of a valid network name.
    assert networks_of(["/meshsub/foo", "/p2psync/a/b/v3/live", "/p2psync//v3/live"]) == []
    assert networks_of([]) == []


def test_showing_no_network_is_a_guess_remembered_briefly_and_longer_if_repeated() -> None:
    # A stalled connection (a slow link, or a man in the middle relaying the
    # handshake and then stalling) must not shun an honest peer for an hour.
    p, peer = policy(unknown_seconds=120.0), pid(1)
    connected_by_mdns(p, peer)
    p.network_learned(peer, None, 15.0)
    p.session_ended(peer, 15.05)
    p.disconnected(peer, 15.1)
    assert p.foreign(peer, 134.0) and not p.foreign(peer, 135.0)
    p.tick(135.0)
    assert of(p.discovered(peer, [addr(peer)], "mdns", 136.0), Dial)
    p.dial_succeeded(peer, 136.1)
    p.connected(peer, None, 136.1)
    p.network_learned(peer, None, 151.0)  # again: twice as long
    assert p.foreign(peer, 151.0 + 239.0) and not p.foreign(peer, 151.0 + 240.0)
    # One sign of our network wipes the slate.
    p.session_ended(peer, 151.5)
    p.disconnected(peer, 152.0)
    p.tick(400.0)
    assert p.connected(peer, None, 400.0) == [StartSession(peer)]  # no longer remembered
    p.network_learned(peer, "home", 400.5)
    p.network_learned(peer, None, 500.0)
    assert not p.foreign(peer, 500.0 + 120.0)


def test_a_static_peer_showing_no_network_is_kept() -> None:
    p, peer = policy(), pid(1)
    assert of(p.add_static(peer, addr(peer), 0.0), Dial)
    p.dial_succeeded(peer, 0.1)
    p.connected(peer, None, 0.1)
    assert p.network_learned(peer, None, 15.1) == []
    record = p.get(peer)
    assert record is not None and record.connected and not p.foreign(peer, 15.1)


def test_another_network_is_remembered_for_foreign_seconds_whatever_the_guesses() -> None:
    memory = ForeignPeers(seconds=3600.0, limit=8, unknown_seconds=120.0)
    assert memory.mark(pid(1), None, 0.0).until == 120.0
    assert memory.mark(pid(1), "work", 0.0).until == 3600.0
    for _ in range(40):
        entry = memory.mark(pid(2), None, 0.0)
    assert entry.until == 3600.0  # capped
