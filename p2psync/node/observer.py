"""What the node reports as it works: the observer interface it needs.

`p2psync.api.metrics.Metrics` implements it for Prometheus; the simulator
and tests use `NullObserver` or a recorder. node/ depends only on this
protocol, never on the API.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def set_entries(self, own: int, remote: int) -> None: ...

    def entries_applied(self, n: int = 1) -> None: ...

    def entries_rejected(self, reason: str, n: int = 1) -> None: ...

    def live_ops_received(self, n: int = 1) -> None: ...

    def backfill_entries_received(self, n: int = 1) -> None: ...

    def sync_round(self, ok: bool, seconds: float) -> None: ...

    def observe_apply_latency(self, seconds: float) -> None: ...

    def set_peers_connected(self, n: int) -> None: ...

    def dropped(self, reason: str, n: int = 1) -> None: ...

    def fork_detected(self) -> None: ...

    def budget_exceeded(self, kind: str) -> None: ...

    def set_store_size(self, size_bytes: int, limit_bytes: int | None, budget_hit: bool) -> None:
        """The store's measured size, --max-store-mb in bytes (None: no limit), and
        whether other origins' entries are refused for it."""
        ...

    def own_commit(self, seconds: float, in_event_loop: bool) -> None:
        """A durable commit of our own ops took `seconds`, in the trio thread or a worker."""
        ...

    def wal_checkpoint(self, seconds: float, pages: int) -> None:
        """A WAL checkpoint in a worker thread took `seconds` and copied `pages`."""
        ...

    def relay_event(self, event: str, n: int = 1) -> None:
        """A --relay was reserved on, or failed (refused, unreachable, lost, garbage, ...)."""
        ...


class NullObserver:
    """Observes nothing: for drivers that do not export metrics."""

    def set_entries(self, own: int, remote: int) -> None:
        pass

    def entries_applied(self, n: int = 1) -> None:
        pass

    def entries_rejected(self, reason: str, n: int = 1) -> None:
        pass

    def live_ops_received(self, n: int = 1) -> None:
        pass

    def backfill_entries_received(self, n: int = 1) -> None:
        pass

    def sync_round(self, ok: bool, seconds: float) -> None:
        pass

    def observe_apply_latency(self, seconds: float) -> None:
        pass

    def set_peers_connected(self, n: int) -> None:
        pass

    def dropped(self, reason: str, n: int = 1) -> None:
        pass

    def fork_detected(self) -> None:
        pass

    def budget_exceeded(self, kind: str) -> None:
        pass

    def set_store_size(self, size_bytes: int, limit_bytes: int | None, budget_hit: bool) -> None:
        pass

    def own_commit(self, seconds: float, in_event_loop: bool) -> None:
        pass

    def wal_checkpoint(self, seconds: float, pages: int) -> None:
        pass

    def relay_event(self, event: str, n: int = 1) -> None:
        pass
