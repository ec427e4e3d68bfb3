"""Gossipsub topic validators: garbage stops at the first honest node, and the
peer that delivered it (not the key that signed its envelope) takes the blame.

Node B peers with node A only; a raw py-libp2p peer connects to A only and
publishes on the live topic. Before validators, A's router forwarded every
message to B before A's engine looked at it, and a bad signature was blamed on
nobody, so a forger was never banned.
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
from tests.e2e.helpers import NodeProcess, listen_addr, start_node
from tests.e2e.raw_peer import NodeApi, dropped, loopback_addr, raw_peer, rejected, signed_entry
from tests.e2e.raw_peer import wait_until as wait_async

pytestmark = pytest.mark.e2e


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


def _forged_live() -> bytes:
    key = SigningKey(secrets.token_bytes(32))
    op = Op("create", make_recipe_id(bytes(key.verify_key), 0), None, RecipeFields("x", "", ""))
    entry = signed_entry(key, 0, ZERO_HASH, op)
    return protocol.encode(protocol.Live((entry.raw[:-1] + bytes([entry.raw[-1] ^ 1]),)))


async def test_forged_live_messages_are_not_forwarded_and_get_their_deliverer_banned(
    tmp_path: Path, nodes: list[NodeProcess], client: httpx.AsyncClient
) -> None:
    a = await trio.to_thread.run_sync(lambda: start_node(nodes, tmp_path / "a"))
    b = await trio.to_thread.run_sync(
        lambda: start_node(nodes, tmp_path / "b", "--peer", listen_addr(a))
    )
    api_a, api_b = NodeApi(client, a.api), NodeApi(client, b.api)
    status_a = await api_a.status()

    async def b_connected() -> bool:
        return any(p["connected"] for p in await api_b.peers())

    await wait_async(b_connected, 30, "b to connect to a")
    signature, malformed = dropped("signature"), dropped("malformed")
    with trio.fail_after(60):
        async with raw_peer(status_a["peer_id"], loopback_addr(status_a)) as raw:
            # A valid entry first: it must still flow to B through A.
            good_key = SigningKey(secrets.token_bytes(32))
            good_id = make_recipe_id(bytes(good_key.verify_key), 0)
            good = signed_entry(
                good_key, 0, ZERO_HASH, Op("create", good_id, None, RecipeFields("Good", "", ""))
            )
            await raw.send_live(protocol.encode(protocol.Live((good.raw,))))

            async def b_has_good() -> bool:
                return any(r["id"] == good_id for r in await api_b.recipes())

            await wait_async(b_has_good, 20, "a valid live entry to reach b through a")
            for _ in range(3):
                await raw.send_live(_forged_live())
                await raw.send_live(bytes([protocol.PROTOCOL_VERSION, protocol.LIVE]) + b"garbage")

            async def a_counted() -> bool:
                metrics = await api_a.metrics()
                return metrics.get(signature, 0) >= 3 and metrics.get(malformed, 0) >= 3

            await wait_async(a_counted, 15, "a to refuse the forgeries in its router")
            # Enough offences to be banned: 20 in 10 s.
            for _ in range(20):
                try:
                    with trio.move_on_after(2):
                        await raw.send_live(_forged_live(), timeout=1)
                except AssertionError:
                    break  # refused to publish: a already cut us off

            async def raw_banned() -> bool:
                peers = {p["peer_id"]: p for p in await api_a.peers()}
                record = peers.get(raw.peer_id)
                return record is None or not record["connected"]

            await wait_async(raw_banned, 20, "a to ban the forger that delivered the garbage")

    await trio.sleep(1.0)  # anything a forwarded would have reached b by now
    metrics_b = await api_b.metrics()
    for reason in ("signature", "malformed"):
        assert metrics_b.get(dropped(reason), 0) == 0, metrics_b
        assert metrics_b.get(rejected(reason), 0) == 0, metrics_b
    metrics_a = await api_a.metrics()
    assert metrics_a.get(dropped("peer_banned"), 0) >= 1, metrics_a
    assert (await api_b.status())["entries"] == 1
