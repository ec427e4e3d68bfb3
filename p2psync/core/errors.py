"""Typed errors of the core, each saying who is to blame.

Like h11's LocalProtocolError / RemoteProtocolError: a `RemoteError` means
the bytes came from a peer and are wrong (drop them, count them, maybe score
the peer down); a `LocalError` means this node was asked to do something
impossible (tell the user).
"""

from __future__ import annotations

from p2psync.core.reasons import BLAME_OF, Blame, Reason


class CoreError(Exception):
    """Base of every error raised by p2psync.core."""


class RemoteError(CoreError):
    """A peer sent something we must refuse; `reason` is its metric label."""

    def __init__(self, message: str, *, reason: Reason = Reason.MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def blame(self) -> Blame:
        return BLAME_OF[self.reason]


class LocalError(CoreError):
    """This node's own caller asked for something invalid."""


class OwnLogForked(LocalError):
    """Our own origin is proven forked: writing more would only deepen it."""
