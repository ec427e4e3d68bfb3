"""Scale: N nodes in a full mesh — idle CPU and RSS per node, and a burst of creates.

For each N of the run (quick: 4; full: 4, 8, 16 and 32), the same figures are
taken for N `p2psync run --no-repl --no-mdns` processes and then, in the same
run, for N raw py-libp2p gossipsub processes on one topic (the wrapper the
daemon uses, p2psync.net.host, so the same gossipsub settings):

- **Full mesh.** Identities and loopback ports are made up front, so every
  process starts at once and process i dials (``--peer``) every process j < i.
  The mesh is up when every node reports N-1 peers (the raw ones: N-1 topic
  peers); then every node has finished its first anti-entropy round with
  every peer (``/api/v0/peers`` ``syncs_ok``; start-up is no idle cost),
  ``settle_s`` passes, and only then is anything measured.
- **Idle CPU** per process: utime+stime from /proc/<pid>/stat over
  ``idle_window_s`` divided by the window and the clock tick, in % of one core.
  The full run's window is one whole periodic interval (``--sync-interval``
  30 s, times peers/8 past 8 peers: ``rounds.periodic_interval``), so it holds
  the periodic round with each peer: a shorter one may miss or catch them.
  The load average of the machine is recorded beside it (a shared machine).
- **RSS** per process: VmRSS from /proc/<pid>/status after the idle window.
- **Burst.** Every node gets ``burst`` creates (``POST /api/v0/recipes``),
  all sent at the same moment: ``burst`` requests in flight on every node at
  once, as the raw baseline publishes its ``burst`` messages at once.
  ``burst_s`` is from that moment until every node holds N*burst entries
  (``/api/v0/status`` ``entries``, each node polled until it holds them
  all). The raw baseline publishes ``burst`` messages from every process at
  the same moment (told on stdin), each of the size of a live entry message
  of this run, and ``raw_flood_s`` is until the last process has all
  (N-1)*burst others'. ``burst_ratio`` = burst_s / raw_flood_s (issue 13: at
  most 2). ``burst_posts_answered_s`` is until every POST was answered: the
  part of ``burst_s`` spent creating, the rest spreading. ``burst_node_cpu_s``
  and ``raw_flood_cpu_s``: the CPU the nodes (the raw processes) used from
  that moment until all held all, summed. The requests at once come from a
  lean load generator (``benchmarks/load.py``: requests encoded and
  connections opened before the moment, answers read by a minimal parser),
  not httpx, which took 2.4 ms of CPU a request on the nodes' two cores and
  was the burst's bottleneck at N = 4 (rounds 1 to 10 used it; it opened
  its connections after the moment). The requests go out in turns over the
  nodes (``burst_posts_sent_s``: until all were written).
  ``burst_harness_cpu_s`` is what this process used meanwhile, clients and
  polling. Polling starts once every request is
  out, asks every pending node at once (one after another before round 11)
  and backs off to 5 % of the time so far (at least 50 ms; every 50 ms
  before round 11): ``burst_s`` is when the poll that found the last node
  complete returned, ``burst_s_at_least`` when the poll before it was sent,
  and the true time lies between.
- **Burst in turn** (``burst_in_turn_*``), then, once the first completed
  and ``settle_s`` passed: the same, but each node's client sends its
  creates one after another, each when the last was answered. Rounds 1 to
  9 of issue 13 measured only this, as ``burst_s`` (``burst_mode`` in the
  results says which); its ratio is still against the raw flood at once. A
  node then publishes one op at a time, about as fast as its API answers,
  so every op travels alone (a yamux frame, a Noise message and a socket
  write per op per peer) where at once they share them. It always runs
  second, on nodes that hold one burst more.

Run as a child for the raw baseline::

    python -m benchmarks.scale raw --seed HEX --port P [--peer ADDR]... --nodes N
                                   --burst B --size S

It prints ``READY`` once it sees N-1 peers on the topic, floods on a ``GO``
line on stdin, and prints ``RESULT <json>`` when it has everyone's messages.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import REPO, BenchError, Context, Node, log_stats, rss_mb, wait_until
from benchmarks.load import post_all_at_once, post_request
from p2psync.core.rounds import periodic_interval

KEYS = ("nodes", "idle_cpu_pct", "burst_s", "raw_flood_s", "burst_ratio", "rss_mb")
TOPIC = "p2psync-bench/scale"
_HEAD = struct.Struct(">HI")  # sender index, seq
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc helpers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of stat(5)


def idle_cpu_pct(pids: list[int], window: float) -> list[float]:
    """% of one core each process used over `window` seconds (sleeps that long)."""
    before = [cpu_seconds(p) for p in pids]
    t0 = time.monotonic()
    time.sleep(window)
    after = [cpu_seconds(p) for p in pids]
    elapsed = time.monotonic() - t0
    return [round(100 * (a - b) / elapsed, 2) for a, b in zip(after, before, strict=True)]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _free_ports(count: int) -> list[int]:
    """Listen ports below the kernel's ephemeral range, free right now.

    Every process starts at once and dials the others, so a port picked from
    the ephemeral range could meanwhile become some dial's source port.
    """
    low, _high = (
        int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(max(1024, low - 12_000), low)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _identity(data_dir: Path) -> str:
    """Write a fresh identity seed into `data_dir`; return its peer id."""
    from p2psync.core.ids import peer_id_from_seed

    seed = secrets.token_bytes(32)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / "identity.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)
    return peer_id_from_seed(seed)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(sum(values) / len(values), 2),
        "max": round(max(values), 2),
        "min": round(min(values), 2),
        "sum": round(sum(values), 2),
    }


# ---------------------------------------------------------------- p2psync side


def _stop_all(nodes: list[Node]) -> None:
    for node in nodes:  # SIGTERM to all first: they stop in parallel
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        node.stop()


def _idle_window(base_s: float, n: int) -> float:
    """One whole periodic interval of a node with n - 1 peers (longer past 8
    peers, see periodic_interval): each pair's periodic round falls inside it once."""
    return periodic_interval(base_s, n - 1)


