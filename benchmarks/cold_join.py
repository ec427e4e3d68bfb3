"""Cold join: an empty node joins one holding N entries of 4 origins.

Set-up (not timed): 4 origin nodes each generate N/4 entries
(`--initial-ops`), a holder node peered to all 4 backfills them (its speed is
reported as `fan_in_entries_per_s`), the origins stop and the holder restarts
alone. Then an empty joiner starts with `--peer <holder>`.

`entries_per_s` = N / (time the joiner holds all N - time it first reports a
connected peer); `join_s` is from spawning the joiner. The raw baselines move
the same bytes (N/batch_size messages of the average backfill BATCH size,
entries carried length-prefixed as on the wire) between two fresh processes,
measured from the sender's connect() to the last byte received, so both sides
include waiting for the gossipsub mesh. `ratio` = p2psync payload bytes/s over
raw gossipsub bytes/s; 1.0 would mean the sync protocol costs nothing over the
transport.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

from benchmarks.common import BenchError, Context, Nodes, diagnose, log_stats, wait_until
from benchmarks.raw_libp2p import run_throughput
from p2psync.core.engine import EngineConfig

KEYS = ("entries", "entries_per_s", "raw_gossip_bytes_per_s", "raw_stream_bytes_per_s", "ratio")
BATCH_HEADER = 2 + 13  # version + kind, then round, batch_no, flags, count
POLL = 0.05
FAN_IN_TIMEOUT = 60.0


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    total, origins = sizes.cold_join_entries, sizes.cold_join_origins
    base = ctx.workdir / "cold_join"
    per = [total // origins + (1 if i < total % origins else 0) for i in range(origins)]
    result: dict[str, Any] = {"entries": total, "origins": origins}
    with Nodes() as nodes:
        # 1. Origins, in parallel, each generating its share.
        t0 = time.monotonic()
        gens = [
            nodes.start(base / f"origin{i}", ["--initial-ops", str(n), "--seed", str(100 + i)])
            for i, n in enumerate(per)
        ]
        for node in gens:
            wait_until(
                lambda n=node: "generated" in n.stderr(), 120, "origin generation", interval=0.1
            )
        result["generate_s"] = round(time.monotonic() - t0, 2)
        addrs = [node.addr for node in gens]

        ids = [node.status()["peer_id"] for node in gens]

        # 2. Holder backfills from all origins at once.
        holder = nodes.start(base / "holder", [x for a in addrs for x in ("--peer", a)])
        try:
            t_fan = wait_until(lambda: holder.entries() >= total, FAN_IN_TIMEOUT, "fan-in")
            result["fan_in_entries_per_s"] = round(total / (t_fan - holder.ready_at))
        except (BenchError, httpx.HTTPError):
            # Seen now and then: the holder stops gaining entries, or its daemon
            # exits (a pubsub DecodeError). Report it, then finish the set-up one
            # origin at a time.
            result["fan_in_entries_per_s"] = None
            if holder.proc.poll() is not None:
                errors = [ln for ln in holder.stderr().splitlines() if "Error" in ln]
                result["fan_in_failed"] = (
                    f"holder exited with {holder.proc.returncode}: {errors[-1:] or '?'}"
                )
            else:
                result["fan_in_failed"] = diagnose(holder)
            ctx.log(f"cold_join: fan-in failed: {result['fan_in_failed']}")
        holder.stop()
        nodes.started.remove(holder)
        complete = result["fan_in_entries_per_s"] is not None
        for addr, peer_id, want in zip(addrs, ids, per, strict=True):
            if complete:
                break
            holder = nodes.start(base / "holder", ["--peer", addr])
            wait_until(
                lambda p=peer_id, w=want, h=holder: h.held_of(p) >= w,
                sizes.cold_join_timeout / 2,
                f"holder to backfill origin {peer_id[-6:]}",
                interval=0.1,
            )
            holder.stop()
            nodes.started.remove(holder)
        for node in gens:
            node.stop()
        nodes.started.clear()
        count, raw_bytes = log_stats(base / "holder")
        if count != total:
            raise RuntimeError(f"holder database holds {count} entries, expected {total}")
        holder = nodes.start(base / "holder", [])
        ctx.log(f"cold_join: holder ready with {count} entries ({raw_bytes / 1e6:.1f} MB raw)")

        # 3. The timed part: an empty node joins.
        joiner = nodes.start(base / "joiner", ["--peer", holder.addr], wait=False)
        joiner.wait_ready()
        t_connected = wait_until(lambda: joiner.status()["peers"] >= 1, 30, "joiner to connect")
        t_first = wait_until(lambda: joiner.entries() > 0, sizes.cold_join_timeout, "first entry")
        t_done = wait_until(
            lambda: joiner.entries() >= total,
            sizes.cold_join_timeout,
            f"joiner to hold {total} entries",
            interval=POLL,
        )
        digests = {holder.status()["digest"], joiner.status()["digest"]}
        result["digests_equal"] = len(digests) == 1
        result["joiner_rss_mb"] = round(joiner.rss_mb(), 1)

    seconds = t_done - t_connected
    batch_size = EngineConfig().batch_size
    batches = math.ceil(total / batch_size)
    wire_bytes = raw_bytes + 4 * total + BATCH_HEADER * batches
    message_size = round(wire_bytes / batches)
    result.update(
        {
            "seconds": round(seconds, 3),
            "join_s": round(t_done - joiner.spawned, 3),
            "connect_s": round(t_connected - joiner.spawned, 3),
            "first_entry_after_connect_s": round(t_first - t_connected, 3),
            "entries_per_s": round(total / seconds),
            "entries_per_s_after_first": round(total / max(t_done - t_first, 1e-6)),
            "avg_entry_bytes": round(raw_bytes / total, 1),
            "payload_bytes": wire_bytes,
            "payload_bytes_per_s": round(wire_bytes / seconds),
            "message_bytes": message_size,
        }
    )
    ctx.log(f"cold_join: joined at {result['entries_per_s']} entries/s; raw baselines next")

    gossip = run_throughput("gossip", batches, message_size)
    stream = run_throughput("stream", batches, message_size)
    result["raw_gossip_bytes_per_s"] = _rate(gossip)
    result["raw_stream_bytes_per_s"] = _rate(stream)
    result["raw_gossip_s"] = _seconds(gossip)
    result["raw_stream_s"] = _seconds(stream)
    result["raw_gossip_complete"] = gossip["complete"]
    raw = result["raw_gossip_bytes_per_s"]
    result["ratio"] = round(result["payload_bytes_per_s"] / raw, 3) if raw else None
    stream_rate = result["raw_stream_bytes_per_s"]
    result["ratio_stream"] = (
        round(result["payload_bytes_per_s"] / stream_rate, 3) if stream_rate else None
    )
    return result


def _rate(measured: dict[str, Any]) -> int | None:
    value = measured.get("bytes_per_s")
    return None if value is None else round(value)


def _seconds(measured: dict[str, Any]) -> float | None:
    value = measured.get("seconds")
    return None if value is None else round(value, 3)
