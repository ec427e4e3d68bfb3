"""In-sync round: bytes and round trips of one anti-entropy round between two nodes.

Measured in one process with the pure engine (`SyncEngine` over `MemoryStore`):
the engine's messages are exactly what the daemon publishes on the pair's sync
topic, so their sizes are the wire payload (gossipsub adds its own envelope per
message: topic, seqno, origin key and signature, and a signed peer record).

Messages are delivered in waves: every message in flight is delivered, and the
answers form the next wave, until nothing is in flight. `round_trips` is
waves / 2. The round is the periodic one the daemon runs every
`--sync-interval` (reply wanted, so the other side runs its round back).
"""

from __future__ import annotations

import time
from typing import Any

from nacl.signing import SigningKey

from benchmarks.common import Context
from benchmarks.entries import make_logs, persist_of
from p2psync.core import protocol
from p2psync.core.actions import Action, Persist, RoundFinished, SendTo
from p2psync.core.engine import EngineConfig, SyncEngine
from p2psync.core.hlc import Now
from p2psync.core.progress import Progress
from p2psync.store.memory import MemoryStore

KEYS = ("bytes", "round_trips", "bytes_one_missing", "round_trips_one_missing")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def instant(self) -> Now:
        return Now(self.now, self.wall_ms())


class _Side:
    def __init__(self, name: str, key: SigningKey, store: MemoryStore, clock: _Clock) -> None:
        self.name = name
        self.store = store
        self.clock = clock
        self.engine = SyncEngine(
            key, Progress(store.load_progress()), store, clock.instant(), EngineConfig()
        )


def _exchange(sides: dict[str, _Side], first: list[tuple[str, str, bytes]]) -> dict[str, Any]:
    """Deliver waves until quiet; count bytes, messages and waves."""
    in_flight = first
    stats: dict[str, Any] = {"bytes": 0, "messages": 0, "waves": 0, "by_kind": {}}
    stats["entries_moved"] = 0
    finished_at: dict[str, int] = {}
    while in_flight:
        stats["waves"] += 1
        wave, in_flight = in_flight, []
        for src, dst, data in wave:
            stats["bytes"] += len(data)
            stats["messages"] += 1
            kind = _kind(data)
            stats["by_kind"][kind] = stats["by_kind"].get(kind, 0) + len(data)
            side = sides[dst]
            actions = side.engine.message_received(src, data, side.clock.instant())
            in_flight.extend(_carry_out(side, actions, finished_at, stats["waves"], stats))
        if stats["waves"] > 1000:
            raise RuntimeError("anti-entropy exchange did not go quiet")
    stats["finished_at_wave"] = finished_at
    return stats


def _carry_out(
    side: _Side,
    actions: list[Action],
    finished_at: dict[str, int],
    wave: int,
    stats: dict[str, Any],
) -> list[tuple[str, str, bytes]]:
    out: list[tuple[str, str, bytes]] = []
    for action in actions:
        if isinstance(action, Persist):
            side.store.commit(action)
            stats["entries_moved"] += len(action.entries)
        elif isinstance(action, SendTo):
            out.append((side.name, action.peer, action.data))
        elif isinstance(action, RoundFinished) and action.ok:
            finished_at.setdefault(side.name, wave)
    return out


def _scratch() -> dict[str, Any]:
    return {"entries_moved": 0}


def _kind(data: bytes) -> str:
    kinds = {1: "live", 2: "recon", 3: "batch", 4: "ack", 7: "want", 8: "fork_proof"}
    return kinds.get(data[1], "other")


