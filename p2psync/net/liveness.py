"""Is a connected peer still there? The muxer's ping and when a connection last spoke.

``host.py`` asks these two things of a connection; nothing else imports this.

- ``watch(conn)`` wraps the connection's secured (Noise) stream under yamux
  with a reader that notes when bytes last arrived (``quiet_for``). Every
  byte the peer sends counts: pubsub data, control RPCs, window updates,
  pings and their answers.
- ``ping(conn, timeout)`` sends a yamux PING frame (SYN) and waits until the
  connection delivers anything after it. Every yamux (py, go, js, rust)
  answers a PING with an ACK from its read loop: no stream is opened, no
  protocol negotiated, no task started on either side. It replaced
  ``/ipfs/ping/1.0.0``, a fresh stream with two multistream negotiations
  per ping, which cost ~94 % of an idle node's CPU (docs/PERFORMANCE.md,
  "Scale"). A ping also refreshes the *peer's* ``quiet_for``, so of two
  peers that ping only when the other was quiet, usually one pings.

- ``keep_alive(conn)`` hands the silent-peer check to the kernel: TCP
  keep-alive probes on an idle connection and a user timeout on unacked
  data end a connection to a host that vanished (cable, Wi-Fi, power)
  after about ``USER_TIMEOUT_MS``, with no wake-up of ours. The
  muxer ping then only has to catch a peer whose kernel answers but whose
  process hangs, so it runs far less often (node/network.py).

A connection whose muxer is not yamux (none today) is never watched, and
``ping`` falls back to ``/ipfs/ping/1.0.0`` for it (``stream_ping``).
"""

from __future__ import annotations

import logging
import secrets
import socket
import struct

import trio
from libp2p.abc import IHost, INetConn
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import PING_LENGTH
from libp2p.io.utils import read_exactly
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux.yamux import FLAG_SYN, TYPE_PING, YAMUX_HEADER_FORMAT, Yamux

from p2psync.net.libp2p_fixes import find_socket_stream
from p2psync.net.read_watch import ReadWatch

logger = logging.getLogger(__name__)

_NONCE_MAX = 1 << 32

# Keep-alive probes after 4 s of silence, every 2 s; with a user timeout set,
# Linux ends the connection once nothing was heard for USER_TIMEOUT_MS (probes
# unanswered, or data unacked, or a zero window held that long), so a vanished
# host goes in about 10 s. The price: a peer whose process does not read its
# socket for 10 s while we send to it is cut too (its event loop would have
# been stuck that long; the ping path below forgives a merely busy peer).
KEEPALIVE_IDLE = 4
KEEPALIVE_INTERVAL = 2
KEEPALIVE_PROBES = 3
USER_TIMEOUT_MS = 10_000


def watch(conn: INetConn) -> None:
    """Start noting when ``conn`` delivers bytes (idempotent; yamux only)."""
    muxed = conn.muxed_conn
    if isinstance(muxed, Yamux) and not isinstance(muxed.secured_conn, ReadWatch):
        # Yamux's read loop looks the attribute up for every frame.
        muxed.secured_conn = ReadWatch(muxed.secured_conn)  # type: ignore[assignment]


def keep_alive(conn: INetConn) -> bool:
    """Turn on the kernel's dead-peer detection for ``conn``'s TCP socket.

    False when ``conn`` has no TCP socket we can reach (a relayed circuit is
    checked through the relay's own connection)."""
    stream = find_socket_stream(conn.muxed_conn)
    if stream is None:
        return False
    sock = stream.socket
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    except (OSError, AttributeError) as exc:  # closed already, or not Linux
        logger.debug("no kernel keep-alive on %s: %s", conn.muxed_conn.peer_id, exc)
        return False
    return True


def _watcher(conn: INetConn) -> ReadWatch | None:
    secured = getattr(conn.muxed_conn, "secured_conn", None)
    return secured if isinstance(secured, ReadWatch) else None


def quiet_for(conn: INetConn) -> float | None:
    """Seconds since ``conn`` last delivered bytes; None if it is not watched."""
    watcher = _watcher(conn)
    return None if watcher is None else trio.current_time() - watcher.heard


async def ping(host: IHost, peer: ID, conn: INetConn, timeout: float) -> float | None:
    """Seconds until ``conn`` delivered bytes after a yamux PING, or None if
    nothing came within ``timeout`` (or the connection is gone)."""
    watcher = _watcher(conn)
    muxed = conn.muxed_conn
    if watcher is None or not isinstance(muxed, Yamux):
        return await stream_ping(host, peer, timeout)
    arrived = watcher.next_bytes()
    start = trio.current_time()
    with trio.move_on_after(timeout):
        try:
            # The ACK updates yamux's own RTT estimate from this send time.
            muxed._ping_sent_time = start
            header = struct.pack(
                YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_SYN, 0, secrets.randbelow(_NONCE_MAX)
            )
            await muxed._write_frame(header)
        except Exception as exc:  # closed or broken under us
            logger.debug("ping %s: cannot send: %s", peer, exc)
            return None
        await arrived.wait()
        return trio.current_time() - start
    return None


async def stream_ping(host: IHost, peer: ID, timeout: float) -> float | None:
    """``/ipfs/ping/1.0.0`` on a fresh stream: round-trip seconds, or None."""
    with trio.move_on_after(timeout):
        try:
            stream = await host.new_stream(peer, [PING_PROTOCOL])
        except Exception as exc:
            logger.debug("ping %s: cannot open stream: %s", peer, exc)
            return None
        closed = False
        try:
            payload = secrets.token_bytes(PING_LENGTH)
            start = trio.current_time()
            await stream.write(payload)
            echo = await read_exactly(stream, PING_LENGTH)
            rtt = trio.current_time() - start
            if echo != payload:
                logger.debug("ping %s: wrong echo", peer)
                return None
            await stream.close()
            closed = True
            return rtt
        except Exception as exc:
            logger.debug("ping %s failed: %s", peer, exc)
            return None
        finally:
            if not closed:
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    try:
                        await stream.reset()
                    except Exception:
                        logger.debug("stream reset failed", exc_info=True)
    return None
