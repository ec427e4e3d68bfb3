"""Shared pieces: sizes per mode, real node processes, polling, metrics parsing."""

from __future__ import annotations

import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    """Every size and time limit of one run; `FULL` is what the issue asks for."""

    cold_join_entries: int
    cold_join_origins: int
    live_nodes: int
    live_rate: float  # ops per second at the creator
    live_seconds: float
    live_light_rate: float  # a second run at a rate the machine carries
    in_sync_entries: int
    relay_nodes: int
    relay_entries: int
    relay_sync_interval: float | None  # None: the product's default --sync-interval
    footprint_entries: int
    core_entries: int
    # Single-entry LIVEs applied one at a time, from one publisher: within its
    # live budget (a burst of 5 000, then 1 000/s), or the run refuses some.
    core_live_ops: int
    summary_entries: int
    many_origins: int  # origins of one entry each, for the reconciliation figures
    # Time limits (seconds): a scenario that hits one reports what it has.
    cold_join_timeout: float
    relay_timeout: float
    footprint_gen_timeout: float
    # scale (issue 13): N nodes in full mesh, idle CPU/RSS and a burst per node
    scale_nodes: tuple[int, ...] = (4,)
    scale_burst: int = 25
    scale_settle_s: float = 3.0  # after the mesh is up, before the idle window
    scale_idle_window_s: float = 5.0
    scale_mesh_timeout: float = 60.0
    scale_burst_timeout: float = 60.0


FULL = Sizes(
    cold_join_entries=100_000,
    cold_join_origins=4,
    live_nodes=5,
    live_rate=100.0,
    live_seconds=20.0,
    live_light_rate=30.0,
    in_sync_entries=100_000,
    relay_nodes=5,
    relay_entries=10_000,
    relay_sync_interval=None,
    footprint_entries=1_000_000,
    core_entries=100_000,
    core_live_ops=5_000,
    summary_entries=100_000,
    many_origins=100_000,
    cold_join_timeout=180.0,
    relay_timeout=150.0,
    footprint_gen_timeout=300.0,
    scale_nodes=(4, 8, 16, 32),
    scale_settle_s=10.0,
    scale_idle_window_s=30.0,  # one --sync-interval, x (N-1)/8 past 9 nodes (scale.py)
    scale_mesh_timeout=180.0,
    scale_burst_timeout=120.0,
)

QUICK = Sizes(
    cold_join_entries=20_000,
    cold_join_origins=4,
    live_nodes=5,
    live_rate=100.0,
    live_seconds=5.0,
    live_light_rate=30.0,
    in_sync_entries=20_000,
    relay_nodes=5,
    relay_entries=2_000,
    relay_sync_interval=2.0,  # quick: keep the 4 hops within CI's time
    footprint_entries=50_000,
    core_entries=20_000,
    core_live_ops=1_000,
    summary_entries=100_000,
    many_origins=2_000,
    cold_join_timeout=60.0,
    relay_timeout=60.0,
    footprint_gen_timeout=60.0,
    scale_nodes=(4,),
    scale_settle_s=3.0,
    scale_idle_window_s=5.0,
    scale_mesh_timeout=45.0,
    scale_burst_timeout=30.0,
)


