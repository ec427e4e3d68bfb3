"""Hybrid logical clock: never backwards, follows remotes, ignores wild ones."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.core.hlc import (
    LOGICAL_BITS,
    MAX_FORWARD_MS,
    MAX_HLC,
    HybridClock,
    pack,
    wall_ms_of,
)

NOW = 1_800_000_000_000
HOUR = 3600 * 1000


def test_pack_and_unpack() -> None:
    assert wall_ms_of(pack(NOW, 7)) == NOW
    assert pack(NOW, 7) & ((1 << LOGICAL_BITS) - 1) == 7
    assert pack(NOW, 0) > pack(NOW - 1, 65535)


def test_tick_follows_wall_clock_forward() -> None:
    clock = HybridClock()
    first = clock.tick(NOW)
    assert first == pack(NOW, 0)
    assert clock.tick(NOW + 5) == pack(NOW + 5, 0)
    assert clock.last == pack(NOW + 5, 0)


def test_tick_counts_when_wall_stalls_or_goes_back() -> None:
    clock = HybridClock()
    a = clock.tick(NOW)
    b = clock.tick(NOW)
    c = clock.tick(NOW - HOUR)
    assert a < b < c
    assert wall_ms_of(c) == NOW  # the wall part does not go back
    assert clock.tick(NOW + HOUR) == pack(NOW + HOUR, 0)


def test_counter_overflow_stays_monotonic() -> None:
    clock = HybridClock(pack(NOW, (1 << LOGICAL_BITS) - 2))
    values = [clock.tick(NOW) for _ in range(4)]
    assert values == sorted(set(values))


def test_observe_moves_forward_within_bound() -> None:
    clock = HybridClock()
    clock.tick(NOW)
    remote = pack(NOW + HOUR, 3)
    clock.observe(remote, NOW)
    assert clock.last == remote
    assert clock.tick(NOW) > remote
    clock.observe(pack(NOW, 0), NOW)  # older: ignored
    assert clock.last > remote


def test_observe_far_future_is_ignored() -> None:
    clock = HybridClock()
    clock.tick(NOW)
    before = clock.last
    clock.observe(pack(NOW + MAX_FORWARD_MS + 1, 0), NOW)
    assert clock.last == before
    clock.observe(MAX_HLC, NOW)
    assert clock.last == before
    clock.observe(MAX_HLC + 1, NOW)
    assert clock.last == before
    at_bound = pack(NOW + MAX_FORWARD_MS, 9)
    clock.observe(at_bound, NOW)
    assert clock.last == at_bound


wall_steps = st.sampled_from([0, 0, 1, 7, -1, -500, HOUR, -HOUR, 2 * MAX_FORWARD_MS])
events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), wall_steps),
        st.tuples(
            st.just("observe"),
            st.tuples(
                st.integers(-2 * HOUR, MAX_FORWARD_MS + HOUR),
                st.integers(0, (1 << LOGICAL_BITS) - 1),
            ),
        ),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events, st.integers(0, 2**20))
def test_monotonic_under_any_wall_and_remote_sequence(events, start_counter) -> None:
    clock = HybridClock(pack(NOW, start_counter % (1 << LOGICAL_BITS)))
    wall = NOW
    issued: list[int] = []
    for kind, value in events:
        before = clock.last
        if kind == "tick":
            wall += value
            stamp = clock.tick(wall)
            assert stamp > before
            assert not issued or stamp > issued[-1]
            assert clock.last == stamp
            # It never lags the wall clock it was handed.
            assert wall_ms_of(stamp) >= wall
            issued.append(stamp)
        else:
            offset, counter = value
            remote = pack(wall + offset, counter)
            clock.observe(remote, wall)
            assert clock.last >= before
            if offset > MAX_FORWARD_MS:
                assert clock.last == before
            elif remote > before:
                assert clock.last == remote
            # Never dragged past the bound by anyone.
            assert wall_ms_of(clock.last) <= max(wall_ms_of(before), wall + MAX_FORWARD_MS)