def _run_nodes(ctx: Context, n: int, base: Path, burst: int) -> dict[str, Any]:
    sizes = ctx.sizes
    ports = _free_ports(n)
    ids = [_identity(base / f"n{i}") for i in range(n)]
    addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{pid}" for p, pid in zip(ports, ids, strict=True)]
    nodes: list[Node] = []
    out: dict[str, Any] = {}
    try:
        t_spawn = time.monotonic()
        for i in range(n):
            peers = [x for a in addrs[:i] for x in ("--peer", a)]
            nodes.append(Node(base / f"n{i}", ["--port", str(ports[i]), *peers], name=f"n{i}"))
        for node in nodes:
            node.wait_ready(60 + 2 * n)
        try:
            mesh_at = wait_until(
                lambda: all(x.status()["peers"] >= n - 1 for x in nodes),
                sizes.scale_mesh_timeout,
                f"{n} nodes to reach {n - 1} peers each",
                interval=0.5,
            )
            out["mesh_s"] = round(mesh_at - t_spawn, 1)
        except BenchError:  # an overloaded machine: measure the mesh as it is, say so
            out["mesh_s"] = None
        out["peers_min_at_start"] = min(x.status()["peers"] for x in nodes)
        t_synced = time.monotonic()
        try:
            wait_until(
                lambda: all(_synced_with_all(x, n) for x in nodes),
                sizes.scale_mesh_timeout,
                "every node's first round with every peer",
                interval=0.5,
            )
            out["first_rounds_s"] = round(time.monotonic() - t_synced, 1)
        except BenchError:  # measure as it is, and say so
            out["first_rounds_s"] = None
        time.sleep(sizes.scale_settle_s)
        pids = [x.proc.pid for x in nodes]
        out["idle_loadavg"] = loadavg()
        out["idle_window_s"] = window = _idle_window(sizes.scale_idle_window_s, n)
        cpu = idle_cpu_pct(pids, window)
        out["idle_cpu_pct_each"] = cpu
        out["idle_cpu"] = _summary(cpu)
        rss = [rss_mb(p) for p in pids]
        out["rss"] = _summary(rss)
        out["peers_after_idle"] = min(x.status()["peers"] for x in nodes)

        out["burst_loadavg"] = loadavg()
        first = _burst(nodes, burst, sizes.scale_burst_timeout, at_once=True)
        out.update({f"burst_{k}": v for k, v in first.items()})
        dead = [x.name for x in nodes if x.proc.poll() is not None]
        if first["s"] is None or first["failed_posts"] or dead:
            # Its leftovers would count towards the second burst.
            out["burst_in_turn_skipped"] = f"the burst at once did not complete (dead: {dead})"
        else:
            time.sleep(sizes.scale_settle_s)  # the first burst's last rounds end
            out["burst_in_turn_loadavg"] = loadavg()
            try:
                second = _burst(nodes, burst, sizes.scale_burst_timeout, at_once=False)
                out.update({f"burst_in_turn_{k}": v for k, v in second.items()})
            except (BenchError, httpx.HTTPError, OSError) as exc:  # keep the rest
                out["burst_in_turn_skipped"] = f"{type(exc).__name__}: {exc}"[:300]
        entries, size = log_stats(base / "n0")
        out["message_bytes"] = round(size / entries) + 8 if entries else 276
        out["rss_after_burst"] = _summary([rss_mb(p) for p in pids])
    finally:
        _stop_all(nodes)
    return out


