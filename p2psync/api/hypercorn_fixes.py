"""What p2psync changes in hypercorn 0.18, with its reason.

hypercorn's HTTP/1.1 protocol writes each h11 event to the socket as it comes:
an answer's head, then its body, two writes. On this machine class a socket
write that wakes the reader costs about 0.2-0.3 ms of CPU in the kernel (a
2-vCPU VM: the wake-up crosses CPUs), and a trivial API request (a 404 of
GET /api/v0/recipes/ID) spent 27 % of its CPU in those two writes (py-spy,
1.2-1.9 ms a request). The client is woken twice as well.

`OneWriteH11Protocol` holds the head of an answer whose body follows at once
(a Content-Length over 0: Starlette's `Response`, files) and writes it with
the first piece of the body. Answers without a length (the dashboard's event
stream, chunked) go out as before, head first, so a stream's head is never
held back waiting for its first event. An app that fails after its head
still has the head written, before the connection closes, as hypercorn
would have; a connection that is already going away (the client left, or
sent garbage) drops it with the rest.

It subclasses hypercorn 0.18's protocol and overrides two of its private
methods, so `write_answers_in_one` installs it only on 0.18 (the version
constraints.txt pins); on any other hypercorn answers go out as hypercorn
writes them.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import h11
import hypercorn.protocol
from hypercorn.events import RawData
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h11 import H11Protocol

# Read once: serve_http installs the protocol each time it starts a server.
_WRITTEN_FOR_THIS_HYPERCORN = version("hypercorn").startswith("0.18.")


def _body_follows(event: h11.Response) -> bool:
    if event.status_code in (204, 304):
        return False
    for name, value in event.headers:
        if name == b"content-length":  # h11 lower-cases header names
            return value.strip() not in (b"", b"0")
    return False


class OneWriteH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, writing an answer's head with its body."""

    _held = b""  # the encoded head of an answer whose body comes next

    async def _send_h11_event(self, event: Any) -> None:
        if isinstance(event, h11.Response) and _body_follows(event):
            try:
                self._held = self.connection.send(event) or b""
            except h11.LocalProtocolError:
                if self.connection.their_state != h11.ERROR:
                    raise
            return
        held, self._held = self._held, b""
        if not held:
            await super()._send_h11_event(event)
            return
        try:
            data = self.connection.send(event) or b""
        except h11.LocalProtocolError:
            await self.send(RawData(data=held))
            if self.connection.their_state != h11.ERROR:
                raise
        else:
            await self.send(RawData(data=held + data))

    async def stream_send(self, event: Any) -> None:
        if isinstance(event, StreamClosed) and self._held:
            held, self._held = self._held, b""
            await self.send(RawData(data=held))
        await super().stream_send(event)


def write_answers_in_one() -> bool:
    """Make hypercorn 0.18 build `OneWriteH11Protocol` for HTTP/1.1 connections
    (idempotent); False, and nothing changed, on another hypercorn."""
    if not _WRITTEN_FOR_THIS_HYPERCORN:
        return False
    setattr(hypercorn.protocol, "H11Protocol", OneWriteH11Protocol)  # noqa: B010 (not re-exported)
    return True
