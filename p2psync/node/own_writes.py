"""Our own ops, signed and stored in groups: ops that wait together share one fsync.

Each op a user asks for must be on disk (synchronous=FULL: an fdatasync)
before it is acknowledged. One commit per op would serialise those waits: 25
requests at once took 25 fsyncs in a row. Instead every request queues its op
and waits for `Node.local_writes`; whoever gets the lock takes every op queued
by then, signs them as consecutive entries of our log (one `append_local`,
one Persist) and commits them in one durable transaction. The others find
theirs done when the lock comes to them. Nothing is acknowledged before the
commit returns, and a refused commit refuses every op of its group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from p2psync.core.errors import LocalError
from p2psync.core.ops import Op, encode_op
from p2psync.node.service import UserError

if TYPE_CHECKING:
    from p2psync.node.node import Node


@dataclass(eq=False)
class _Write:
    make: Callable[[int], Op]  # the op, given the seq it gets (create ops name their id by it)
    done: trio.Event = field(default_factory=trio.Event)
    seq: int = -1
    error: UserError | None = None


class OwnWrites:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._pending: list[_Write] = []

    async def write(self, make: Callable[[int], Op]) -> int:
        """Sign, durably store and broadcast one op of ours; return its seq.

        `make` builds the op from its seq. UserError if it was refused.
        """
        write = _Write(make)
        self._pending.append(write)
        node = self._node
        try:
            async with node.local_writes:
                if not write.done.is_set():
                    # Before the seqs are read: a restored node first learns its head.
                    await node.wait_for_own_head()
                    group, self._pending = self._pending, []
                    await self._append(group)
        finally:
            if not write.done.is_set() and write in self._pending:
                self._pending.remove(write)  # cancelled before any group took it
        if write.error is not None:
            raise write.error
        return write.seq

    async def _append(self, group: list[_Write]) -> None:
        first = self._node.engine.next_own_seq()
        ops: list[Op] = []
        kept: list[_Write] = []
        try:
            for write in group:
                op = write.make(first + len(ops))
                try:
                    encode_op(op)  # too large: refused alone, not with its group
                except LocalError as exc:
                    write.error = UserError(str(exc))
                    continue
                ops.append(op)
                kept.append(write)
            if ops:
                await self._node.append_ops(ops)
            for i, write in enumerate(kept):
                write.seq = first + i
        except UserError as exc:
            for write in kept:
                write.error = UserError(str(exc), status=exc.status)
        except BaseException:
            for write in kept:
                write.error = UserError("not saved: internal error", status=500)
            raise
        finally:
            for write in group:
                write.done.set()
