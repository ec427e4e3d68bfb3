"""A hostile in-process libp2p peer and async helpers to watch one real node.

The raw peer is a bare ``open_libp2p_host`` (no engine, no store): it joins the
node's topics and publishes whatever bytes a test hands it, so tests can send
what an honest p2psync node never would.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from nacl.signing import SigningKey

from p2psync.core.entry import Entry, sign_entry
from p2psync.core.hlc import pack
from p2psync.core.ids import peer_id_from_seed
from p2psync.core.ops import Op, encode_op
from p2psync.net.host import Libp2pHost, Received, open_libp2p_host
from p2psync.net.libp2p_fixes import SIGNING_PREFIX
from p2psync.net.topics import live_topic, sync_topic

LOOPBACK = "127.0.0.1"
NETWORK = "default"
_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$"
)


# ---------------------------------------------------------------- HTTP side


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{label="v"}': value} (labels kept verbatim)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        labels = match.group("labels")
        key = match.group("name") + (f"{{{labels}}}" if labels else "")
        samples[key] = float(match.group("value"))
    return samples


def dropped(reason: str) -> str:
    return f'p2psync_messages_dropped_total{{reason="{reason}"}}'


def rejected(reason: str) -> str:
    return f'p2psync_entries_rejected_total{{reason="{reason}"}}'


class NodeApi:
    """Async JSON calls to one node's HTTP API (keeps the trio loop free)."""

    def __init__(self, client: httpx.AsyncClient, base: str) -> None:
        self.client = client
        self.base = base

    async def get(self, path: str, timeout: float = 5.0) -> Any:
        response = await self.client.get(self.base + path, timeout=timeout)
        response.raise_for_status()
        return response.json()

    async def status(self) -> dict[str, Any]:
        status: dict[str, Any] = await self.get("/api/v0/status")
        return status

    async def recipes(self) -> list[dict[str, Any]]:
        recipes: list[dict[str, Any]] = await self.get("/api/v0/recipes")
        return recipes

    async def peers(self) -> list[dict[str, Any]]:
        peers: list[dict[str, Any]] = await self.get("/api/v0/peers")
        return peers

    async def metrics(self) -> dict[str, float]:
        response = await self.client.get(self.base + "/metrics", timeout=5.0)
        response.raise_for_status()
        return parse_metrics(response.text)

    async def create_recipe(self, name: str) -> dict[str, Any]:
        body = {"name": name, "ingredients": "salt", "instructions": "stir"}
        response = await self.client.post(self.base + "/api/v0/recipes", json=body, timeout=10)
        assert response.status_code == 201, response.text
        recipe: dict[str, Any] = response.json()
        return recipe


def loopback_addr(status: dict[str, Any]) -> str:
    return next(a for a in status["listen_addrs"] if a.startswith(f"/ip4/{LOOPBACK}/"))


async def poll_until(
    condition: Callable[[], Awaitable[bool]], timeout: float, poll: float = 0.1
) -> bool:
    """True as soon as ``condition`` holds, False if it still does not after ``timeout``."""
    with trio.move_on_after(timeout):
        while not await condition():
            await trio.sleep(poll)
        return True
    return False


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    poll: float = 0.1,
    explain: Callable[[], object] | None = None,
) -> None:
    if await poll_until(condition, timeout, poll):
        return
    detail = f": {explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")


@dataclass
class Watchdog:
    """Polls a node's status (1 s budget) and its RSS while a test attacks it."""

    api: NodeApi
    pid: int
    interval: float = 0.2
    budget: float = 1.0
    samples: int = 0
    max_latency: float = 0.0
    max_rss: int = 0
    failures: list[str] = field(default_factory=list)

    async def run(self) -> None:
        proc = psutil.Process(self.pid)
        while True:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                self.failures.append("node process died")
                return
            self.max_rss = max(self.max_rss, proc.memory_info().rss)
            start = time.monotonic()
            try:
                await self.api.get("/api/v0/status", timeout=self.budget)
            except Exception as exc:
                self.failures.append(
                    f"status failed after {time.monotonic() - start:.2f} s: {exc!r}"
                )
            else:
                latency = time.monotonic() - start
                self.max_latency = max(self.max_latency, latency)
                if latency > self.budget:
                    self.failures.append(f"status took {latency:.2f} s")
            self.samples += 1
            await trio.sleep(self.interval)

    def check(self) -> None:
        assert self.samples >= 3, f"watchdog only took {self.samples} samples"
        assert not self.failures, self.failures


