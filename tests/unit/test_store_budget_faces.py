"""What people see of --max-store-mb: REPL `status` and `ls sp`, /api/v0/status."""

from __future__ import annotations

import dataclasses

import trio

from p2psync.api.http import make_api_app
from p2psync.api.metrics import Metrics
from p2psync.node.service import StatusView
from tests.unit.test_http_api import TIMEOUT, running
from tests.unit.test_repl import FakeNode, run_lines

MIB = 1 << 20


class BudgetNode(FakeNode):
    def __init__(self, *, hit: bool, limit: int | None) -> None:
        super().__init__()
        self.hit, self.limit = hit, limit

    def status(self) -> StatusView:
        size = 3 * MIB // 2
        return dataclasses.replace(
            super().status(),
            store_bytes=size,
            max_store_bytes=self.limit,
            store_budget_hit=self.hit,
        )


async def test_status_and_ls_sp_say_when_the_budget_is_hit() -> None:
    node = BudgetNode(hit=True, limit=MIB)
    (status,) = await run_lines(node, "status")
    (store_line,) = [line for line in status.splitlines() if line.startswith("store:")]
    assert "1.50 MiB of 1.00 MiB" in store_line and "--max-store-mb" in store_line
    assert "BUDGET HIT" in store_line and "own writes still work" in store_line

    progress = await run_lines(node, "ls sp")
    assert "store budget hit (1.50 MiB of 1.00 MiB, --max-store-mb)" in progress[-1]
    assert "entries of other origins are refused" in progress[-1]


async def test_no_budget_line_while_under_it_or_without_one() -> None:
    under = BudgetNode(hit=False, limit=2 * MIB)
    (status,) = await run_lines(under, "status")
    assert "store:     1.50 MiB of 2.00 MiB (--max-store-mb)" in status.splitlines()
    assert "BUDGET HIT" not in status
    assert not any("budget" in line for line in await run_lines(under, "ls sp"))

    unlimited = BudgetNode(hit=False, limit=None)
    (status,) = await run_lines(unlimited, "status")
    assert "store:     1.50 MiB (no --max-store-mb)" in status.splitlines()


async def test_api_status_carries_store_budget_hit() -> None:
    for hit in (True, False):
        node = BudgetNode(hit=hit, limit=MIB)
        with trio.fail_after(TIMEOUT):
            async with running(make_api_app(node, Metrics())) as client:
                body = (await client.get("/api/v0/status")).json()
        assert body["store_budget_hit"] is hit
        assert body["store_bytes"] == 3 * MIB // 2 and body["max_store_bytes"] == MIB
        # Every field it had before is still there.
        assert {"peer_id", "entries", "recipes", "digest", "forked_origins"} <= set(body)
