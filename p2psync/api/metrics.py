"""Prometheus metrics of one node (SPEC §5).

Each `Metrics` owns its own registry: tests run several nodes in one process,
and the global registry would refuse the second node's metric names.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from p2psync.core.budgets import BudgetKind
from p2psync.core.reasons import Drop, Reason

# `*_created` series double the exposition for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Label values created up front so dashboards and tests see them at 0 before
# the first event; other values are still accepted when they occur.
ORIGIN_KINDS = ("own", "remote")
# Every reason the core gives (a refused entry or message) and every drop the
# node counts, each defined once in p2psync.core.reasons.
REJECT_REASONS = tuple(Reason)
DROP_REASONS = (*Reason, *Drop)
SYNC_RESULTS = ("ok", "failed")

# Apply latency spans a same-host hop (~1 ms) to a backlog after a partition.
# Fine steps up to 50 ms, where a LAN's live ops land: a quantile is read by
# interpolating inside one bucket, and with one bucket for all of 5-10 ms a
# p99 there was a guess (issue 13, round 13).
APPLY_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.0025,
    0.003,
    0.004,
    0.005,
    0.006,
    0.008,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# A durable commit: about 0.2 ms on an SSD, 10-100 ms on an SD card.
OWN_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
COMMIT_THREADS = ("event_loop", "worker")
# A checkpoint copies up to a few thousand 4 KiB pages: ~1 ms to ~100 ms.
WAL_CHECKPOINT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
SYNC_ROUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """All metrics of one node: implements node.observer.Observer; the API renders them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        # A gauge, not a counter: the node reports how many entries it holds,
        # and a gauge keeps the name exactly as SPEC has it.
        self._entries = Gauge(
            "p2psync_entries_total", "Entries held, by origin kind", ["origin_kind"], registry=reg
        )
        # Set after every commit: `labels()` looks the child up under a lock each time.
        self._entries_own = self._entries.labels(origin_kind="own")
        self._entries_remote = self._entries.labels(origin_kind="remote")
        # prometheus_client appends `_total` to counter names itself.
        self._applied = Counter(
            "p2psync_entries_applied", "Entries applied to the store", registry=reg
        )
        self._rejected = Counter(
            "p2psync_entries_rejected", "Entries refused, by reason", ["reason"], registry=reg
        )
        self._live_ops = Counter(
            "p2psync_live_ops_received", "Live ops received over gossip", registry=reg
        )
        self._backfill = Counter(
            "p2psync_backfill_entries_received",
            "Entries received through anti-entropy backfill",
            registry=reg,
        )
        self._sync_rounds = Counter(
            "p2psync_sync_rounds", "Anti-entropy rounds, by result", ["result"], registry=reg
        )
        self._sync_seconds = Histogram(
            "p2psync_sync_round_seconds",
            "Duration of anti-entropy rounds",
            buckets=SYNC_ROUND_BUCKETS,
            registry=reg,
        )
        self._apply_latency = Histogram(
            "p2psync_op_apply_latency_seconds",
            "From an op's HLC at its origin to applied here",
            buckets=APPLY_LATENCY_BUCKETS,
            registry=reg,
        )
        self._peers = Gauge("p2psync_peers_connected", "Peers connected now", registry=reg)
        self._dropped = Counter(
            "p2psync_messages_dropped",
            "Messages not sent or refused, by reason",
            ["reason"],
            registry=reg,
        )
        self._forks = Counter(
            "p2psync_forks_detected",
            "Origins proven to have signed two different entries for one seq",
            registry=reg,
        )
        self._budget_exceeded = Counter(
            "p2psync_budget_exceeded",
            "Messages or entries refused because their peer spent its budget, by kind",
            ["kind"],
            registry=reg,
        )
        self._store_bytes = Gauge(
            "p2psync_store_bytes", "Size of the local store's data in bytes", registry=reg
        )
        self._store_budget_bytes = Gauge(
            "p2psync_store_budget_bytes",
            "--max-store-mb in bytes; 0 when there is no limit",
            registry=reg,
        )
        self._store_budget_hit = Gauge(
            "p2psync_store_budget_hit",
            "1 while the store is past --max-store-mb and other origins' entries are refused",
            registry=reg,
        )
        self._relay_events = Counter(
            "p2psync_relay_events",
            "--relay reservations made and failures (refused, unreachable, lost, garbage, ...)",
            ["event"],
            registry=reg,
        )
        self._own_commit = Histogram(
            "p2psync_own_commit_seconds",
            "Durable commits of our own ops, by the thread they ran in (event_loop, worker)",
            ["thread"],
            buckets=OWN_COMMIT_BUCKETS,
            registry=reg,
        )
        self._own_commit_in = {t: self._own_commit.labels(thread=t) for t in COMMIT_THREADS}
        self._wal_checkpoint = Histogram(
            "p2psync_wal_checkpoint_seconds",
            "WAL checkpoints, run in a worker thread so that commits skip them",
            buckets=WAL_CHECKPOINT_BUCKETS,
            registry=reg,
        )
        self._wal_checkpoint_pages = Counter(
            "p2psync_wal_checkpoint_pages",
            "Pages those checkpoints copied from the WAL into the database",
            registry=reg,
        )
        self._precreate_labels()

    def _precreate_labels(self) -> None:
        for budget in BudgetKind:
            self._budget_exceeded.labels(kind=budget)
        for kind in ORIGIN_KINDS:
            self._entries.labels(origin_kind=kind)
        for reason in REJECT_REASONS:
            self._rejected.labels(reason=reason)
        for reason in DROP_REASONS:
            self._dropped.labels(reason=reason)
        for result in SYNC_RESULTS:
            self._sync_rounds.labels(result=result)

    def set_entries(self, own: int, remote: int) -> None:
        self._entries_own.set(own)
        self._entries_remote.set(remote)

    def entries_applied(self, n: int = 1) -> None:
        self._applied.inc(n)

    def entries_rejected(self, reason: str, n: int = 1) -> None:
        self._rejected.labels(reason=reason).inc(n)

    def live_ops_received(self, n: int = 1) -> None:
        self._live_ops.inc(n)

    def backfill_entries_received(self, n: int = 1) -> None:
        self._backfill.inc(n)

    def sync_round(self, ok: bool, seconds: float) -> None:
        """Count one anti-entropy round and record how long it took."""
        self._sync_rounds.labels(result="ok" if ok else "failed").inc()
        self._sync_seconds.observe(max(0.0, seconds))

    def observe_apply_latency(self, seconds: float) -> None:
        # Clocks of different hosts disagree; a negative latency means skew, not time travel.
        self._apply_latency.observe(max(0.0, seconds))

    def set_peers_connected(self, n: int) -> None:
        self._peers.set(n)

    def dropped(self, reason: str, n: int = 1) -> None:
        self._dropped.labels(reason=reason).inc(n)

    def fork_detected(self) -> None:
        self._forks.inc()

    def budget_exceeded(self, kind: str) -> None:
        self._budget_exceeded.labels(kind=kind).inc()

    def set_store_size(self, size_bytes: int, limit_bytes: int | None, budget_hit: bool) -> None:
        self._store_bytes.set(size_bytes)
        self._store_budget_bytes.set(limit_bytes or 0)
        self._store_budget_hit.set(1 if budget_hit else 0)

    def own_commit(self, seconds: float, in_event_loop: bool) -> None:
        self._own_commit_in["event_loop" if in_event_loop else "worker"].observe(seconds)

    def wal_checkpoint(self, seconds: float, pages: int) -> None:
        self._wal_checkpoint.observe(seconds)
        self._wal_checkpoint_pages.inc(pages)

    def relay_event(self, event: str, n: int = 1) -> None:
        self._relay_events.labels(event=event).inc(n)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
