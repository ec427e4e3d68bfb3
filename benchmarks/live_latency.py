"""Live latency: 5 nodes in a full mesh, one creates 100 ops/s; creation -> applied elsewhere.

The creator gets its ops through its HTTP API (`POST /api/v0/recipes`, paced
at 100/s from this process), which starts only once the mesh is up. (The
workload generator, `--op-interval 0.01`, starts publishing at process start,
while peers are still joining; on py-libp2p 0.8.1 that path has broken pubsub
streams with a protobuf DecodeError on the receivers.) Every other node dials
every earlier one, as mDNS would connect them on a LAN. Once all are
connected, the receivers'
`p2psync_op_apply_latency_seconds` histograms are read before and after the
window; p50/p99 are interpolated inside the buckets of the difference (as
PromQL's histogram_quantile does) and `max_ms` is the upper bound of the highest
non-empty bucket: per-op apply times are not observable from outside the node.

`missing`: ops the creator held at the end of the window that receivers still
lacked after a bounded settle time, summed over receivers.

The raw baseline runs the same topology with py-libp2p gossipsub alone (one
publisher, nodes-1 receivers, messages of the size of a live entry message, at
the same rate for the same time); its latencies are exact (timestamps in the
payload, same host clock).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    Context,
    Node,
    Nodes,
    bucket_max,
    bucket_quantile,
    diff_buckets,
    histogram,
    log_stats,
    parse_metrics,
    quantile,
    rounded,
    sum_buckets,
    wait_until,
)
from benchmarks.load import post_paced, post_request
from benchmarks.raw_libp2p import run_latency
from benchmarks.scale import cpu_seconds

KEYS = ("p50_ms", "p99_ms", "max_ms", "missing", "raw_p50_ms", "raw_p99_ms")
HISTOGRAM = "p2psync_op_apply_latency_seconds"
SETTLE_S = 10.0
TOPOLOGY = "mesh"


def _snapshot(node: Node) -> dict[str, Any]:
    samples = parse_metrics(node.metrics())
    return {
        "buckets": histogram(samples, HISTOGRAM),
        "live": samples.get("p2psync_live_ops_received_total", 0.0),
        "backfill": samples.get("p2psync_backfill_entries_received_total", 0.0),
    }


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    result = _measure(ctx, "live_latency", sizes.live_rate, sizes.live_seconds)
    # The target's rate is near what raw gossipsub alone can carry on this
    # machine (its processes' CPU, summed, is in the figures); a lighter rate
    # shows what we add per op while the machine keeps up.
    result["light"] = _measure(ctx, "live_latency_light", sizes.live_light_rate, sizes.live_seconds)
    return result


def _measure(ctx: Context, name: str, rate: float, window: float) -> dict[str, Any]:
    count = ctx.sizes.live_nodes
    base = ctx.workdir / name
    result: dict[str, Any] = {
        "nodes": count,
        "rate": rate,
        "window_s": window,
        "topology": TOPOLOGY,
    }
    with Nodes() as nodes:
        creator = nodes.start(base / "n0", [])
        creator_id = creator.status()["peer_id"]
        receivers: list[Node] = []
        addrs = [creator.addr]
        for i in range(1, count):
            dial = addrs if TOPOLOGY == "mesh" else addrs[:1]
            node = nodes.start(base / f"n{i}", [x for a in dial for x in ("--peer", a)])
            receivers.append(node)
            addrs.append(node.addr)
        want = count - 1 if TOPOLOGY == "mesh" else 1
        wait_until(
            lambda: all(n.status()["peers"] >= want for n in receivers),
            30,
            "all nodes to connect",
            interval=0.2,
        )

        time.sleep(2.5)  # a couple of heartbeats: meshes settle

        made_before = creator.status()["entries"]
        before = [_snapshot(n) for n in receivers]
        pids = [creator.proc.pid] + [n.proc.pid for n in receivers]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        client_before = time.process_time()
        t0 = time.monotonic()
        failed_posts = _create_paced(creator, rate, window)
        elapsed = time.monotonic() - t0
        client_cpu = time.process_time() - client_before
        cpu_after = [cpu_seconds(pid) for pid in pids]
        made_after = creator.status()["entries"]
        time.sleep(1.0)  # the last ops' way through the mesh
        after = [_snapshot(n) for n in receivers]

        settle_until = time.monotonic() + SETTLE_S
        held = [n.held_of(creator_id) for n in receivers]
        while time.monotonic() < settle_until and min(held) < made_after:
            time.sleep(0.2)
            held = [n.held_of(creator_id) for n in receivers]
        settle_s = SETTLE_S - max(0.0, settle_until - time.monotonic())
        creator_rss = creator.rss_mb()
        receiver_rss = max(n.rss_mb() for n in receivers)
        live_bytes = _live_message_bytes(base / "n0")

    buckets = sum_buckets(
        [diff_buckets(a["buckets"], b["buckets"]) for a, b in zip(after, before, strict=True)]
    )
    observed = int(buckets[-1][1]) if buckets else 0
    p50, p99, top = (
        bucket_quantile(buckets, 0.5),
        bucket_quantile(buckets, 0.99),
        bucket_max(buckets),
    )
    cpu_pct = [
        round(100 * (b - a) / elapsed, 1) for a, b in zip(cpu_before, cpu_after, strict=True)
    ]
    result.update(
        {
            "ops": made_after - made_before,
            "ops_per_s": round((made_after - made_before) / elapsed, 1),
            "failed_posts": failed_posts,
            "applied_observed": observed,
            "p50_ms": rounded(None if p50 is None else p50 * 1000, 2),
            "p99_ms": rounded(None if p99 is None else p99 * 1000, 2),
            "max_ms": rounded(None if top is None else top * 1000, 2),
            "histogram_buckets_ms": [
                [None if b[0] == float("inf") else b[0] * 1000, int(b[1])] for b in buckets
            ],
            "missing": sum(max(0, made_after - h) for h in held),
            "settle_s": round(settle_s, 2),
            "live_received": int(
                sum(a["live"] - b["live"] for a, b in zip(after, before, strict=True))
            ),
            "backfill_received": int(
                sum(a["backfill"] - b["backfill"] for a, b in zip(after, before, strict=True))
            ),
            "creator_rss_mb": round(creator_rss, 1),
            "receiver_rss_mb_max": round(receiver_rss, 1),
            "message_bytes": live_bytes,
            "cpu_pct_per_node": cpu_pct,  # creator first, % of one core over the window
            "cpu_pct_sum": round(sum(cpu_pct), 1),
            "client_cpu_pct": round(100 * client_cpu / elapsed, 1),  # this process's POSTs
            "machine_cpu_pct": 100 * (os.cpu_count() or 1),
        }
    )
    ctx.log(f"{name}: p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms; raw next")

    raw = run_latency(count, rate, window, live_bytes, topology=TOPOLOGY)
    latencies = raw["latencies_ms"]
    expected = int(rate * window) * (count - 1)
    raw_cpu = raw.get("cpu_pct") or []
    result.update(
        {
            "raw_p50_ms": rounded(quantile(latencies, 0.5), 2),
            "raw_p99_ms": rounded(quantile(latencies, 0.99), 2),
            "raw_max_ms": rounded(max(latencies) if latencies else None, 2),
            "raw_received": len(latencies),
            "raw_missing": expected - len(latencies),
            "raw_refused": raw.get("refused"),
            "raw_cpu_pct_per_node": raw_cpu,  # publisher first
            "raw_cpu_pct_sum": round(sum(x for x in raw_cpu if x is not None), 1),
        }
    )
    for key, ours, theirs in (
        ("p50_ratio", "p50_ms", "raw_p50_ms"),
        ("p99_ratio", "p99_ms", "raw_p99_ms"),
    ):
        a, b = result[ours], result[theirs]
        result[key] = round(a / b, 2) if a is not None and b else None
    return result


def _create_paced(creator: Node, rate: float, seconds: float) -> int:
    """POST rate*seconds recipes, one every 1/rate s, from the lean load
    generator (`benchmarks/load.py`: requests encoded before the start, a few
    keep-alive connections, so a slow answer does not hold back the next op).
    Rounds 1 to 11 used httpx from four threads, which took 11-13 % of a core
    at 100 ops/s on the two cores the nodes share. Returns the failed POSTs."""
    requests = [
        post_request(
            creator.api,
            "/api/v0/recipes",
            orjson.dumps(
                {  # about the size of a generated op
                    "name": f"quick live soup #{i}",
                    "ingredients": "flour,egg,milk,butter,salt",
                    "instructions": "whisk then fold then bake",
                }
            ),
        )
        for i in range(int(rate * seconds))
    ]
    return post_paced(creator.api, requests, rate)


def _live_message_bytes(data_dir: Path) -> int:
    """Size of a LIVE of one entry: the creator's average entry plus 8 bytes
    (protocol 4: the 2-byte header, a 2-byte count and a 4-byte length)."""
    entries, size = log_stats(data_dir)
    return round(size / entries) + 8 if entries else 276
