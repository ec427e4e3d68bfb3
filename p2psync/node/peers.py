"""The peer table: what this node knows of every peer, for `ls p` and the API.

Plain bookkeeping with no I/O; the network service updates it from discovery,
connection events and finished sync rounds.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from p2psync.node.service import PeerView

SOURCE_PRIORITY = {"static": 0, "local": 1, "mdns": 2, "inbound": 3}
STRIKE_WINDOW = 10.0  # seconds
STRIKES_TO_BAN = 20  # offences within the window that get a peer cut off
BAN_SECONDS = 120.0


@dataclass
class PeerRecord:
    peer_id: str
    source: str
    addrs: list[str] = field(default_factory=list)
    state: str = "known"  # known | connecting | connected | backing_off | failed
    connected: bool = False
    syncs_ok: int = 0
    syncs_failed: int = 0
    total_sync_seconds: float = 0.0
    last_sync: str | None = None
    failures: int = 0  # consecutive dial failures, for backoff
    strikes: list[float] = field(default_factory=list)  # times of recent offences
    banned_until: float = 0.0  # monotonic time; refused until then

    def view(self) -> PeerView:
        return PeerView(
            peer_id=self.peer_id,
            addrs=list(self.addrs),
            connected=self.connected,
            source=self.source,
            state=self.state,
            syncs_ok=self.syncs_ok,
            syncs_failed=self.syncs_failed,
            last_sync=self.last_sync,
            avg_sync_ms=(
                round(1000 * self.total_sync_seconds / self.syncs_ok, 3) if self.syncs_ok else None
            ),
        )


class PeerTable:
    def __init__(self) -> None:
        self._peers: dict[str, PeerRecord] = {}

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def learn(self, peer_id: str, addrs: list[str], source: str) -> PeerRecord:
        """Record addresses for a peer; the most specific source wins."""
        record = self._peers.get(peer_id)
        if record is None:
            record = self._peers[peer_id] = PeerRecord(peer_id, source)
        elif SOURCE_PRIORITY.get(source, 9) < SOURCE_PRIORITY.get(record.source, 9):
            record.source = source
        for addr in addrs:
            if addr not in record.addrs:
                record.addrs.append(addr)
        del record.addrs[:-8]  # keep the newest few
        return record

    def set_state(self, peer_id: str, state: str) -> None:
        record = self._peers.get(peer_id)
        if record is not None:
            record.state = state
            record.connected = state == "connected"

    def round_finished(self, peer_id: str, ok: bool, seconds: float) -> None:
        record = self._peers.get(peer_id)
        if record is None:
            return
        if ok:
            record.syncs_ok += 1
            record.total_sync_seconds += seconds
            record.last_sync = datetime.datetime.now(datetime.UTC).isoformat(
                timespec="milliseconds"
            )
        else:
            record.syncs_failed += 1

    def offence(self, peer_id: str, now: float) -> bool:
        """Score a known peer down; True when this offence gets it banned (from now on)."""
        record = self._peers.get(peer_id)
        if record is None:
            return False
        record.strikes = [t for t in record.strikes if now - t < STRIKE_WINDOW]
        record.strikes.append(now)
        if len(record.strikes) < STRIKES_TO_BAN or record.banned_until > now:
            return False
        record.banned_until = now + BAN_SECONDS
        record.strikes.clear()
        return True

    def banned(self, peer_id: str, now: float) -> bool:
        record = self._peers.get(peer_id)
        return record is not None and record.banned_until > now

    def connected_ids(self) -> list[str]:
        return [p.peer_id for p in self._peers.values() if p.connected]

    def views(self) -> list[PeerView]:
        return [record.view() for record in sorted(self._peers.values(), key=lambda r: r.peer_id)]
