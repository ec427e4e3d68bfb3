"""Through a circuit relay vs. direct, in the same run (issue 15, "Beyond the LAN").

On loopback, no root: a `p2psync relay`, a holder H with `--relay`, then

1. cold join through the relay: an empty node J with only `--relay` (it
   meets H at the rendezvous point and dials it through the relay) until it
   holds all of H's entries; entries/s from connected to done;
2. cold join direct: an empty node D with `--peer H`, the same;
3. live latency: H creates ops at a steady rate while J (relayed) and D
   (direct) are both connected; p50/p99 create -> applied on each, from
   their `p2psync_op_apply_latency_seconds` histograms.

Loopback has no NAT and no wire delay: the gap between the two columns is
what the relay hop costs in CPU and copies (a second Noise and yamux layer
inside the relay connection, py-libp2p's relay copying every chunk in
Python), not what a real path between two homes adds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    BenchError,
    Context,
    Node,
    Nodes,
    bucket_quantile,
    child_env,
    diff_buckets,
    generate_dataset,
    histogram,
    parse_metrics,
    rounded,
    wait_until,
)
from benchmarks.live_latency import _create_paced

HISTOGRAM = "p2psync_op_apply_latency_seconds"
SETTLE_S = 30.0
# (entries, live ops/s, live seconds, join timeout): quick stays well under a minute.
QUICK = (2_000, 50.0, 3.0, 60.0)
FULL = (20_000, 100.0, 20.0, 240.0)


def start_relay(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    """`p2psync relay` on a free loopback port; its multiaddr for --relay."""
    root = workdir / ".root-relay"
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2psync", "relay", "--host", "127.0.0.1", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=child_env(root), cwd=REPO, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"--relay (/ip4/127\.0\.0\.1/\S+)", line)
        if found:
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise BenchError("the relay did not start")


def _join(nodes: Nodes, data_dir: Path, args: list[str], total: int, timeout: float) -> float:
    """Start an empty node; entries/s from its first peer to holding ``total``."""
    joiner = nodes.start(data_dir, args)
    t_connected = wait_until(lambda: joiner.status()["peers"] >= 1, 60, f"{data_dir.name} peers")
    t_done = wait_until(
        lambda: joiner.entries() >= total, timeout, f"{data_dir.name} to hold {total}", interval=0.1
    )
    return total / max(t_done - t_connected, 1e-6)


def _latency(before: list[tuple[float, float]], node: Node) -> tuple[float | None, ...]:
    buckets = diff_buckets(histogram(parse_metrics(node.metrics()), HISTOGRAM), before)
    p50, p99 = bucket_quantile(buckets, 0.5), bucket_quantile(buckets, 0.99)
    count = buckets[-1][1] if buckets else 0.0
    return (
        rounded(None if p50 is None else p50 * 1000, 2),
        rounded(None if p99 is None else p99 * 1000, 2),
        count,
    )


def run(ctx: Context) -> dict[str, Any]:
    total, rate, window, timeout = QUICK if ctx.quick else FULL
    base = ctx.workdir / "circuit_relay"
    result: dict[str, Any] = {"entries": total, "live_rate": rate, "live_window_s": window}
    relay, relay_addr = start_relay(base)
    try:
        with Nodes() as nodes:
            generate_dataset(nodes, base / "holder", total, 15, timeout)
            holder = nodes.start(base / "holder", ["--relay", relay_addr])
            relayed = _join(nodes, base / "via_relay", ["--relay", relay_addr], total, timeout)
            via_relay = nodes.started[-1]
            peers = via_relay.get("/api/v0/peers")
            if not (peers and all(p["relayed"] and p["source"] == "relay" for p in peers)):
                raise BenchError(f"the relay joiner is not linked through the relay: {peers}")
            direct = _join(nodes, base / "direct", ["--peer", holder.addr], total, timeout)
            via_direct = nodes.started[-1]
            result["cold_join_relay_entries_per_s"] = round(relayed)
            result["cold_join_direct_entries_per_s"] = round(direct)
            ctx.log(f"circuit_relay: cold join {relayed:.0f} (relay) vs {direct:.0f} (direct)/s")

            time.sleep(2.5)  # meshes settle
            before = [
                histogram(parse_metrics(n.metrics()), HISTOGRAM) for n in (via_relay, via_direct)
            ]
            failed = _create_paced(holder, rate, window)
            made = holder.entries()
            settle = time.monotonic() + SETTLE_S  # every op applied (or give up): whole histograms
            while (
                time.monotonic() < settle
                and min(n.entries() for n in (via_relay, via_direct)) < made
            ):
                time.sleep(0.2)
            time.sleep(0.5)
            relay_p50, relay_p99, relay_n = _latency(before[0], via_relay)
            direct_p50, direct_p99, direct_n = _latency(before[1], via_direct)
            result.update(
                {
                    "live_relay_p50_ms": relay_p50,
                    "live_relay_p99_ms": relay_p99,
                    "live_direct_p50_ms": direct_p50,
                    "live_direct_p99_ms": direct_p99,
                    "live_ops": int(rate * window) - failed,
                    "live_applied_relay": int(relay_n or 0),
                    "live_applied_direct": int(direct_n or 0),
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                }
            )
    finally:
        relay.terminate()
        try:
            relay.wait(20)
        except subprocess.TimeoutExpired:
            relay.kill()
    return result
