"""yamux DATA frame bodies read without a timer when Noise already holds them.

py-libp2p reads each DATA frame's body inside ``trio.fail_after`` (60 s, read
from the environment per frame), so a peer that announces a frame and never
sends it cannot hold the connection's reader. Entering and leaving that
cancel scope, and the environment lookup, cost 4-6 % of a node's CPU in a
16-node burst (py-spy), for bodies that were nearly always decrypted
already: a Noise message carries up to 65 519 bytes, and a frame's header
and body come in the same one. When the secured connection's buffer holds
the whole body, it is read with no scope (the read cannot wait); otherwise
as py-libp2p does, with the timeout read once.
"""

from __future__ import annotations

from typing import Any

import trio
from libp2p.io.utils import read_exactly
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux import yamux as py_yamux
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2psync.net.read_watch import unwatched


def buffered_bytes(secured_conn: Any) -> int:
    """Decrypted bytes a Noise ``SecureSession`` holds unread (0 for any other
    connection: only one whose reads of held bytes cannot wait may skip the
    timer)."""
    session = unwatched(secured_conn)
    if not isinstance(session, SecureSession):
        return 0
    return session.high_watermark - session.low_watermark


def read_bodies_without_a_timer() -> None:
    """Patch every yamux connection of this process (idempotent, each call
    re-reads the timeout). An operator's ``PY_YAMUX_DATA_READ_TIMEOUT`` is
    read here, as py-libp2p reads it per frame."""
    timeout = py_yamux._yamux_data_read_timeout()

    async def read_data_body(self: Yamux, length: int) -> bytes:
        conn = self.secured_conn
        if buffered_bytes(conn) >= length:
            return await read_exactly(conn, length)
        with trio.fail_after(timeout):
            return await read_exactly(conn, length)

    Yamux._read_data_body = read_data_body  # type: ignore[method-assign]
