"""A joiner killed with SIGKILL in the middle of a big backfill resumes where it was.

SPEC §6.2: log, recipe store and progress bitmaps change in one transaction,
so whatever a node had applied when it was killed is still there after a
restart, consistent, and the backfill continues from there instead of
starting over. Loopback only, --no-mdns (helpers.node_env).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import NodeProcess, listen_addr, start_node, wait_until

pytestmark = pytest.mark.e2e

TOTAL = 30_000
BATCH = 200


def held_sum(sync: dict[str, Any]) -> int:
    return sum(int(p["held"]) for p in sync["self"].values())


def metric(node: NodeProcess, series: str) -> float:
    base = node.api.rsplit("/api/v0", 1)[0]
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series} in /metrics")


def test_joiner_killed_mid_backfill_resumes_without_losing_or_refetching(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    holder = start_node(
        nodes, tmp_path / "h", "--initial-ops", str(TOTAL), "--seed", "21",
        "--batch-size", str(BATCH),
    )  # fmt: skip
    wait_until(lambda: holder.get("/api/v0/status")["entries"] == TOTAL, 180, "the holder", holder)
    h_status = holder.get("/api/v0/status")
    h_id, h_digest = h_status["peer_id"], h_status["digest"]
    j_dir = tmp_path / "j" / "data"
    j_args = ["--data-dir", str(j_dir), "--batch-size", str(BATCH), "--peer", listen_addr(holder)]

    # 1. Join, and kill -9 somewhere between 20 % and 80 % of the backfill.
    joiner = start_node(nodes, tmp_path / "j", *j_args)
    j_id = joiner.get("/api/v0/status")["peer_id"]
    seen: list[int] = []
    deadline = time.monotonic() + 120
    at_kill = None
    while time.monotonic() < deadline:
        entries = int(joiner.get("/api/v0/status")["entries"])
        seen.append(entries)
        if 0.2 * TOTAL <= entries <= 0.8 * TOTAL:
            joiner.proc.send_signal(signal.SIGKILL)
            at_kill = entries  # a lower bound: it may have applied more before dying
            break
        if entries > 0.8 * TOTAL:
            break
        time.sleep(0.01)
    assert at_kill is not None, f"never saw the backfill between 20 % and 80 %: {seen[-20:]}"
    assert joiner.stop(signal.SIGKILL) == -signal.SIGKILL
    nodes.remove(joiner)

    # 2. Restart on the same data dir with no peer: what it shows is exactly
    #    what survived the kill, a stable snapshot.
    alone = start_node(nodes, tmp_path / "j", "--data-dir", str(j_dir))
    status = alone.get("/api/v0/status")
    sync = alone.get("/api/v0/sync")
    assert status["peer_id"] == j_id, "the restarted joiner changed identity"
    persisted = int(status["entries"])
    assert persisted >= at_kill, f"had {at_kill} entries at the kill, {persisted} after restart"
    assert persisted < TOTAL, "the backfill was already complete: the kill tested nothing"
    assert held_sum(sync) == persisted, (status, sync)  # log and progress agree
    assert set(sync["self"]) == {h_id}, sync["self"]
    assert alone.get("/api/v0/status")["entries"] == persisted  # nothing moves without a peer
    assert alone.stop(signal.SIGTERM) == 0
    nodes.remove(alone)

    # 3. Restart with the holder again: first status at least the snapshot, then
    #    it finishes the backfill fetching only what it lacked.
    restarted = time.monotonic()
    joiner = start_node(nodes, tmp_path / "j", *j_args)
    first = joiner.get("/api/v0/status")
    assert first["peer_id"] == j_id
    assert first["entries"] >= persisted, (first["entries"], persisted)

    def converged() -> bool:
        s = joiner.get("/api/v0/status")
        return bool(s["entries"] == TOTAL and s["digest"] == h_digest)

    wait_until(converged, 60, "the joiner to resume and converge", joiner, holder)
    took = time.monotonic() - restarted
    sync = joiner.get("/api/v0/sync")
    assert held_sum(sync) == TOTAL == joiner.get("/api/v0/status")["entries"], sync
    assert sync["self"][h_id]["held"] == TOTAL
    refetched = metric(joiner, "p2psync_backfill_entries_received_total")
    missing = TOTAL - persisted
    # No start-over: the resumed backfill carries what was missing, not the
    # whole log again (a little slack for a batch in flight twice).
    assert missing <= refetched <= missing + 2 * BATCH, (refetched, missing, persisted)
    # Two healthy nodes on loopback: no round may stall. A stall here means the
    # holder ignored the restarted joiner's messages (e.g. gossipsub taking
    # them for duplicates of its previous life's: same peer id, same seqnos).
    failed = metric(joiner, 'p2psync_sync_rounds_total{result="failed"}')
    assert failed == 0, f"{failed:.0f} sync round(s) failed after the restart; took {took:.1f} s"
