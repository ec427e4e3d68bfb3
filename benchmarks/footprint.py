"""Footprint: memory, database size and startup time of a node holding N entries.

The node makes its N entries itself (`--initial-ops N`; `generate_per_s` is
that rate, from spawn to the "generated" line), then stops. It is started again
(no peers): `startup_s` is from spawn until `/api/v0/status` answers with all N
entries; `rss_mb` is its resident memory 2 s later (VmRSS), `db_mb` the size
of p2psync.db plus its -wal file, and `disk_to_wire` that per entry over the
entry's own bytes (what it takes on the wire). An empty node's RSS is given
for reference.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import Context, Nodes, db_mb, log_stats, wait_until

KEYS = ("entries", "rss_mb", "db_mb", "startup_s")


def run(ctx: Context) -> dict[str, Any]:
    total = ctx.sizes.footprint_entries
    base = ctx.workdir / "footprint"
    result: dict[str, Any] = {"entries": total}
    with Nodes() as nodes:
        empty = nodes.start(base / "empty", [])
        time.sleep(1.0)
        result["rss_mb_empty"] = round(empty.rss_mb(), 1)
        empty.stop()

        maker = nodes.start(base / "node", ["--initial-ops", str(total), "--seed", "4"])
        peak = 0.0

        def generated() -> bool:
            nonlocal peak
            peak = max(peak, maker.rss_mb())
            return "generated" in maker.stderr()

        t_done = wait_until(
            generated, ctx.sizes.footprint_gen_timeout, f"{total} generated ops", interval=0.5
        )
        result["generate_s"] = round(t_done - maker.spawned, 1)
        result["generate_per_s"] = round(total / (t_done - maker.spawned))
        result["rss_mb_generating_peak"] = round(peak, 1)
        t0 = time.monotonic()
        maker.stop(timeout=60)
        result["stop_s"] = round(time.monotonic() - t0, 2)
        result["db_mb"] = round(db_mb(base / "node"), 1)
        count, raw_bytes = log_stats(base / "node")
        result["wire_bytes_per_entry"] = round(raw_bytes / max(count, 1), 1)

        node = nodes.start(base / "node", [])
        result["startup_s"] = round(node.ready_at - node.spawned, 3)
        held = node.entries()
        if held != total:
            raise RuntimeError(f"restarted node holds {held} entries, expected {total}")
        time.sleep(2.0)
        result["rss_mb"] = round(node.rss_mb(), 1)
        result["db_mb_after_restart"] = round(db_mb(base / "node"), 1)
        result["bytes_per_entry_on_disk"] = round(result["db_mb"] * (1 << 20) / total, 1)
        # Target (issue 13): at most 1.5x the bytes an entry takes on the wire.
        result["disk_to_wire"] = round(
            result["bytes_per_entry_on_disk"] / max(result["wire_bytes_per_entry"], 1), 3
        )
    return result
