"""--max-store-mb with real nodes on loopback (--no-mdns): past its budget node B
stops taking A's entries, still takes its own writes, and says so."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import NodeProcess, listen_addr, start_node, wait_until

pytestmark = pytest.mark.e2e

A_OPS = 6000  # a few MiB of log on A
B_BUDGET_MB = "0.5"


def metric(node: NodeProcess, line_start: str) -> float:
    text = httpx.get(node.api.replace("/api/v0", "") + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start}")


def test_past_its_budget_b_refuses_a_entries_but_takes_its_own(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = start_node(nodes, tmp_path / "a", "--initial-ops", str(A_OPS), "--seed", "3")
    wait_until(lambda: a.get("/api/v0/status")["entries"] == A_OPS, 20, "A's ops", a)
    b = start_node(nodes, tmp_path / "b", "--peer", listen_addr(a), "--max-store-mb", B_BUDGET_MB)

    wait_until(
        lambda: b.get("/api/v0/status")["store_budget_hit"], 20, "B's budget to be hit", a, b
    )
    status = b.get("/api/v0/status")
    assert status["max_store_bytes"] == int(float(B_BUDGET_MB) * (1 << 20))
    assert status["store_bytes"] >= status["max_store_bytes"]
    held = status["entries"]
    assert 0 < held < A_OPS

    # A's next rounds (sync interval 2 s) and a live op offer more: all refused.
    live = a.post("/api/v0/recipes", {"name": "Live", "ingredients": "i", "instructions": "s"})
    assert live.status_code == 201, live.text
    time.sleep(4.5)
    assert b.get("/api/v0/status")["entries"] == held
    assert metric(b, 'p2psync_entries_rejected_total{reason="store_full"}') > 0
    assert metric(b, "p2psync_store_budget_hit") == 1

    # B's own writes still work.
    created = b.post("/api/v0/recipes", {"name": "Mine", "ingredients": "i", "instructions": "s"})
    assert created.status_code == 201, created.text
    assert b.get("/api/v0/status")["entries"] == held + 1
    assert b.get("/api/v0/status")["store_budget_hit"] is True
    # ...and still reach A.
    recipe_id = created.json()["id"]
    wait_until(
        lambda: any(r["id"] == recipe_id for r in a.get("/api/v0/recipes")),
        10,
        "B's own recipe to reach A",
        a,
        b,
    )

    # One warning line in B's log, however many entries were refused.
    warnings = re.findall(r"store is past --max-store-mb 0\.5 .*own writes still work", b.stderr())
    assert len(warnings) == 1, b.stderr()[-3000:]
