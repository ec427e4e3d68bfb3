"""Peers of another network, sans I/O: remembered so they are not dialed again.

mDNS finds every libp2p node on the LAN, not only p2psync nodes of our
`--network`. A peer that says which p2psync network it is in (mDNS TXT
`p2psync=<network>`) and names another is never dialed; any other peer is,
and its network is learned from the topics it subscribes to once connected
(`node/dialing.py`). A peer found in another network is remembered here for
`foreign_seconds`: the peer policy neither syncs with it nor dials it again
while it is, and holds nothing against it (no strike, no ban), for it is not
misbehaving, only elsewhere.

A peer that showed no p2psync network at all is only a guess: a node of
another application, or one of ours whose subscriptions were held up (a slow
link, or a man in the middle stalling a connection to get two honest peers
to shun each other). So it is remembered for `unknown_seconds`, doubling
each time the guess repeats, up to `foreign_seconds`; one sign of our
network wipes the slate. At most `limit` peers are remembered, the oldest
dropped first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Foreign:
    network: str | None  # the p2psync network it is in; None: it runs none
    until: float  # remembered until then

    def describe(self) -> str:
        where = "no p2psync network" if self.network is None else f"network {self.network!r}"
        return f"{where}, not ours: not syncing with it"


class ForeignPeers:
    def __init__(self, seconds: float, limit: int, unknown_seconds: float = 120.0) -> None:
        self.seconds = seconds
        self.unknown_seconds = min(unknown_seconds, seconds)
        self.limit = limit
        self._peers: dict[str, Foreign] = {}
        self._guesses: dict[str, int] = {}  # "no network" verdicts in a row

    def mark(self, peer_id: str, network: str | None, now: float) -> Foreign:
        seconds = self.seconds
        if network is None:
            guesses = self._guesses.pop(peer_id, 0)
            self._guesses[peer_id] = guesses + 1
            _bound(self._guesses, self.limit)
            seconds = min(self.seconds, self.unknown_seconds * 2 ** min(guesses, 32))
        self._peers.pop(peer_id, None)
        entry = self._peers[peer_id] = Foreign(network, now + seconds)
        _bound(self._peers, self.limit)
        return entry

    def get(self, peer_id: str, now: float) -> Foreign | None:
        entry = self._peers.get(peer_id)
        return entry if entry is not None and entry.until > now else None

    def clear(self, peer_id: str) -> None:
        self._peers.pop(peer_id, None)
        self._guesses.pop(peer_id, None)

    def expire(self, now: float) -> list[str]:
        """Forget the peers whose time is up; returns them."""
        gone = [p for p, entry in self._peers.items() if entry.until <= now]
        for peer_id in gone:
            del self._peers[peer_id]
        return gone


def _bound(table: dict[str, T], limit: int) -> None:
    while len(table) > limit:
        del table[next(iter(table))]