# ---------------------------------------------------------------- the raw peer


@dataclass
class RawPeer:
    host: Libp2pHost
    key: SigningKey
    node_id: str
    pair_topic: str
    live_topic: str
    node_spoke: trio.Event  # the node sent something on the pair topic: its session is up
    intruder: bool = False  # the pair topic is another peer's with the node

    @property
    def peer_id(self) -> str:
        return self.host.peer_id

    @property
    def public_key(self) -> bytes:
        return bytes(self.key.verify_key)

    async def send_pair(self, data: bytes, timeout: float = 5.0) -> None:
        if self.intruder:
            self.push_to_node(self.pair_topic, data)
            return
        result = await self.host.publish(self.pair_topic, data, timeout=timeout)
        assert result, f"publish on the pair topic refused: {result}"

    def push_to_node(self, topic: str, data: bytes) -> None:
        """A message on ``topic``, signed by us, queued straight to the node
        whatever its mesh says: a hostile peer does not wait to be grafted
        (the node keeps third peers out of a pair topic's mesh)."""
        pubsub = self.host._pubsub
        assert pubsub.sign_key is not None
        message = rpc_pb2.Message(
            data=data, topicIDs=[topic], from_id=pubsub.my_id.to_bytes(), seqno=pubsub._next_seqno()
        )
        message.signature = pubsub.sign_key.sign(SIGNING_PREFIX + message.SerializeToString())
        message.key = pubsub.host.get_public_key().serialize()
        self.host._router.send_rpc(ID.from_base58(self.node_id), rpc_pb2.RPC(publish=[message]))

    async def send_live(self, data: bytes, timeout: float = 5.0) -> None:
        result = await self.host.publish(self.live_topic, data, timeout=timeout)
        assert result, f"publish on the live topic refused: {result}"


async def _drain(
    channel: trio.MemoryReceiveChannel[Received], node_id: str, spoke: trio.Event | None
) -> None:
    async for received in channel:
        if spoke is not None and received.sender == node_id:
            spoke.set()


@asynccontextmanager
async def raw_peer(
    node_id: str,
    node_addr: str,
    *,
    pair_with: str | None = None,
    seed: bytes | None = None,
    mesh_timeout: float = 10.0,
) -> AsyncIterator[RawPeer]:
    """A connected raw peer, in the mesh of the live topic and of a pair topic.

    The pair topic is ours with the node, unless ``pair_with`` names another
    peer: then it is *that* peer's pair topic with the node (an intruder),
    whose pair messages go to the node outside any mesh (``push_to_node``).
    """
    seed = seed or secrets.token_bytes(32)
    async with open_libp2p_host(seed, LOOPBACK, 0) as host, trio.open_nursery() as nursery:
        assert host.peer_id == peer_id_from_seed(seed)
        pair = sync_topic(NETWORK, pair_with or host.peer_id, node_id)
        live = live_topic(NETWORK)
        spoke = trio.Event()
        nursery.start_soon(_drain, await host.subscribe(pair), node_id, spoke)
        nursery.start_soon(_drain, await host.subscribe(live), node_id, None)
        connected = await host.connect(node_addr, timeout=10)
        assert connected == node_id
        await host.wait_for_mesh_peer(live, node_id, mesh_timeout)
        if pair_with is None:
            await host.wait_for_mesh_peer(pair, node_id, mesh_timeout)
        else:  # the node PRUNEs a third peer on a pair topic: wait for its subscription
            await host.wait_for_topic_peer(pair, node_id, mesh_timeout)
        yield RawPeer(host, SigningKey(seed), node_id, pair, live, spoke, pair_with is not None)
        nursery.cancel_scope.cancel()


def signed_entry(key: SigningKey, seq: int, prev: bytes, op: Op) -> Entry:
    return sign_entry(key, seq, prev, pack(int(time.time() * 1000), 0), encode_op(op))