def _synced_with_all(node: Node, n: int) -> bool:
    peers = node.get("/api/v0/peers")
    return sum(1 for p in peers if p.get("connected") and p.get("syncs_ok", 0) >= 1) >= n - 1


def _recipe(index: int, i: int, tag: str) -> dict[str, str]:
    return {
        "name": f"scale soup {tag}{index}-{i}",
        "ingredients": "flour,egg,milk,butter,salt",
        "instructions": "whisk then fold then bake",
    }


def _own_cpu() -> float:
    """CPU seconds this process (the harness: clients and polling) used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def poll_interval(elapsed: float) -> float:
    """How long to wait before asking the pending nodes again: 5 % of the time
    so far, at least 50 ms. Each ask costs about a millisecond of CPU on each
    side of the same two cores; asking every 50 ms, the 32 nodes of N = 32
    took most of a core off the burst they measured. A node's time is
    bracketed by its last two polls (`s_at_least` .. `s`)."""
    return max(0.05, elapsed / 20)


def _burst(nodes: list[Node], burst: int, timeout: float, *, at_once: bool) -> dict[str, Any]:
    """Creates on every node, released at one moment once every client is
    made. `at_once`: each node's `burst` requests are all in flight together,
    else one after another. Figures: `s` (until all hold all; None if some
    never did: when the poll that found the last node complete returned),
    `s_at_least` (when the poll before it was sent: the true time lies
    between), `min_held`, `failed_posts`, `posts_sent_s` (at once: until every
    request was written), `posts_answered_s` (None if a client never
    finished), `node_cpu_s` (summed over the nodes) and `harness_cpu_s` (this
    process: clients and polling, on the same cores)."""
    want = [x.entries() + burst * len(nodes) for x in nodes]
    pids = [x.proc.pid for x in nodes]
    go, sent = threading.Event(), threading.Event()
    if not at_once:
        sent.set()  # polling starts at once: the requests go out as answered
    failed = [0] * len(nodes)
    answers = [0] * len(nodes)
    answered = [0.0] * len(nodes)
    tls = ssl.create_default_context()  # made once: httpx makes one per client, 40 ms each

    def note(index: int, ok: bool) -> None:
        failed[index] += not ok
        answers[index] += 1
        if answers[index] == burst:  # its last answer
            answered[index] = time.monotonic()

    def post_in_turn(index: int, ready: threading.Event) -> None:
        node = nodes[index]
        with httpx.Client(timeout=30, verify=tls) as client:
            ready.set()
            go.wait()
            for i in range(burst):
                try:
                    response = client.post(
                        node.api + "/api/v0/recipes", json=_recipe(index, i, "t")
                    )
                    note(index, response.status_code == 201)
                except httpx.HTTPError:
                    note(index, False)

    def post_at_once(ready: threading.Event) -> None:
        requests = [
            [
                post_request(
                    node.api, "/api/v0/recipes", json.dumps(_recipe(index, i, "a")).encode()
                )
                for i in range(burst)
            ]
            for index, node in enumerate(nodes)
        ]
        try:
            apis = [x.api for x in nodes]
            post_all_at_once(apis, requests, go, ready.set, sent.set, note, timeout)
        except Exception:  # whatever it was, the burst fails, not the run
            ready.set()
            sent.set()
            for index in range(len(nodes)):
                for _ in range(burst - answers[index]):
                    note(index, False)

    readies: list[threading.Event] = []
    threads: list[threading.Thread] = []
    for index in range(1 if at_once else len(nodes)):
        ready = threading.Event()
        readies.append(ready)
        args: tuple[Any, ...] = (ready,) if at_once else (index, ready)
        target = post_at_once if at_once else post_in_turn
        threads.append(threading.Thread(target=target, args=args, daemon=True))
    for t in threads:
        t.start()
    for ready in readies:
        if not ready.wait(30):
            go.set()  # let the others end
            raise BenchError("a burst client could not be made in 30 s")
    pending = set(range(len(nodes)))
    held = [0] * len(nodes)
    asked = [0.0] * len(nodes)  # when each node's latest poll was sent
    done_at = done_after = 0.0

    def poll(i: int) -> tuple[int, float, int | None, float]:
        before = time.monotonic()
        try:
            count: int | None = nodes[i].entries()
        except httpx.HTTPError:
            count = None
        return i, before, count, time.monotonic()

    polls = ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="poll")
    try:
        cpu0 = [cpu_seconds(p) for p in pids]
        harness0 = _own_cpu()
        t0 = time.monotonic()
        go.set()
        sent.wait(timeout)  # nothing is complete before every request is out
        posts_sent = time.monotonic() - t0 if at_once else 0.0
        deadline = t0 + timeout
        while pending and time.monotonic() < deadline:
            # Every pending node at once: one after another, a sweep over 32
            # busy nodes took seconds, and each node's time was that late.
            for i, before, count, after in polls.map(poll, sorted(pending)):
                if count is None:
                    continue
                held[i] = count
                if count >= want[i]:
                    # It held all by the time this answer came back, and not
                    # yet when the poll before it was sent (or the start).
                    pending.discard(i)
                    done_at = max(done_at, after)
                    done_after = max(done_after, asked[i] or t0)
                else:
                    asked[i] = before
            if pending:
                time.sleep(poll_interval(time.monotonic() - t0))
        node_cpu = sum(cpu_seconds(p) for p in pids) - sum(cpu0)
        harness_cpu = _own_cpu() - harness0
    finally:
        go.set()  # a client still waiting ends (it times out or is answered)
        polls.shutdown(wait=False)
    for t in threads:
        t.join(30)
    base = [w - burst * len(nodes) for w in want]
    all_answered = all(a == burst for a in answers)
    return {
        "s": None if pending else round(done_at - t0, 3),
        "s_at_least": None if pending else round(done_after - t0, 3),
        "min_held": min(h - b for h, b in zip(held, base, strict=True)),
        "failed_posts": sum(failed),
        "posts_sent_s": round(posts_sent, 3) if at_once else None,
        "posts_answered_s": round(max(answered) - t0, 3) if all_answered else None,
        "node_cpu_s": round(node_cpu, 2),
        "harness_cpu_s": round(harness_cpu, 2),
    }


# ---------------------------------------------------------------- raw side (child)


async def _raw_role(args: argparse.Namespace) -> None:
    import trio

    from p2psync.net.host import open_libp2p_host

    expected = (args.nodes - 1) * args.burst
    async with open_libp2p_host(bytes.fromhex(args.seed), "127.0.0.1", args.port) as host:
        channel = await host.subscribe(TOPIC, buffer=max(4096, 2 * expected))
        for addr in args.peer:  # the others start at the same time: retry a while
            with trio.move_on_after(60):
                while True:
                    try:
                        await host.connect(addr, timeout=5)
                        break
                    except Exception:
                        await trio.sleep(0.2)
        with trio.move_on_after(60):
            while len(host.peers_in_topic(TOPIC)) < args.nodes - 1:
                await trio.sleep(0.1)
        print(f"READY {len(host.peers_in_topic(TOPIC))}", flush=True)
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if not line.startswith("GO"):
            return
        seen: set[tuple[int, int]] = set()
        got_all = trio.Event()
        last: list[float] = [0.0]

        async def receive() -> None:
            async for received in channel:
                index, seq = _HEAD.unpack_from(received.data)
                if index != args.index:
                    seen.add((index, seq))
                if len(seen) >= expected:
                    last[0] = time.time()
                    got_all.set()
                    return

        refused = 0
        t_go = time.time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            pad = bytes(max(0, args.size - _HEAD.size))
            for seq in range(args.burst):
                result = await host.publish(TOPIC, _HEAD.pack(args.index, seq) + pad, timeout=10)
                refused += not result
            t_sent = time.time()
            with trio.move_on_after(args.timeout):
                await got_all.wait()
            nursery.cancel_scope.cancel()
        print(
            "RESULT "
            + json.dumps(
                {
                    "last": last[0] or None,
                    "go": t_go,
                    "sent": t_sent,
                    "received": len(seen),
                    "refused": refused,
                    "mesh": len(host.mesh_peers(TOPIC)),
                    "drops": host.drop_counts(),
                }
            ),
            flush=True,
        )
        line = await trio.to_thread.run_sync(sys.stdin.readline)  # stay up until told


class _RawChild:
    def __init__(self, argv: list[str]) -> None:
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the child)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scale", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def tagged(self, tag: str) -> str | None:
        for line in self.lines:
            if line.startswith(tag + " "):
                return line[len(tag) + 1 :]
        return None

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        finally:
            self._stderr.close()


def _run_raw(ctx: Context, n: int, burst: int, size: int) -> dict[str, Any]:
    sizes = ctx.sizes
    ports = _free_ports(n)
    seeds = [secrets.token_bytes(32) for _ in range(n)]
    from p2psync.core.ids import peer_id_from_seed

    addrs = [
        f"/ip4/127.0.0.1/tcp/{p}/p2p/{peer_id_from_seed(s)}"
        for p, s in zip(ports, seeds, strict=True)
    ]
    children: list[_RawChild] = []
    out: dict[str, Any] = {}
    try:
        t_spawn = time.monotonic()
        for i in range(n):
            argv = ["raw", "--index", str(i), "--seed", seeds[i].hex(), "--port", str(ports[i])]
            argv += ["--nodes", str(n), "--burst", str(burst), "--size", str(size)]
            argv += ["--timeout", str(sizes.scale_burst_timeout)]
            argv += [x for a in addrs[:i] for x in ("--peer", a)]
            children.append(_RawChild(argv))

        def ready() -> bool:
            for child in children:
                if child.proc.poll() is not None:
                    raise BenchError(f"raw child exited: {child.stderr()[-2000:]}")
            return all(c.tagged("READY") is not None for c in children)

        try:
            wait_until(ready, sizes.scale_mesh_timeout, f"{n} raw peers to mesh", interval=0.2)
            out["mesh_s"] = round(time.monotonic() - t_spawn, 1)
        except BenchError:
            out["mesh_s"] = None
            if not all(c.tagged("READY") is not None for c in children):
                raise
        out["topic_peers_min"] = min(int(c.tagged("READY") or 0) for c in children)
        time.sleep(sizes.scale_settle_s)
        pids = [c.proc.pid for c in children]
        out["idle_loadavg"] = loadavg()
        out["idle_window_s"] = window = _idle_window(sizes.scale_idle_window_s, n)
        cpu = idle_cpu_pct(pids, window)
        out["idle_cpu_pct_each"] = cpu
        out["idle_cpu"] = _summary(cpu)
        out["rss"] = _summary([rss_mb(p) for p in pids])

        out["burst_loadavg"] = loadavg()
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.time()
        for child in children:
            child.tell("GO")
        wait_until(
            lambda: all(c.tagged("RESULT") is not None for c in children),
            sizes.scale_burst_timeout + 15,
            f"{n} raw peers' flood results",
            interval=0.05,
        )
        try:  # each child waits for its kill after its RESULT
            out["flood_cpu_s"] = round(sum(cpu_seconds(p) for p in pids) - cpu0, 2)
        except OSError:
            out["flood_cpu_s"] = None
        results = [json.loads(c.tagged("RESULT") or "{}") for c in children]
        complete = all(r.get("last") for r in results)
        out["flood_s"] = round(max(r["last"] for r in results) - t0, 3) if complete else None
        out["flood_each"] = [  # seconds from GO: read it, published all, received all
            [round((r.get(k) or t0) - t0, 3) for k in ("go", "sent", "last")] for r in results
        ]
        out["flood_min_received"] = min(r["received"] for r in results)
        out["flood_refused"] = sum(r["refused"] for r in results)
        # Forwards py-libp2p dropped at full per-peer queues: copies the
        # flood did not send (the mesh delivers others), work a slower node
        # does. Summed over the peers, by reason.
        drops: dict[str, int] = {}
        for r in results:
            for reason, count in (r.get("drops") or {}).items():
                drops[reason] = drops.get(reason, 0) + count
        out["flood_drops"] = drops
    finally:
        for child in children:
            child.kill()
    return out


# ---------------------------------------------------------------- scenario


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    burst = sizes.scale_burst
    by_n: dict[str, Any] = {}
    for n in sizes.scale_nodes:
        ctx.log(f"scale: {n} nodes")
        base = ctx.workdir / "scale" / f"n{n}"
        figures: dict[str, Any] = {"nodes": n}
        try:
            figures["p2psync"] = _run_nodes(ctx, n, base, burst)
            size = figures["p2psync"]["message_bytes"]
            ctx.log(f"scale: {n} nodes: p2psync {figures['p2psync']['idle_cpu']}; raw next")
            figures["raw"] = _run_raw(ctx, n, burst, size)
        except (BenchError, httpx.HTTPError, OSError) as exc:  # keep the smaller Ns' figures
            figures["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            ctx.log(f"scale: {n} nodes failed: {figures['error']}")
        by_n[str(n)] = figures

    def column(side: str, *path: str) -> list[Any]:
        values = []
        for figures in by_n.values():
            value: Any = figures.get(side)
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(value)
        return values

    burst_s = column("p2psync", "burst_s")
    in_turn_s = column("p2psync", "burst_in_turn_s")
    flood_s = column("raw", "flood_s")

    def ratios(seconds: list[Any]) -> list[float | None]:
        return [
            round(b / f, 2) if b is not None and f else None
            for b, f in zip(seconds, flood_s, strict=True)
        ]

    result: dict[str, Any] = {
        "nodes": [int(n) for n in by_n],
        "burst_per_node": burst,
        "idle_window_s": column("p2psync", "idle_window_s"),
        "idle_cpu_pct": column("p2psync", "idle_cpu", "mean"),
        "idle_cpu_pct_max": column("p2psync", "idle_cpu", "max"),
        "raw_idle_cpu_pct": column("raw", "idle_cpu", "mean"),
        "burst_mode": "at_once",  # until round 9 (2026-12-03) burst_s was in turn
        "burst_s": burst_s,
        "burst_posts_answered_s": column("p2psync", "burst_posts_answered_s"),
        "burst_node_cpu_s": column("p2psync", "burst_node_cpu_s"),
        "burst_s_at_least": column("p2psync", "burst_s_at_least"),
        "burst_posts_sent_s": column("p2psync", "burst_posts_sent_s"),
        "burst_harness_cpu_s": column("p2psync", "burst_harness_cpu_s"),
        "burst_client": "lean",  # rounds 1 to 10: httpx (2.4 ms of CPU a request)
        "raw_flood_cpu_s": column("raw", "flood_cpu_s"),
        "raw_flood_s": flood_s,
        "burst_ratio": ratios(burst_s),
        "burst_in_turn_s": in_turn_s,
        "burst_in_turn_posts_answered_s": column("p2psync", "burst_in_turn_posts_answered_s"),
        "burst_in_turn_ratio": ratios(in_turn_s),  # against the raw flood at once
        "burst_in_turn_node_cpu_s": column("p2psync", "burst_in_turn_node_cpu_s"),
        "burst_in_turn_harness_cpu_s": column("p2psync", "burst_in_turn_harness_cpu_s"),
        "rss_mb": column("p2psync", "rss", "mean"),
        "raw_rss_mb": column("raw", "rss", "mean"),
        "loadavg_1m": [
            (f.get("p2psync") or {}).get("idle_loadavg", [None])[0] for f in by_n.values()
        ],
        "by_n": by_n,
    }
    errors = [f"N={n}: {f['error']}" for n, f in by_n.items() if "error" in f]
    if errors and len(errors) == len(by_n):
        raise BenchError("; ".join(errors))
    return result


def main(argv: list[str] | None = None) -> int:
    import trio

    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("raw")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--seed", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--burst", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    trio.run(_raw_role, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
