"""Convergence cases that protocol version 2 fixed, against real node processes.

Each node runs `p2psync run --no-repl --api-port 0` on loopback with
--no-mdns (helpers.node_env) and its own data root, so nodes meet only
through --peer. Raw py-libp2p peers (raw_peer.py) deliver validly signed
entries of keys that belong to no node.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from nacl.signing import SigningKey

from p2psync.core import protocol
from p2psync.core.entry import ZERO_HASH, Entry, decode_entry
from p2psync.core.ids import make_recipe_id, peer_id_from_public_key, public_key_from_peer_id
from p2psync.core.ops import Op, RecipeFields
from tests.e2e.helpers import NodeProcess, listen_addr, run_cli, start_node
from tests.e2e.helpers import wait_until as wait_sync
from tests.e2e.raw_peer import NodeApi, dropped, loopback_addr, raw_peer, signed_entry
from tests.e2e.raw_peer import wait_until as wait_async

pytestmark = pytest.mark.e2e

FORKS = "p2psync_forks_detected_total"
OVERSIZED = dropped("oversized")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


async def start(nodes: list[NodeProcess], root: Path, *args: str) -> NodeProcess:
    """start_node off the trio thread, so raw peers keep running meanwhile."""
    return await trio.to_thread.run_sync(lambda: start_node(nodes, root, *args))


def chain(key: SigningKey, names: list[str], *, spoil_inner: bool = False) -> list[Entry]:
    """A create at seq 0, then updates of that recipe: one contiguous branch.

    `spoil_inner`: every signature but the last is garbage; a backfill run is
    authenticated by its last one (and its checkpoints), so nodes keep it.
    """
    recipe_id = make_recipe_id(bytes(key.verify_key), 0)
    entries: list[Entry] = []
    prev = ZERO_HASH
    for seq, name in enumerate(names):
        fields = RecipeFields(name, "beans", "simmer")
        op = (
            Op("create", recipe_id, None, fields)
            if seq == 0
            else Op("update", recipe_id, 0, fields)
        )
        entry = signed_entry(key, seq, prev, op)
        if spoil_inner and seq < len(names) - 1:
            entry = decode_entry(entry.signed_part + bytes(64))
        entries.append(entry)
        prev = entry.hash()
    return entries


def batch(entries: list[bytes], batch_no: int = 0, last: bool = True) -> bytes:
    # Round 1 is no round the node opened with us: it keeps the entries all the same.
    return protocol.encode(protocol.Batch(1, batch_no, last, tuple(entries)))


async def statuses(apis: list[NodeApi]) -> list[dict[str, Any]]:
    return [await api.status() for api in apis]


# ---------------------------------------------------------------- 1. equivocation


@pytest.mark.parametrize("spoiled", [False, True], ids=["signed", "spoiled-inner-signatures"])
async def test_equivocating_origin_is_proven_forked_on_both_sides(
    tmp_path: Path, nodes: list[NodeProcess], client: httpx.AsyncClient, spoiled: bool
) -> None:
    """In version 1 summaries compared counts only: each node kept its branch, digests differed.

    Spoiled: one branch's inner signatures are garbage. In version 2 a proof
    needed two validly signed entries, so this fork could not be proven and
    the digests differed for good; version 3 proofs carry the short chain to
    the signature that vouches for the entry.
    """
    a = await start(nodes, tmp_path / "a")
    b = await start(nodes, tmp_path / "b", "--peer", listen_addr(a))
    api_a, api_b = NodeApi(client, a.api), NodeApi(client, b.api)
    status_a, status_b = await api_a.status(), await api_b.status()

    async def connected() -> bool:
        return any(
            p["peer_id"] == status_a["peer_id"] and p["connected"] for p in await api_b.peers()
        )

    await wait_async(connected, 30, "b to connect to a")

    evil = SigningKey(secrets.token_bytes(32))
    evil_id = peer_id_from_public_key(bytes(evil.verify_key))
    one = chain(evil, ["Branch one", "Branch one v2", "Branch one v3"], spoil_inner=spoiled)
    two = chain(evil, ["Branch two", "Branch two v2", "Branch two v3"])
    assert one[0].raw != two[0].raw and one[0].seq == two[0].seq == 0

    async def deliver(api: NodeApi, status: dict[str, Any], branch: list[Entry]) -> None:
        # A raw peer of its own (its own libp2p identity), connected to this node only.
        async with raw_peer(status["peer_id"], loopback_addr(status)) as raw:
            await raw.send_pair(batch([e.raw for e in branch]))

            async def taken() -> bool:  # its branch, or already the other's and the proof
                s = await api.status()
                return bool(s["entries"] >= len(branch) or s["forked_origins"] >= 1)

            await wait_async(taken, 30, f"{status['peer_id']} to take its branch")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver, api_a, status_a, one)
            nursery.start_soon(deliver, api_b, status_b, two)

    seen: list[Any] = []

    async def both_proven() -> bool:
        now = await statuses([api_a, api_b])
        seen[:] = [{k: s[k] for k in ("entries", "forked_origins", "digest")} for s in now]
        return all(s["forked_origins"] == 1 for s in now) and now[0]["digest"] == now[1]["digest"]

    await wait_async(both_proven, 30, "both nodes to hold the fork proof", explain=lambda: seen)
    for api in (api_a, api_b):
        assert evil_id not in {r["author"] for r in await api.recipes()}
        metrics = await api.metrics()
        assert metrics.get(FORKS) == 1, metrics.get(FORKS)

    made = await api_a.create_recipe("After the fork")

    async def b_has_it() -> bool:
        return any(r["id"] == made["id"] for r in await api_b.recipes())

    await wait_async(b_has_it, 30, "a's new recipe to reach b")
    final = await statuses([api_a, api_b])
    assert final[0]["digest"] == final[1]["digest"]
    assert [s["forked_origins"] for s in final] == [1, 1]


# ---------------------------------------------------------------- 2. many origins

ORIGINS = 10_001
KEY_OFFSET = 7 << 200  # away from small seeds other tests might use


async def test_more_than_ten_thousand_origins_relay_down_a_chain(
    tmp_path: Path, nodes: list[NodeProcess], client: httpx.AsyncClient
) -> None:
    """In version 1 a summary of more than 10,000 origins was dropped as oversized."""
    raws: list[bytes] = []
    for i in range(ORIGINS):
        key = SigningKey((KEY_OFFSET + i).to_bytes(32, "big"))
        recipe_id = make_recipe_id(bytes(key.verify_key), 0)
        op = Op("create", recipe_id, None, RecipeFields(f"Dish {i}", "rice", "steam"))
        raws.append(signed_entry(key, 0, ZERO_HASH, op).raw)

    unlimited = ("--new-origins-per-hour", "0")  # 10,001 authors new to each node
    a = await start(nodes, tmp_path / "a", *unlimited)
    api_a = NodeApi(client, a.api)
    status_a = await api_a.status()
    with trio.fail_after(90):
        async with raw_peer(status_a["peer_id"], loopback_addr(status_a)) as raw:
            chunks = [raws[i : i + 1000] for i in range(0, ORIGINS, 1000)]
            for n, chunk in enumerate(chunks):
                await raw.send_pair(batch(chunk, n, n == len(chunks) - 1), timeout=30)

            async def a_has_all() -> bool:
                return bool((await api_a.status())["entries"] == ORIGINS)

            await wait_async(a_has_all, 60, "a to store every origin's entry")

    b = await start(nodes, tmp_path / "b", "--peer", listen_addr(a), *unlimited)
    c = await start(nodes, tmp_path / "c", "--peer", listen_addr(b), *unlimited)
    apis = [api_a, NodeApi(client, b.api), NodeApi(client, c.api)]
    seen: list[Any] = []

    async def converged() -> bool:
        now = await statuses(apis)
        seen[:] = [(s["entries"], s["digest"]) for s in now]
        return all(s["entries"] == ORIGINS for s in now) and len({s["digest"] for s in now}) == 1

    await wait_async(converged, 90, "the chain to converge", poll=0.5, explain=lambda: seen)
    c_peers = {p["peer_id"] for p in await apis[2].peers() if p["connected"]}
    assert status_a["peer_id"] not in c_peers, "c met a directly"
    for api in apis:
        metrics = await api.metrics()
        assert metrics.get(OVERSIZED, 0.0) == 0, metrics
        assert (await api.status())["recipes"] == ORIGINS


# ---------------------------------------------------------------- 3. old backup


def create(node: NodeProcess, name: str) -> str:
    body = {"name": name, "ingredients": "water", "instructions": "boil"}
    response = node.post("/api/v0/recipes", body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_restored_old_backup_learns_its_head_before_writing(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """In version 1 the restored node reused a seq its peer held and was rejected as a fork."""
    a_dir, backup = tmp_path / "a" / "data", tmp_path / "backup"
    b = start_node(nodes, tmp_path / "b")
    a = start_node(nodes, tmp_path / "a", "--data-dir", str(a_dir), "--peer", listen_addr(b))
    a_id = a.get("/api/v0/status")["peer_id"]
    ids = [create(a, f"soup {n}") for n in range(3)]
    done = run_cli(["backup", str(backup), "--data-dir", str(a_dir)], tmp_path / "a")
    assert done.returncode == 0, done.stderr
    ids += [create(a, f"soup {n}") for n in range(3, 6)]
    wait_sync(
        lambda: b.get("/api/v0/status")["entries"] == 6, 30, "b to hold a's six entries", a, b
    )
    assert a.stop() == 0
    nodes.remove(a)

    done = run_cli(["restore", str(backup), "--data-dir", str(a_dir)], tmp_path / "a")
    assert done.returncode == 0, done.stderr
    a = start_node(nodes, tmp_path / "a", "--data-dir", str(a_dir), "--peer", listen_addr(b))
    assert a.get("/api/v0/status")["peer_id"] == a_id
    # The node waits for its head only while a peer is connected: a write that
    # beats the --peer dial is signed from the backup's head at once (a race
    # of its own, outside what this test checks), so wait for the connection.
    wait_sync(lambda: any(p["connected"] for p in a.get("/api/v0/peers")), 30, "a to reach b", a, b)
    ids.append(create(a, "soup after restore"))
    # The new create follows the six entries b gave back: seq 6, not the backup's 3.
    assert ids[-1] == make_recipe_id(public_key_from_peer_id(a_id), 6), ids

    def converged() -> bool:
        sa, sb = a.get("/api/v0/status"), b.get("/api/v0/status")
        return (
            sa["digest"] == sb["digest"]
            and sa["entries"] == sb["entries"] == 7
            and ids[-1] in {r["id"] for r in b.get("/api/v0/recipes")}
        )

    wait_sync(converged, 30, "a and b to converge after the restore", a, b)
    for node in (a, b):
        assert node.get("/api/v0/status")["forked_origins"] == 0
    mine = [r["id"] for r in a.get("/api/v0/recipes") if r["author"] == a_id]
    assert sorted(mine) == sorted(ids)