@dataclass
class Context:
    sizes: Sizes
    quick: bool
    workdir: Path
    log: Callable[[str], None]


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A scenario could not produce its figures; the message says why."""


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.05
) -> float:
    """Poll `condition` until true; return the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def child_env(data_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PSYNC_")}
    env["P2PSYNC_DATA_ROOT"] = str(data_root)  # one root per node: no same-host discovery
    env["P2PSYNC_NO_MDNS"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Node:
    """One `p2psync run` child on loopback with its API on an ephemeral port."""

    def __init__(self, data_dir: Path, args: list[str], *, name: str = "") -> None:
        self.data_dir = data_dir
        self.name = name or data_dir.name
        data_dir.mkdir(parents=True, exist_ok=True)
        root = data_dir.parent / f".root-{data_dir.name}"
        root.mkdir(parents=True, exist_ok=True)
        self.stderr_path = data_dir.parent / f"{data_dir.name}.{time.monotonic_ns()}.log"
        self._stderr = self.stderr_path.open("w")
        cmd = [
            sys.executable,
            "-m",
            "p2psync",
            "run",
            "--no-repl",
            "--no-mdns",
            "--host",
            "127.0.0.1",
            "--api-port",
            "0",
            "--data-dir",
            str(data_dir),
            *args,
        ]
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=child_env(root),
            cwd=REPO,
        )
        self.api = ""
        self.addr = ""
        self.ready_at = 0.0
        self._client = httpx.Client(timeout=10)

    # -- start-up ------------------------------------------------------------

    def wait_ready(self, timeout: float = 60) -> Node:
        """Wait until the API answers; sets `api`, `addr` and `ready_at`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr_path.read_text()
            api = re.search(r"API on (http://\S+)/api/v0/status", text)
            addr = re.search(r"listening on (/ip4/127\.0\.0\.1/\S+)", text)
            if api and addr:
                self.api, self.addr = api.group(1), addr.group(1)
                try:
                    self._client.get(self.api + "/api/v0/status").raise_for_status()
                except httpx.HTTPError:
                    pass
                else:
                    self.ready_at = time.monotonic()
                    return self
            if self.proc.poll() is not None:
                raise BenchError(f"node {self.name} exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        raise BenchError(f"node {self.name} did not start in {timeout:g} s:\n{self.stderr()}")

    # -- API -----------------------------------------------------------------

    def get(self, path: str) -> Any:
        response = self._client.get(self.api + path)
        response.raise_for_status()
        return response.json()

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/api/v0/status")
        return result

    def entries(self) -> int:
        return int(self.status()["entries"])

    def held_of(self, origin_peer_id: str) -> int:
        """Entries of one origin this node holds (from /api/v0/sync "self")."""
        mine = self.get("/api/v0/sync").get("self", {})
        return int(mine.get(origin_peer_id, {}).get("held", 0))

    def metrics(self) -> str:
        response = self._client.get(self.api + "/metrics")
        response.raise_for_status()
        return response.text

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    # -- stop ----------------------------------------------------------------

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop in time."""
        self._client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._stderr.close()
        return code


class Nodes:
    """Every node a scenario started, stopped on exit whatever happens."""

    def __init__(self) -> None:
        self.started: list[Node] = []

    def start(self, data_dir: Path, args: list[str], *, name: str = "", wait: bool = True) -> Node:
        node = Node(data_dir, args, name=name)
        self.started.append(node)
        return node.wait_ready() if wait else node

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.started:
            node.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def db_mb(data_dir: Path) -> float:
    total = 0
    for suffix in ("", "-wal"):
        path = data_dir / f"p2psync.db{suffix}"
        if path.exists():
            total += path.stat().st_size
    return total / (1 << 20)


def log_stats(data_dir: Path) -> tuple[int, int]:
    """(entries, total raw bytes) of a node's log, read straight from its database."""
    conn = sqlite3.connect(f"file:{data_dir / 'p2psync.db'}?mode=ro", uri=True)
    try:
        # Schema 6 stores each entry without its 32-byte origin key (store/rows.py).
        count, size = conn.execute(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM log"
        ).fetchone()
    finally:
        conn.close()
    return int(count), int(size) + 32 * int(count)


def generate_dataset(nodes: Nodes, data_dir: Path, ops: int, seed: int, timeout: float) -> float:
    """Make a data dir holding `ops` entries of its own; return seconds taken."""
    node = nodes.start(data_dir, ["--initial-ops", str(ops), "--seed", str(seed)])
    wait_until(
        lambda: "generated" in node.stderr(), timeout, f"{ops} ops in {data_dir.name}", interval=0.1
    )
    seconds = time.monotonic() - node.spawned
    node.stop()
    nodes.started.remove(node)
    return seconds


# ---------------------------------------------------------------- Prometheus text


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """{'name{labels}': value} for every sample line."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def histogram(samples: dict[str, float], name: str) -> list[tuple[float, float]]:
    """Cumulative buckets [(upper bound, count)] of a histogram, +Inf last."""
    buckets: list[tuple[float, float]] = []
    for key, value in samples.items():
        if key.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', key)
            if le:
                buckets.append((math.inf if le.group(1) == "+Inf" else float(le.group(1)), value))
    return sorted(buckets)


def diff_buckets(
    after: list[tuple[float, float]], before: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    old = dict(before)
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def sum_buckets(many: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    total: dict[float, float] = {}
    for buckets in many:
        for le, count in buckets:
            total[le] = total.get(le, 0.0) + count
    return sorted(total.items())


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Like PromQL histogram_quantile: linear inside the bucket holding rank q."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the last finite bound: report that bound
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def bucket_max(buckets: list[tuple[float, float]]) -> float | None:
    """Upper bound of the highest non-empty bucket (the last finite bound for +Inf)."""
    best: float | None = None
    below, lower = 0.0, 0.0
    for le, count in buckets:
        if count > below:
            best = lower if math.isinf(le) else le
        below = count
        if not math.isinf(le):
            lower = le
    return best


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of exact samples."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def diagnose(node: Node) -> str:
    """One line on a node's state, for error messages."""
    try:
        status = node.status()
        samples = parse_metrics(node.metrics())
    except (httpx.HTTPError, OSError) as exc:
        return f"{node.name}: no answer ({exc})"
    drops = {
        key.split('"')[1]: int(v)
        for key, v in samples.items()
        if key.startswith("p2psync_messages_dropped_total{") and v
    }
    rounds = {
        key.split('"')[1]: int(v)
        for key, v in samples.items()
        if key.startswith("p2psync_sync_rounds_total{")
    }
    return (
        f"{node.name}: {status['entries']} entries, {status['peers']} peers,"
        f" rounds {rounds}, dropped {drops}"
    )
