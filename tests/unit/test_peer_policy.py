"""The pure peer policy (core/peer_policy.py): focused cases and a hypothesis state machine."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from nacl.signing import SigningKey

from p2psync.core.ids import peer_id_from_public_key
from p2psync.core.peer_policy import (
    REFUSED_BANNED,
    REFUSED_KEY,
    REFUSED_NOT_ALLOWED,
    Ban,
    Dial,
    Disconnect,
    PeerPolicy,
    PolicyAction,
    PolicyConfig,
    StartSession,
    StopSession,
)
from p2psync.node.peers import peer_view


def pid(i: int) -> str:
    return peer_id_from_public_key(bytes(SigningKey((i + 1).to_bytes(32)).verify_key))


ME = pid(0)
NOT_ED25519 = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"  # an RSA-style id


def addr(peer: str, port: int = 4001) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"


def policy(*, seed: int = 1, allow: tuple[str, ...] = (), **config: float) -> PeerPolicy:
    return PeerPolicy(ME, random.Random(seed), allow=allow, config=PolicyConfig(**config))  # type: ignore[arg-type]


def of(actions: list[PolicyAction], kind: type) -> list[PolicyAction]:
    return [a for a in actions if isinstance(a, kind)]


def dial_times(p: PeerPolicy, peer: str, failures: int, step: float = 0.05) -> list[float]:
    """Feed `failures` failed dials to a static peer; when each dial was made."""
    now, times = 0.0, []
    actions = p.add_static(peer, addr(peer), now)
    while len(times) < failures:
        if of(actions, Dial):
            times.append(now)
            actions = p.dial_failed(peer, now)
        now += step
        actions = p.tick(now)
    return times


# ---------------------------------------------------------------- dialing


def test_a_static_peer_is_dialed_at_once_and_redialed_with_growing_capped_backoff() -> None:
    peer = pid(1)
    times = dial_times(policy(), peer, 12)
    assert times[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.5 <= gaps[0] <= 1.1  # first retry: 0.5-1 s
    assert all(b >= a - 0.06 for a, b in itertools.pairwise(gaps)), gaps
    assert max(gaps) <= 30.1 and gaps[-1] >= 15


def test_backoff_jitter_is_deterministic_for_a_seed() -> None:
    peer = pid(1)
    assert dial_times(policy(seed=7), peer, 6) == dial_times(policy(seed=7), peer, 6)
    assert dial_times(policy(seed=7), peer, 6) != dial_times(policy(seed=8), peer, 6)


def test_a_static_peer_is_redialed_forever_and_after_a_disconnect() -> None:
    peer = pid(1)
    p = policy()
    times = dial_times(p, peer, 40)
    assert len(times) == 40
    assert p.connected(peer, None, 2000.0) == [StartSession(peer)]
    assert p.get(peer).state == "connected"  # type: ignore[union-attr]
    assert p.round_finished(peer, True, 0.1, 1_700_000_000_000, 2001.0) == []
    assert p.disconnected(peer, 2002.0) == [StopSession(peer)]
    assert p.get(peer).state == "backing_off"  # type: ignore[union-attr]
    assert not of(p.tick(2002.1), Dial)
    assert of(p.tick(2003.0), Dial) == [Dial(peer, (addr(peer),))]  # a good peer is back in 1 s


def test_discovered_peers_break_the_tie_by_peer_id() -> None:
    larger = next(pid(i) for i in range(1, 40) if pid(i) > ME)
    smaller = next(pid(i) for i in range(1, 40) if pid(i) < ME)
    p = policy()
    assert p.discovered(larger, [addr(larger)], "local", 0.0) == [Dial(larger, (addr(larger),))]
    assert p.discovered(smaller, [addr(smaller)], "local", 0.0) == []  # it dials us first
    assert p.tick(1.9) == []
    assert p.tick(2.0) == [Dial(smaller, (addr(smaller),))]
    q = policy()
    q.discovered(smaller, [addr(smaller)], "local", 0.0)
    q.connected(smaller, None, 1.0)  # it did
    assert not of(q.tick(2.0), Dial)


def test_a_discovered_peer_that_failed_is_retried_on_rediscovery_after_its_backoff() -> None:
    peer = next(pid(i) for i in range(1, 20) if pid(i) > ME)  # dialed without tie-break delay
    p = policy()
    assert of(p.discovered(peer, [addr(peer)], "mdns", 0.0), Dial)
    assert p.discovered(peer, [addr(peer)], "mdns", 0.1) == []  # one dial at a time
    p.dial_failed(peer, 1.0)
    assert p.get(peer).state == "failed"  # type: ignore[union-attr]
    assert p.tick(1.05) == []  # not retried without discovery
    assert p.discovered(peer, [addr(peer)], "mdns", 1.1) == []  # backoff first
    assert of(p.tick(2.1), Dial)


def test_a_lost_peer_is_redialed_a_while_then_left_failed() -> None:
    peer = pid(1)
    p = policy(lost_redials=3)
    p.connected(peer, "/ip4/10.0.0.2/tcp/4001", 0.0)
    p.discovered(peer, [addr(peer)], "local", 0.0)
    assert p.peer_lost(peer, "unresponsive", 1.0) == [
        Disconnect(peer, "unresponsive"),
        StopSession(peer),
    ]
    p.disconnected(peer, 1.1)
    p.session_ended(peer, 1.2)
    dials, now = 0, 1.2
    while now < 100:
        now += 0.25
        for action in p.tick(now):
            assert isinstance(action, Dial)
            assert action.addrs[0] == addr(peer)
            dials += 1
            p.dial_failed(peer, now)
    assert dials == 3
    assert p.get(peer).state == "failed"  # type: ignore[union-attr]


# ---------------------------------------------------------------- refusing and banning


def test_connections_are_refused_from_strangers_bad_keys_and_banned_peers() -> None:
    friend, stranger = pid(1), pid(2)
    p = policy(allow=(friend, NOT_ED25519))
    assert p.connected(stranger, None, 0.0) == [Disconnect(stranger, REFUSED_NOT_ALLOWED, True)]
    assert p.connected(NOT_ED25519, None, 0.0) == [Disconnect(NOT_ED25519, REFUSED_KEY, True)]
    assert p.get(stranger) is None and p.get(NOT_ED25519) is None
    assert p.discovered(stranger, [addr(stranger)], "mdns", 0.0) == []
    assert p.add_static(stranger, addr(stranger), 0.0)[0].warning  # type: ignore[union-attr]
    assert p.connected(friend, None, 0.0) == [StartSession(friend)]
    for i in range(20):
        actions = p.offence(friend, "version", 1.0 + i * 0.1)
    assert of(actions, Ban) and of(actions, StopSession) and p.banned(friend, 3.0)
    p.session_ended(friend, 2.5)
    assert p.connected(friend, None, 3.0) == [Disconnect(friend, REFUSED_BANNED, True)]


def test_twenty_offences_within_ten_seconds_ban_once_and_cut_the_peer_off() -> None:
    peer = pid(1)
    p = policy()
    p.connected(peer, None, 0.0)
    actions: list[PolicyAction] = []
    for i in range(19):
        actions += p.offence(peer, "malformed", i * 0.5)
    assert actions == []
    actions = p.offence(peer, "wrong_sender", 9.6)
    assert actions == [
        Ban(peer, 9.6 + 120, 120.0, "wrong_sender", 20, 10.0),
        Disconnect(peer, "banned"),
        StopSession(peer),  # no more syncing with it, from now on
    ]
    assert p.connected_ids() == []
    assert p.offence(peer, "malformed", 9.7) == []  # already banned: no second ban
    assert p.disconnected(peer, 10.0) == [StopSession(peer)]
    p.session_ended(peer, 10.1)
    assert p.tick(100.0) == []  # not re-dialed, no session
    assert not p.banned(peer, 129.7)


def test_offences_spread_wider_than_the_window_never_ban() -> None:
    peer = pid(1)
    p = policy()
    assert all(p.offence(peer, "version", i * 0.6) == [] for i in range(200))


def test_bans_double_for_repeat_offenders_up_to_an_hour_and_are_forgiven() -> None:
    peer = pid(1)
    p = policy()
    now, seconds = 0.0, []
    for _ in range(7):
        for _ in range(20):
            for action in p.offence(peer, "bitmap", now):
                if isinstance(action, Ban):
                    seconds.append(action.seconds)
                    now = action.until + 1
            now += 0.01
    assert seconds == [120, 240, 480, 960, 1920, 3600, 3600]
    now += 3600  # an hour of good behaviour
    for i in range(20):
        actions = p.offence(peer, "bitmap", now + i * 0.01)
    assert [a.seconds for a in actions if isinstance(a, Ban)] == [120]


def test_a_banned_static_peer_is_dialed_again_once_its_ban_ends() -> None:
    peer = pid(1)
    p = policy()
    p.add_static(peer, addr(peer), 0.0)
    p.dial_succeeded(peer, 0.1)
    p.connected(peer, None, 0.1)
    for i in range(20):
        p.offence(peer, "version", 1 + i * 0.01)
    p.disconnected(peer, 2.0)
    assert not any(of(p.tick(t), Dial) for t in range(3, 121))
    assert of(p.tick(122.0), Dial) == [Dial(peer, (addr(peer),))]


# ---------------------------------------------------------------- sessions and the table


def test_a_session_that_ended_is_resumed_while_the_peer_stays_connected() -> None:
    peer = pid(1)
    p = policy()
    assert p.connected(peer, None, 0.0) == [StartSession(peer)]
    assert p.connected(peer, None, 0.1) == []  # a second connection, same session
    assert p.session_ended(peer, 1.0) == []
    assert p.tick(1.2) == []
    assert p.tick(1.5) == [StartSession(peer)]
    p.session_ended(peer, 2.0)
    p.disconnected(peer, 2.1)
    assert p.tick(5.0) == []


def test_the_table_keeps_static_peers_and_a_bounded_history() -> None:
    p = policy(history=256)
    statics = [pid(i) for i in range(1, 4)]
    for peer in statics:
        p.add_static(peer, addr(peer), 0.0)
    visitors = [pid(i) for i in range(10, 310)]
    for i, peer in enumerate(visitors):
        p.connected(peer, f"/ip4/10.0.0.1/tcp/{i}", float(i))
        p.round_finished(peer, True, 0.25, 1_700_000_000_000 + i, float(i))
        p.disconnected(peer, float(i) + 0.5)
        p.session_ended(peer, float(i) + 0.6)
    ids = {r.peer_id for r in p.records()}
    assert len(ids) == 256 + len(statics)
    assert set(statics) <= ids
    assert set(visitors[-256:]) <= ids  # the most recently seen are kept
    kept = p.get(visitors[-1])
    assert kept is not None and not kept.session and kept.dial_at is None
    view = peer_view(kept)
    assert (view.syncs_ok, view.avg_sync_ms, view.source, view.connected) == (
        1,
        250.0,
        "inbound",
        False,
    )
    assert view.last_sync is not None and view.last_sync.startswith("2023-11-14T22:13:20.")


def test_the_most_specific_source_wins_and_addresses_are_bounded() -> None:
    peer = pid(1)
    p = policy()
    p.connected(peer, "/ip4/10.0.0.9/tcp/1", 0.0)
    p.discovered(peer, [addr(peer, 1)], "mdns", 0.0)
    p.discovered(peer, [addr(peer, 2)], "local", 0.0)
    p.discovered(peer, [addr(peer, 3)], "mdns", 0.0)
    assert p.get(peer).source == "local"  # type: ignore[union-attr]
    p.add_static(peer, addr(peer, 9), 0.0)
    for port in range(100, 120):
        p.discovered(peer, [addr(peer, port)], "mdns", 0.0)
    record = p.get(peer)
    assert record is not None and record.source == "static"
    assert len(record.addrs) == 8 and addr(peer, 9) in record.addrs


# ---------------------------------------------------------------- the state machine

POOL = [pid(i) for i in range(1, 8)] + [NOT_ED25519]
CONFIG = PolicyConfig(
    strike_window=5.0,
    strikes_to_ban=3,
    ban_seconds=10.0,
    ban_max=40.0,
    forgive_after=100.0,
    history=3,
    lost_redials=2,
)
peers = st.sampled_from(POOL)


class PolicyMachine(RuleBasedStateMachine):
    """Random event sequences, with the invariants every driver relies on."""

    @initialize(allow_all=st.booleans(), seed=st.integers(0, 2**16))
    def setup(self, allow_all: bool, seed: int) -> None:
        allow = () if allow_all else tuple(POOL[:4])
        self.p = PeerPolicy(ME, random.Random(seed), allow=allow, config=CONFIG)
        self.now = 0.0
        self.dialing: set[str] = set()
        self.sessions: set[str] = set()
        self.connected: set[str] = set()
        self.bans: dict[str, Ban] = {}
        self.delays: dict[str, float] = {}  # backoff at the last consecutive failure

    def feed(self, actions: list[PolicyAction]) -> None:
        p, now = self.p, self.now
        for i, action in enumerate(actions):
            if isinstance(action, Dial):
                assert action.peer_id not in self.dialing, "two dials in flight"
                assert not p.banned(action.peer_id, now), "dialed a banned peer"
                assert p.allowed(action.peer_id) and action.peer_id != ME
                assert action.peer_id not in self.connected
                self.dialing.add(action.peer_id)
            elif isinstance(action, StartSession):
                assert action.peer_id not in self.sessions, "two sessions"
                assert not p.banned(action.peer_id, now), "session with a banned peer"
                assert p.allowed(action.peer_id), "session with a peer outside the allow-list"
                assert action.peer_id != NOT_ED25519
                assert action.peer_id in self.connected
                self.sessions.add(action.peer_id)
            elif isinstance(action, Ban):
                previous = self.bans.get(action.peer_id)
                if previous is None or now - previous.until >= CONFIG.forgive_after:
                    assert action.seconds == CONFIG.ban_seconds
                else:
                    assert action.seconds == min(CONFIG.ban_max, 2 * previous.seconds)
                assert actions[i + 1] == Disconnect(action.peer_id, "banned")
                self.bans[action.peer_id] = action
            elif isinstance(action, Disconnect):
                # The driver closes it at once; the policy counts it gone from now on
                # (a static peer banned while connected may be dialed when the ban ends).
                self.connected.discard(action.peer_id)

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0, 20.0, 150.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.feed(self.p.tick(self.now))

    @rule(peer=peers)
    def add_static(self, peer: str) -> None:
        self.feed(self.p.add_static(peer, addr(peer), self.now))

    @rule(peer=peers, source=st.sampled_from(["local", "mdns"]))
    def discovered(self, peer: str, source: str) -> None:
        self.feed(self.p.discovered(peer, [addr(peer)], source, self.now))

    @rule(peer=peers)
    def connected_event(self, peer: str) -> None:
        self.connected.add(peer)
        self.feed(self.p.connected(peer, "/ip4/10.1.1.1/tcp/5", self.now))

    @rule(peer=peers)
    def disconnected_event(self, peer: str) -> None:
        self.connected.discard(peer)
        self.feed(self.p.disconnected(peer, self.now))

    @rule(peer=peers)
    def dial_succeeded(self, peer: str) -> None:
        self.dialing.discard(peer)
        self.feed(self.p.dial_succeeded(peer, self.now))

    @rule(peer=peers)
    def dial_failed(self, peer: str) -> None:
        in_flight = peer in self.dialing
        self.dialing.discard(peer)
        self.feed(self.p.dial_failed(peer, self.now))
        record = self.p.get(peer)
        if in_flight and record is not None and not record.connected:
            previous = self.delays.get(peer, 0.0)
            assert record.delay >= previous, "backoff shrank on a consecutive failure"
            assert record.not_before >= self.now + record.delay - 1e-9
            self.delays[peer] = record.delay

    @rule(peer=peers, ok=st.booleans())
    def round_finished(self, peer: str, ok: bool) -> None:
        if ok:
            self.delays.pop(peer, None)
        self.feed(self.p.round_finished(peer, ok, 0.5, 1_700_000_000_000, self.now))

    @rule(peer=peers)
    def session_ended(self, peer: str) -> None:
        self.sessions.discard(peer)
        self.feed(self.p.session_ended(peer, self.now))

    @rule(peer=peers)
    def peer_lost(self, peer: str) -> None:
        self.connected.discard(peer)
        self.feed(self.p.peer_lost(peer, "unresponsive", self.now))

    @rule(peer=peers, reason=st.sampled_from(["version", "budget_live"]))
    def offence(self, peer: str, reason: str) -> None:
        self.feed(self.p.offence(peer, reason, self.now))

    @invariant()
    def table_is_bounded(self) -> None:
        if not hasattr(self, "p"):
            return
        records = self.p.records()
        for peer in set(self.delays) - {r.peer_id for r in records}:
            del self.delays[peer]  # forgotten (history bound): its backoff starts over
        pinned = [r for r in records if r.static or r.connected or r.session or r.dialing]
        assert len(records) - len(pinned) <= CONFIG.history
        for record in records:
            assert len(record.addrs) <= 8
            assert record.peer_id != NOT_ED25519 or record.static
            if record.session:
                assert self.p.allowed(record.peer_id)


PolicyMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPolicyMachine = PolicyMachine.TestCase


@pytest.mark.parametrize("seed", range(3))
def test_the_machine_checks_would_catch_a_double_dial(seed: int) -> None:
    machine = PolicyMachine()
    machine.setup(allow_all=True, seed=seed)
    machine.dialing.add(pid(1))
    with pytest.raises(AssertionError, match="two dials"):
        machine.add_static(pid(1))