def _pair(logs: list[list[Any]], missing: tuple[int, int] | None) -> dict[str, _Side]:
    """Two engines that have met and hold the same entries; with `missing`, A
    then receives one entry (live, from a third peer) that B does not have."""
    everything = [pair for log in logs for pair in log]
    skip = None if missing is None else logs[missing[0]][missing[1]][0]
    held = [p for p in everything if p[0] is not skip]
    clock = _Clock()
    a_store, b_store = MemoryStore(), MemoryStore()
    a_store.commit(persist_of(held))
    b_store.commit(persist_of(held))
    sides = {
        "A": _Side("A", SigningKey(b"\xa1" * 32), a_store, clock),
        "B": _Side("B", SigningKey(b"\xb2" * 32), b_store, clock),
    }
    # Connect as the daemon does (both sides start a round), and let that settle.
    first: list[tuple[str, str, bytes]] = []
    first += _carry_out(
        sides["A"],
        sides["A"].engine.peer_connected("B", clock.instant()),
        {},
        0,
        {"entries_moved": 0},
    )
    first += _carry_out(
        sides["B"],
        sides["B"].engine.peer_connected("A", clock.instant()),
        {},
        0,
        {"entries_moved": 0},
    )
    _exchange(sides, first)
    if skip is not None:
        live = protocol.encode(protocol.Live((skip.raw,)))
        _carry_out(
            sides["A"],
            sides["A"].engine.live_received("C", live, clock.instant()),
            {},
            0,
            {"entries_moved": 0},
        )
        if sides["A"].engine.entry_count() != len(everything):
            raise RuntimeError("A did not accept the extra entry")
    return sides


def _measure(sides: dict[str, _Side], initiator: str) -> dict[str, Any]:
    side = sides[initiator]
    first = _carry_out(
        side,
        side.engine.request_sync(_other(initiator), side.clock.instant()),
        {},
        0,
        {"entries_moved": 0},
    )
    start = time.perf_counter()
    stats = _exchange(sides, first)
    stats["cpu_ms"] = round((time.perf_counter() - start) * 1000, 2)
    stats["round_trips"] = stats["waves"] / 2
    return stats


def _other(name: str) -> str:
    return "B" if name == "A" else "A"


def run(ctx: Context) -> dict[str, Any]:
    total = ctx.sizes.in_sync_entries
    origins = 10
    t0 = time.perf_counter()
    logs = make_logs(total, origins, seed=11)
    ctx.log(f"in_sync_round: signed {total} entries in {time.perf_counter() - t0:.1f} s")

    in_sync = _measure(_pair(logs, None), "A")
    # One entry missing on B, in the middle of origin 1's log (a live op B
    # missed): B's summary then carries a prefix plus a bitmap beyond the hole.
    # B's periodic round finds it.
    mid = len(logs[1]) // 2
    sides = _pair(logs, (1, mid))
    one_missing = _measure(sides, "B")
    b_held = sides["B"].engine.entry_count()
    if b_held != total:
        raise RuntimeError(f"the round did not repair the hole: B holds {b_held} of {total}")
    return {
        "entries": total,
        "origins": origins,
        "bytes": in_sync["bytes"],
        "round_trips": in_sync["round_trips"],
        "messages": in_sync["messages"],
        "waves": in_sync["waves"],
        "bytes_by_kind": in_sync["by_kind"],
        "cpu_ms": in_sync["cpu_ms"],
        "bytes_one_missing": one_missing["bytes"],
        "round_trips_one_missing": one_missing["round_trips"],
        "messages_one_missing": one_missing["messages"],
        "waves_one_missing": one_missing["waves"],
        "bytes_by_kind_one_missing": one_missing["by_kind"],
        "entries_moved_one_missing": one_missing["entries_moved"],
        "cpu_ms_one_missing": one_missing["cpu_ms"],
        **_many_origins(ctx),
    }


def _many_origins(ctx: Context) -> dict[str, Any]:
    """Protocol v2's targets: many origins of one entry each, in sync and one missing."""
    count = ctx.sizes.many_origins
    t0 = time.perf_counter()
    logs = make_logs(count, count, seed=17)
    ctx.log(f"in_sync_round: signed {count} one-entry origins in {time.perf_counter() - t0:.1f} s")
    in_sync = _measure(_pair(logs, None), "A")
    sides = _pair(logs, (count // 2, 0))
    one_missing = _measure(sides, "B")
    if sides["B"].engine.entry_count() != count:
        raise RuntimeError("the round did not bring the missing origin's entry")
    return {
        "many_origins": count,
        "many_origins_bytes": in_sync["bytes"],
        "many_origins_round_trips": in_sync["round_trips"],
        "many_origins_bytes_one_missing": one_missing["bytes"],
        "many_origins_round_trips_one_missing": one_missing["round_trips"],
        "many_origins_cpu_ms_one_missing": one_missing["cpu_ms"],
    }
