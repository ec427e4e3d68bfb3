"""A hostile raw libp2p peer against one real node (SPEC §6.3, 6.4, 6.5).

The raw peer (tests/e2e/raw_peer.py) is an in-process py-libp2p host that
speaks gossipsub correctly but sends whatever bytes it likes on the node's
topics: garbage, malformed and oversized messages, bitmap bombs, forged and
forked entries, floods, and messages on a pair topic it does not belong to.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from pyroaring import BitMap64

from p2psync.core import protocol
from p2psync.core.entry import MAX_ENTRY_BYTES, MAX_SEQ, ZERO_HASH
from p2psync.core.errors import RemoteError
from p2psync.core.ids import make_recipe_id, peer_id_from_public_key, public_key_from_peer_id
from p2psync.core.items import MAX_BOUND, MIN_BOUND
from p2psync.core.ops import Op, RecipeFields
from p2psync.core.progress import MAX_BITMAP_BYTES
from p2psync.net.host import ConnectError
from tests.e2e.helpers import NodeProcess
from tests.e2e.raw_peer import (
    NodeApi,
    Watchdog,
    dropped,
    loopback_addr,
    poll_until,
    raw_peer,
    rejected,
    signed_entry,
    wait_until,
)

pytestmark = pytest.mark.e2e

NODE_ARGS = ["--host", "127.0.0.1", "--sync-interval", "2"]
RSS_LIMIT = 300 * 1024 * 1024


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("hostile"), NODE_ARGS)
    try:
        yield proc
    finally:
        alive = proc.proc.poll() is None
        code = proc.stop(signal.SIGTERM)
    assert alive, f"node died under attack:\n{proc.stderr()[-4000:]}"
    assert code == 0, f"node exited with {code} after the attacks:\n{proc.stderr()[-4000:]}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def api(node: NodeProcess, client: httpx.AsyncClient) -> NodeApi:
    return NodeApi(client, node.api)


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def fields(name: str) -> RecipeFields:
    return RecipeFields(name, "flour", "bake")


# ---------------------------------------------------------------- message makers


def batch_head(count: int) -> bytes:
    return bytes([protocol.PROTOCOL_VERSION, protocol.BATCH]) + struct.pack(">IIBI", 1, 0, 1, count)


QUESTION_ROUND = 7


def question() -> bytes:
    """A RECON question over everything, claiming to hold nothing: opens round 7."""
    ask = protocol.FingerprintRange(MIN_BOUND, MAX_BOUND, 0, 0)
    return protocol.encode(protocol.Recon(QUESTION_ROUND, protocol.REPLY_WANTED, (ask,)))


def want(origins: list[tuple[bytes, int, bytes]], final: bool = False) -> bytes:
    """A WANT of round 7 with hand-built claims (bitmaps as raw bytes, unchecked)."""
    body = struct.pack(">IBI", QUESTION_ROUND, int(final), len(origins))
    for origin, prefix, beyond in origins:
        body += struct.pack(">32sQBI", origin, prefix, 0, len(beyond)) + beyond
    return bytes([protocol.PROTOCOL_VERSION, protocol.WANT]) + body


def huge_valid_bitmap() -> bytes:
    """One add_range over ~1.2 billion seqs whose serialization just fits the cap."""
    containers = MAX_BITMAP_BYTES // 14
    while True:
        bitmap = BitMap64()
        bitmap.add_range(1 << 20, (1 << 20) + containers * 65536)
        bitmap.run_optimize()
        data: bytes = bitmap.serialize()
        if len(data) <= MAX_BITMAP_BYTES:
            assert len(data) > MAX_BITMAP_BYTES - 4096, len(data)
            return data
        containers -= 64


def bitmap_over_cap() -> bytes:
    bitmap = BitMap64()
    bitmap.update(range(0, 40_000 << 16, 1 << 16))  # one seq per container: ~400 KB
    data: bytes = bitmap.serialize()
    assert len(data) > MAX_BITMAP_BYTES
    return data


def pair_garbage() -> list[tuple[str, bytes]]:
    """(expected drop reason, message) for the pair topic."""
    beyond_max = BitMap64([MAX_SEQ + 1])
    return [
        ("version", b"\xff" + secrets.token_bytes(255)),
        ("version", bytes([9, protocol.BATCH]) + batch_head(0)[2:]),
        ("unknown_kind", bytes([protocol.PROTOCOL_VERSION, 0x42]) + secrets.token_bytes(8)),
        ("malformed", bytes([protocol.PROTOCOL_VERSION, protocol.BATCH, 0, 0, 0])),
        ("malformed", batch_head(protocol.MAX_BATCH_ENTRIES)),
        ("version", b"\xfe" + secrets.token_bytes(900 * 1024)),
        ("oversized", batch_head(protocol.MAX_BATCH_ENTRIES + 1)),
        ("oversized", batch_head(1) + struct.pack(">I", MAX_ENTRY_BYTES + 1) + bytes(64)),
        ("bitmap", want([(secrets.token_bytes(32), 0, bitmap_over_cap())])),
        ("bitmap", want([(secrets.token_bytes(32), 0, beyond_max.serialize())])),
        ("bitmap", want([(secrets.token_bytes(32), MAX_SEQ + 2, b"")])),
        ("unexpected", protocol.encode(protocol.Live((secrets.token_bytes(200),)))),
    ]


# ---------------------------------------------------------------- 1. garbage and forgeries


async def test_garbage_and_forgeries_are_refused_counted_and_harmless(
    node: NodeProcess, api: NodeApi
) -> None:
    status = await api.status()
    node_id, addr = status["peer_id"], loopback_addr(status)
    node_key = public_key_from_peer_id(node_id)
    own = await api.create_recipe("Node's own soup")
    create_seq = next(s for s in range(100_000) if make_recipe_id(node_key, s) == own["id"])
    garbage = pair_garbage()
    bombs = [  # inside a round the node answers: a question first, then claims
        question(),
        want([(secrets.token_bytes(32), 2**47, b"")]),
        want([(secrets.token_bytes(32), 0, huge_valid_bitmap())]),
        want([(node_key, 2**47, b"")], final=True),
    ]
    before = await api.metrics()
    watchdog = Watchdog(api, node.proc.pid)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.run)
        with trio.fail_after(40):
            async with raw_peer(node_id, addr) as raw:
                with trio.fail_after(12):
                    await raw.node_spoke.wait()  # its session with us is up
                for _, data in garbage:
                    await raw.send_pair(data)
                for data in bombs:
                    await raw.send_pair(data)
                # The true oversized message: past the protocol cap, which our
                # own publish() refuses, so hand it to pubsub directly.
                too_big = batch_head(0) + bytes(protocol.MAX_MESSAGE_BYTES)
                await raw.host._pubsub.publish(raw.pair_topic, too_big)
                garbage.append(("oversized", too_big))

                # Live topic: forged signature, wrong origin, a fork, foreign ops.
                stranger = SigningKey(secrets.token_bytes(32))
                forged = signed_entry(stranger, 0, ZERO_HASH, create_op(stranger, "Forged pie"))
                forged_raw = forged.raw[:-1] + bytes([forged.raw[-1] ^ 1])
                mine = signed_entry(
                    raw.key,
                    create_seq + 1,
                    ZERO_HASH,
                    Op("update", own["id"], create_seq, fields("Wrong origin pie")),
                )
                wrong_origin = mine.raw[:1] + node_key + mine.raw[33:]
                fork_a = signed_entry(raw.key, 0, ZERO_HASH, create_op(raw.key, "Fork A"))
                fork_b = signed_entry(raw.key, 0, ZERO_HASH, create_op(raw.key, "Fork B"))
                assert fork_a.raw != fork_b.raw
                hijack = signed_entry(
                    raw.key,
                    1,
                    fork_a.hash(),
                    Op("update", own["id"], create_seq, fields("Hijacked soup")),
                )
                delete = signed_entry(
                    raw.key, 2, hijack.hash(), Op("delete", own["id"], create_seq)
                )
                for entry_raw in (forged_raw, wrong_origin, fork_a.raw):
                    await raw.send_live(protocol.encode(protocol.Live((entry_raw,))))
                fork_id = make_recipe_id(raw.public_key, 0)

                async def fork_a_applied() -> bool:
                    return any(r["id"] == fork_id for r in await api.recipes())

                await wait_until(fork_a_applied, 10, "the first entry of the fork to apply")
                for entry_raw in (fork_b.raw, hijack.raw, delete.raw):
                    await raw.send_live(protocol.encode(protocol.Live((entry_raw,))))

                want_dropped: dict[str, int] = {}
                for reason, _ in garbage:
                    want_dropped[reason] = want_dropped.get(reason, 0) + 1
                # fork_b proves raw's origin forked at seq 0, so its later
                # entries (the hijack and the delete) count as "forked". The two
                # bad signatures stop in the router's live-topic validator: dropped.
                want_dropped["signature"] = want_dropped.get("signature", 0) + 2
                want_rejected = {"fork": 1, "forked": 2}

                seen: dict[str, float] = {}

                async def all_counted() -> bool:
                    now = await api.metrics()
                    seen.clear()
                    seen.update({k: delta(now, before, k) for k in now if delta(now, before, k)})
                    return all(
                        delta(now, before, dropped(r)) >= n for r, n in want_dropped.items()
                    ) and all(
                        delta(now, before, rejected(r)) >= n for r, n in want_rejected.items()
                    )

                await wait_until(
                    all_counted, 15, "every bad message to be counted", explain=lambda: seen
                )
                await trio.sleep(0.5)  # nothing more may trickle in
        nursery.cancel_scope.cancel()

    after = await api.metrics()
    for reason, n in want_dropped.items():
        assert delta(after, before, dropped(reason)) == n, (reason, after, before)
    for reason, n in want_rejected.items():
        assert delta(after, before, rejected(reason)) == n, (reason, after, before)
    watchdog.check()
    assert watchdog.max_rss < RSS_LIMIT, watchdog.max_rss
    assert node.proc.poll() is None

    recipes = {r["id"]: r for r in await api.recipes()}
    names = {r["name"] for r in recipes.values()}
    assert recipes[own["id"]]["name"] == "Node's own soup"
    assert recipes[own["id"]]["author"] == node_id
    assert not recipes[own["id"]]["published"]
    # The fork is proven: the forked origin's entries from seq 0 on no longer count.
    assert fork_id not in recipes
    assert (await api.status())["forked_origins"] == 1
    assert delta(after, before, "p2psync_forks_detected_total") == 1
    assert not names & {"Forged pie", "Wrong origin pie", "Fork B", "Hijacked soup"}, names
    stranger_id = peer_id_from_public_key(bytes(stranger.verify_key))
    authors = {r["author"] for r in recipes.values()}
    assert stranger_id not in authors
    assert authors <= {node_id}, authors


def create_op(key: SigningKey, name: str, seq: int = 0) -> Op:
    return Op("create", make_recipe_id(bytes(key.verify_key), seq), None, fields(name))


# ---------------------------------------------------------------- 2. flood


async def test_a_flooding_peer_is_cut_off_and_banned_while_others_still_sync(
    node: NodeProcess, api: NodeApi, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    status = await api.status()
    node_id, addr = status["peer_id"], loopback_addr(status)
    other = await trio.to_thread.run_sync(
        lambda: NodeProcess(tmp_path / "other", [*NODE_ARGS, "--peer", addr])
    )
    try:
        other_api = NodeApi(client, other.api)

        async def other_connected() -> bool:
            return any(p["peer_id"] == node_id and p["connected"] for p in await other_api.peers())

        await wait_until(other_connected, 20, "the well-behaved node to connect")
        before = await api.metrics()
        watchdog = Watchdog(api, node.proc.pid)
        payloads = [b"\xff" * 64, b"\xfe" + secrets.token_bytes(4096), b"\xfd" * (512 * 1024)]
        stats: dict[str, Any] = {"sent": 0, "refused": 0}
        cut_off = trio.Event()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog.run)
            with trio.fail_after(45):
                async with raw_peer(node_id, addr) as raw:
                    with trio.fail_after(12):
                        await raw.node_spoke.wait()

                    async def watch_events() -> None:
                        async for event in raw.host.peer_events:
                            if event.kind == "disconnected" and event.peer_id == node_id:
                                cut_off.set()

                    async def flood() -> None:
                        with trio.move_on_after(5):
                            i = 0
                            while True:
                                data = payloads[i % len(payloads)]
                                result = await raw.host.publish(raw.pair_topic, data, timeout=0.5)
                                stats["sent" if result else "refused"] += 1
                                i += 1
                                if not result:
                                    await trio.sleep(0.01)

                    nursery.start_soon(watch_events)
                    async with trio.open_nursery() as attack:
                        attack.start_soon(flood)
                        await trio.sleep(0.3)
                        made = await api.create_recipe("Made during the flood")

                        async def other_has_it() -> bool:
                            return any(r["id"] == made["id"] for r in await other_api.recipes())

                        await wait_until(other_has_it, 15, "the other node to get the recipe")
                        with trio.fail_after(10):
                            await cut_off.wait()
                    assert stats["sent"] >= 20, stats

                    # Within the ban: a reconnect is refused at once.
                    refused_before = (await api.metrics()).get(dropped("peer_refused"), 0.0)
                    with contextlib.suppress(ConnectError):
                        await raw.host.connect(addr, timeout=5)

                    async def refused_and_gone() -> bool:
                        now = await api.metrics()
                        return (
                            now.get(dropped("peer_refused"), 0.0) > refused_before
                            and node_id not in raw.host.connected_peers()
                        )

                    await wait_until(refused_and_gone, 10, "the banned peer to be refused")
                    peers = {p["peer_id"]: p for p in await api.peers()}
                    assert not peers.get(raw.peer_id, {"connected": False})["connected"]
            nursery.cancel_scope.cancel()

        after = await api.metrics()
        assert delta(after, before, dropped("peer_banned")) == 1, after
        watchdog.check()
        assert watchdog.max_rss < RSS_LIMIT, watchdog.max_rss
        assert node.proc.poll() is None
        assert await other_connected(), "the well-behaved node lost its connection"
        newer = await api.create_recipe("Made after the flood")

        async def other_has_newer() -> bool:
            return any(r["id"] == newer["id"] for r in await other_api.recipes())

        await wait_until(other_has_newer, 10, "the other node to keep syncing")
    finally:
        await trio.to_thread.run_sync(other.stop)


# ---------------------------------------------------------------- 3. wrong sender


async def test_pair_topic_messages_from_a_third_peer_are_dropped(
    node: NodeProcess, api: NodeApi
) -> None:
    status = await api.status()
    node_id, addr = status["peer_id"], loopback_addr(status)
    bad = bytes([9, protocol.RECON]) + bytes(16)  # counted as "version" if ever decoded
    with trio.fail_after(40):
        async with raw_peer(node_id, addr) as member:
            with trio.fail_after(12):
                await member.node_spoke.wait()
            async with raw_peer(node_id, addr, pair_with=member.peer_id) as intruder:
                assert intruder.pair_topic == member.pair_topic
                before = await api.metrics()
                for _ in range(5):
                    await intruder.send_pair(bad)

                async def counted(key: str, n: int) -> bool:
                    return delta(await api.metrics(), before, key) >= n

                await wait_until(
                    lambda: counted(dropped("wrong_sender"), 5), 10, "wrong_sender drops"
                )
                # Control: the same bytes from the pair's real member are decoded.
                await member.send_pair(bad)
                await wait_until(lambda: counted(dropped("version"), 1), 10, "the member's message")
                await trio.sleep(0.3)
                after = await api.metrics()
    assert delta(after, before, dropped("wrong_sender")) == 5, after
    assert delta(after, before, dropped("version")) == 1, after


async def test_a_peer_flooding_another_pairs_topic_is_cut_off(
    node: NodeProcess, api: NodeApi
) -> None:
    """SPEC §6.4: publishing on a pair topic one does not belong to is misbehaving.

    No honest node ever originates a message on another pair's topic, so the
    sender (authenticated by its gossipsub signature) can be scored down like
    any other source of bad messages: STRIKES_TO_BAN of them get it cut off.
    """
    status = await api.status()
    node_id, addr = status["peer_id"], loopback_addr(status)
    outcome: dict[str, Any] = {}
    with trio.fail_after(40):
        async with raw_peer(node_id, addr) as member:
            with trio.fail_after(12):
                await member.node_spoke.wait()
            async with raw_peer(node_id, addr, pair_with=member.peer_id) as intruder:
                before = await api.metrics()
                for _ in range(30):  # the node may cut us off before the last ones
                    intruder.push_to_node(intruder.pair_topic, b"\xff" * 32)
                    await trio.sleep(0.01)

                async def all_counted() -> bool:
                    return delta(await api.metrics(), before, dropped("wrong_sender")) >= 20

                async def intruder_cut_off() -> bool:
                    return node_id not in intruder.host.connected_peers()

                # Outcomes are asserted outside the hosts' nurseries, whose
                # exception groups would bury the message too deep to read.
                outcome["counted"] = await poll_until(all_counted, 10)
                outcome["cut_off"] = await poll_until(intruder_cut_off, 5)
                outcome["member_kept"] = node_id in member.host.connected_peers()
                outcome["metrics"] = await api.metrics()
    assert outcome["counted"], "not even 20 wrong_sender drops were counted"
    assert outcome["member_kept"], "the pair's real member lost its connection"
    assert outcome["cut_off"], (
        "the node kept a peer connected that sent 30 messages on another pair's topic"
        f" (wrong_sender +{delta(outcome['metrics'], before, dropped('wrong_sender')):g},"
        f" peer_banned +{delta(outcome['metrics'], before, dropped('peer_banned')):g})"
    )


_KINDS = st.integers(0, 255)
_FUZZ_MESSAGE = st.one_of(
    st.binary(max_size=2048),  # plain garbage
    st.builds(  # a valid header of any version and kind, then anything
        lambda version, kind, body: bytes([version, kind]) + body,
        st.sampled_from([protocol.PROTOCOL_VERSION, 0, 2, 255]),
        _KINDS,
        st.binary(max_size=4096),
    ),
    st.builds(  # valid-shaped batches whose entries are random bytes
        lambda entries: protocol.encode(protocol.Batch(1, 0, True, tuple(entries))),
        st.lists(st.binary(min_size=0, max_size=400), max_size=8),
    ),
    st.builds(  # summaries with random origins, prefixes and trailing junk
        lambda origins, junk: want(origins) + junk,
        st.lists(
            st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**48), st.just(b"")),
            max_size=4,
        ),
        st.binary(max_size=16),
    ),
)


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pair=st.lists(_FUZZ_MESSAGE, min_size=1, max_size=12), live=st.lists(_FUZZ_MESSAGE, max_size=6)
)
async def test_fuzzed_messages_never_hurt_the_node(
    node: NodeProcess, pair: list[bytes], live: list[bytes]
) -> None:
    """Hypothesis-made messages of every kind, from a fresh raw peer each time."""
    # Our own client: function-scoped fixtures outlive a single example.
    async with httpx.AsyncClient() as client:
        await _fuzz_once(node, NodeApi(client, node.api), pair, live)


async def _fuzz_once(node: NodeProcess, api: NodeApi, pair: list[bytes], live: list[bytes]) -> None:
    status = await api.status()
    node_id, addr = status["peer_id"], loopback_addr(status)
    before_recipes = {r["id"] for r in await api.recipes()}
    before = await api.metrics()
    watchdog = Watchdog(api, node.proc.pid)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.run)
        with trio.fail_after(30):
            async with raw_peer(node_id, addr) as raw:
                for data in pair:
                    if len(data) <= raw.host.max_payload_bytes:
                        await raw.host.publish(raw.pair_topic, data, timeout=2)
                for data in live:
                    if len(data) <= raw.host.max_payload_bytes:
                        await raw.host.publish(raw.live_topic, data, timeout=2)
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert not watchdog.failures, watchdog.failures
    assert node.proc.poll() is None, "the node died"
    after = await api.metrics()
    refused = sum(
        after[k] - before.get(k, 0.0)
        for k in after
        if k.startswith(("p2psync_messages_dropped_total", "p2psync_entries_rejected_total"))
    )
    applied = after.get("p2psync_entries_applied_total", 0) - before.get(
        "p2psync_entries_applied_total", 0
    )
    # Random bytes never make a validly signed entry: nothing new is applied,
    # and whatever reached the node was counted somewhere.
    assert applied == 0
    assert {r["id"] for r in await api.recipes()} == before_recipes
    undecodable = sum(1 for data in [*pair, *live] if _undecodable(data))
    assert refused >= undecodable, f"{undecodable} bad messages sent, {refused} counted"


def _undecodable(data: bytes) -> bool:
    try:
        protocol.decode(data)
    except RemoteError:
        return True
    return False
