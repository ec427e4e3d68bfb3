"""Token buckets: how much of something a peer may make us do, refilled over time.

Pure: the caller passes the time. A bucket holds at most `burst` tokens and
gains `rate` per second; spending more than it holds is refused and
changes nothing, so an honest peer that pauses gets its full burst back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BudgetKind(StrEnum):
    """What a budget limits (the `kind` label of p2psync_budget_exceeded_total)."""

    RECON = "recon"  # reconciliation questions (rounds) a peer starts with us
    QUERY = "query"  # `ls r all` queries a peer sends us
    LIVE = "live"  # live entries a peer publishes (whoever forwards them to us)
    NEW_ORIGINS = "new_origins"  # origins we never held, introduced by a peer


@dataclass(frozen=True, slots=True)
class BudgetRate:
    burst: float  # tokens a full bucket holds
    per_second: float  # tokens regained each second


# Generous for an honest household; an attacker meets them within seconds.
DEFAULT_BUDGETS: dict[BudgetKind, BudgetRate] = {
    BudgetKind.RECON: BudgetRate(burst=60, per_second=2.0),
    BudgetKind.QUERY: BudgetRate(burst=20, per_second=0.5),
    BudgetKind.LIVE: BudgetRate(burst=5_000, per_second=1_000.0),
    BudgetKind.NEW_ORIGINS: BudgetRate(burst=1_000, per_second=1_000 / 3600),
}


@dataclass(slots=True)
class TokenBucket:
    rate: BudgetRate
    tokens: float
    updated: float  # monotonic seconds of the last refill

    @classmethod
    def full(cls, rate: BudgetRate, now: float) -> TokenBucket:
        return cls(rate, rate.burst, now)

    def spend(self, now: float, amount: float = 1.0) -> bool:
        """Take `amount` tokens if the bucket holds them; False (and take none) if not."""
        self._refill(now)
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.rate.burst, self.tokens + elapsed * self.rate.per_second)
        self.updated = max(self.updated, now)


class PeerBudgets:
    """One bucket per (peer, kind), for at most `max_peers` peers.

    Peer ids cost nothing to make, so the table is bounded: the peer heard
    from least recently is forgotten first (it starts full if it returns).
    """

    def __init__(self, rates: dict[BudgetKind, BudgetRate], max_peers: int = 4096) -> None:
        self._rates = rates
        self._max_peers = max_peers
        self._buckets: dict[str, dict[BudgetKind, TokenBucket]] = {}

    def spend(self, peer: str, kind: BudgetKind, now: float, amount: float = 1.0) -> bool:
        rate = self._rates.get(kind)
        if rate is None:
            return True  # no budget of this kind: unlimited
        buckets = self._buckets.pop(peer, None)
        if buckets is None:
            buckets = {}
            while len(self._buckets) >= self._max_peers:
                del self._buckets[next(iter(self._buckets))]
        self._buckets[peer] = buckets  # most recent last
        bucket = buckets.get(kind)
        if bucket is None:
            bucket = buckets[kind] = TokenBucket.full(rate, now)
        return bucket.spend(now, amount)

    def __len__(self) -> int:
        return len(self._buckets)
