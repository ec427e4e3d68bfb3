"""Relay: a chain of 5 nodes; entries made at one end, timed until the far end holds them.

n1..n4 run first, chained (each dials the next: n1-n2-n3-n4), and connect.
The data of n0 is made beforehand (`--initial-ops N`, not timed); the clock
starts when n0 is spawned with `--peer <n1>`, and `seconds` is until n4 holds
all N. `hop_s` lists when n1, n2, n3 and n4 held all N. Nodes run with the
product's default `--sync-interval` (`--quick`: 2 s): backfilled entries
reach the next hop through anti-entropy rounds, so that interval shows here.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import Context, Node, Nodes, diagnose, generate_dataset, wait_until

KEYS = ("entries", "seconds")


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    count, total = sizes.relay_nodes, sizes.relay_entries
    base = ctx.workdir / "relay"
    interval = sizes.relay_sync_interval
    extra = [] if interval is None else ["--sync-interval", f"{interval:g}"]
    result: dict[str, Any] = {
        "nodes": count,
        "entries": total,
        "sync_interval": interval,
    }
    with Nodes() as nodes:
        result["generate_s"] = round(generate_dataset(nodes, base / "n0", total, 9, 120), 2)
        chain: list[Node] = []
        for i in range(count - 1, 0, -1):  # n4 first, then each dials the one after it
            dial = ["--peer", chain[0].addr] if chain else []
            chain.insert(0, nodes.start(base / f"n{i}", [*extra, *dial]))
        # n1 and n4 are the chain's ends until n0 arrives; the others have two peers.
        want = [1 if i in (0, len(chain) - 1) else 2 for i in range(len(chain))]
        wait_until(
            lambda: all(n.status()["peers"] >= w for n, w in zip(chain, want, strict=True)),
            30,
            "the chain to connect",
            interval=0.2,
        )
        source = nodes.start(base / "n0", [*extra, "--peer", chain[0].addr])
        t0 = source.spawned
        result["source_startup_s"] = round(source.ready_at - t0, 3)
        arrived: list[float | None] = [None] * len(chain)
        deadline = time.monotonic() + sizes.relay_timeout
        while time.monotonic() < deadline and arrived[-1] is None:
            for i, node in enumerate(chain):
                if arrived[i] is None and node.entries() >= total:
                    arrived[i] = time.monotonic() - t0
            time.sleep(0.1)
        if arrived[-1] is None:
            where = "; ".join(diagnose(n) for n in chain)
            raise TimeoutError(
                f"far end did not hold {total} entries in {sizes.relay_timeout:g} s: {where}"
            )
    result["seconds"] = round(arrived[-1], 3)
    result["hop_s"] = [None if a is None else round(a, 2) for a in arrived]
    result["entries_per_s"] = round(total / arrived[-1])
    return result
