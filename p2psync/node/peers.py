"""The peer table as `ls p` and /api/v0/peers show it.

The table itself lives in the pure peer policy (`core/peer_policy.py`); this
module only turns its records into the `PeerView`s the front ends render.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from p2psync.core.peer_policy import PeerPolicy, PeerRecord
from p2psync.node.service import PeerView


def iso_of_wall_ms(wall_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


def peer_view(record: PeerRecord, relayed: bool = False) -> PeerView:
    ok = record.syncs_ok
    return PeerView(
        peer_id=record.peer_id,
        addrs=list(record.addrs),
        connected=record.connected,
        source=record.source,
        relayed=relayed and record.connected,
        state=record.state,
        syncs_ok=ok,
        syncs_failed=record.syncs_failed,
        last_sync=None if record.last_sync_ms is None else iso_of_wall_ms(record.last_sync_ms),
        avg_sync_ms=round(1000 * record.total_sync_seconds / ok, 3) if ok else None,
    )


def peer_views(
    policy: PeerPolicy, is_relayed: Callable[[str], bool] = lambda _peer: False
) -> list[PeerView]:
    """`is_relayed(peer)`: connected only through a relay (net/circuit.py)."""
    return [peer_view(record, is_relayed(record.peer_id)) for record in policy.records()]
