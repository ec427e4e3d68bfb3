"""Handing a peer's message to the engine without handing the peer our process.

The engine refuses what it can name (a `Dropped` or `Rejected` action). An
exception escaping it means a bug that a peer's bytes reached (as a JSON list
for an op kind once did); raised in a reader task, it would stop the daemon,
and since peers send the same message again after a restart, stop it again.
So the message is dropped, counted and logged with its traceback instead.
The peer is not blamed: the fault is ours until shown otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from p2psync.core.actions import Action
from p2psync.core.reasons import Drop
from p2psync.node.observer import Observer

log = logging.getLogger(__name__)


def engine_verdict(
    peer: str, handle: Callable[[], list[Action]], observer: Observer
) -> list[Action]:
    """`handle()`, the engine's actions for one message from `peer`; none if it fails."""
    try:
        return handle()
    except Exception:
        log.exception(
            "internal error handling a message from %s; dropped it (please report this"
            " with the traceback)",
            peer,
        )
        observer.dropped(Drop.INTERNAL_ERROR)
        return []
