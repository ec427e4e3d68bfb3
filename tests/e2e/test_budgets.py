"""Per-peer budgets on a real node: a peer that brings more new origins than its
budget allows is refused the excess, counted, scored down and banned.

Keys cost nothing, so before budgets one peer could make a node store any
number of strangers' entries.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from nacl.signing import SigningKey

from p2psync.core import protocol
from p2psync.core.entry import ZERO_HASH
from p2psync.core.ids import make_recipe_id
from p2psync.core.ops import Op, RecipeFields
from tests.e2e.helpers import NodeProcess, start_node
from tests.e2e.raw_peer import NodeApi, loopback_addr, raw_peer, rejected, signed_entry
from tests.e2e.raw_peer import wait_until as wait_async

pytestmark = pytest.mark.e2e

BUDGET = 30
STRANGERS = 80
EXCEEDED = 'p2psync_budget_exceeded_total{kind="new_origins"}'


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


def _stranger_entry() -> bytes:
    key = SigningKey(secrets.token_bytes(32))
    rid = make_recipe_id(bytes(key.verify_key), 0)
    entry = signed_entry(key, 0, ZERO_HASH, Op("create", rid, None, RecipeFields("s", "", "")))
    return protocol.encode(protocol.Live((entry.raw,)))


async def test_a_peer_past_its_new_origins_budget_is_refused_counted_and_banned(
    tmp_path: Path, nodes: list[NodeProcess], client: httpx.AsyncClient
) -> None:
    node = await trio.to_thread.run_sync(
        lambda: start_node(nodes, tmp_path / "a", "--new-origins-per-hour", str(BUDGET))
    )
    api = NodeApi(client, node.api)
    status = await api.status()
    with trio.fail_after(60):
        async with raw_peer(status["peer_id"], loopback_addr(status)) as raw:
            for _ in range(STRANGERS):
                with trio.move_on_after(2):
                    try:
                        await raw.send_live(_stranger_entry(), timeout=1)
                    except AssertionError:
                        break  # no longer connected: banned already

            async def counted_and_banned() -> bool:
                metrics = await api.metrics()
                peers = {p["peer_id"]: p for p in await api.peers()}
                gone = raw.peer_id not in peers or not peers[raw.peer_id]["connected"]
                return metrics.get(EXCEEDED, 0) >= 20 and gone

            await wait_async(counted_and_banned, 20, "the budget to be counted and the peer banned")
    final = await api.status()
    assert final["entries"] == BUDGET, final  # exactly the budget's worth of strangers
    metrics = await api.metrics()
    assert metrics.get(rejected("budget"), 0) >= 20, metrics
