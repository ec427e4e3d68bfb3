"""A session's messages, their BATCH signatures checked in a worker thread first.

`core/batch_signatures.py` says what is checked and why it is safe. Here is
the pipeline: one task reads the session's topic, has each BATCH big enough
checked in a worker thread, and hands the message on with the hashes that
verified. The channel between holds one message, so while the event loop
applies one BATCH (its engine work and commit hold the GIL) the worker
checks the next (PyNaCl does not): a cold join gets the second core for
its signatures. Messages stay in their order.

Checked ahead is only a BATCH of a round of ours under way with that peer
(`expects_batches`: no one can make us check what we did not ask for), and
only while the node's one thread for it is free (`_checker`): a second
session's BATCH meanwhile goes on unchecked, and the engine checks it as
before. So these checks never take more than one core, never hold a
session's messages behind another's, and never take the worker threads
our own commits and WAL checkpoints need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import trio

from p2psync.core.batch_signatures import is_backfill_batch, verified_in_batch
from p2psync.net.gossip import Received

CheckedMessage: TypeAlias = tuple[bytes, list[bytes]]  # data, hashes whose signature verified

_CHECKER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("batch_checker")


def check_batches_ahead(
    nursery: trio.Nursery,
    received: trio.MemoryReceiveChannel[Received],
    expects_batches: Callable[[], bool],
) -> trio.MemoryReceiveChannel[CheckedMessage]:
    """The messages of `received`, checked ahead by a task started in `nursery`;
    the channel ends when `received` does."""
    send, checked = trio.open_memory_channel[CheckedMessage](1)
    nursery.start_soon(_check_each, received, send, expects_batches)
    return checked


async def _check_each(
    received: trio.MemoryReceiveChannel[Received],
    send: trio.MemorySendChannel[CheckedMessage],
    expects_batches: Callable[[], bool],
) -> None:
    checker = _checker()
    async with send:
        async for message in received:
            data = message.data
            verified: list[bytes] = []
            # No await between the look at the token and the thread taking it.
            if checker.available_tokens and is_backfill_batch(data) and expects_batches():
                verified = await trio.to_thread.run_sync(verified_in_batch, data, limiter=checker)
            await send.send((data, verified))


def _checker() -> trio.CapacityLimiter:
    """The node's one thread for these checks (one per trio run, as trio's own)."""
    try:
        return _CHECKER.get()
    except LookupError:
        checker = trio.CapacityLimiter(1)
        _CHECKER.set(checker)
        return checker
