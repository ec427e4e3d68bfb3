"""Health checks on real libp2p hosts: muxer pings and how long a connection was quiet."""

from __future__ import annotations

import socket
from typing import Any

import trio

from p2psync.net import liveness
from p2psync.net.host import open_libp2p_host
from p2psync.net.libp2p_fixes import find_socket_stream
from p2psync.net.read_watch import ReadWatch
from tests.e2e.test_libp2p_host import LOOPBACK, loopback_addr, next_event, seed


async def _hang(*args: object) -> Any:
    await trio.sleep_forever()


async def test_a_muxer_ping_is_answered_and_counts_as_news_for_the_peer() -> None:
    with trio.fail_after(20):
        async with (
            open_libp2p_host(seed("live-a"), LOOPBACK, 0) as a,
            open_libp2p_host(seed("live-b"), LOOPBACK, 0) as b,
        ):
            assert a.quiet_for(b.peer_id) is None  # not connected
            assert await a.ping(b.peer_id, timeout=1) is None
            await a.connect(loopback_addr(b))
            await next_event(b, "connected", a.peer_id)
            await trio.sleep(0.7)  # past the muxers' own first RTT ping
            rtt = await a.ping(b.peer_id, timeout=5)
            assert rtt is not None and rtt < 5
            a_quiet, b_quiet = a.quiet_for(b.peer_id), b.quiet_for(a.peer_id)
            assert a_quiet is not None and a_quiet < 0.5  # the answer
            assert b_quiet is not None and b_quiet < 0.5  # the ping itself
            # No stream was opened for it: only pubsub's (one each way) exist.
            conn: Any = next(iter(a._conns.values()))
            assert len(next(iter(conn)).muxed_conn.streams) <= 2


async def test_a_peer_that_stops_reading_fails_the_ping() -> None:
    with trio.fail_after(20):
        async with (
            open_libp2p_host(seed("deaf-a"), LOOPBACK, 0) as a,
            open_libp2p_host(seed("deaf-b"), LOOPBACK, 0) as b,
        ):
            await a.connect(loopback_addr(b))
            await next_event(b, "connected", a.peer_id)
            assert await a.ping(b.peer_id, timeout=5) is not None
            await trio.sleep(1)  # the connection's start-up chatter is over
            # b hangs: its muxer neither writes nor reads another frame.
            conns: Any = b._conns[next(iter(b._conns))]
            muxed = next(iter(conns)).muxed_conn
            assert isinstance(muxed.secured_conn, ReadWatch)
            muxed._write_frame = _hang
            muxed.secured_conn.read = _hang
            assert await a.ping(b.peer_id, timeout=0.5) is None
            quiet = a.quiet_for(b.peer_id)
            assert quiet is not None and quiet >= 0.5


def assert_kernel_watches(conn: Any) -> None:
    """The TCP socket under a libp2p connection has liveness.keep_alive's options."""
    stream = find_socket_stream(conn.muxed_conn)
    assert stream is not None, "no TCP socket found under the connection"
    sock = stream.socket
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == liveness.KEEPALIVE_IDLE
    timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
    assert timeout == liveness.USER_TIMEOUT_MS


async def test_the_kernel_watches_every_connection_for_a_vanished_peer() -> None:
    with trio.fail_after(20):
        async with (
            open_libp2p_host(seed("ka-a"), LOOPBACK, 0) as a,
            open_libp2p_host(seed("ka-b"), LOOPBACK, 0) as b,
        ):
            await a.connect(loopback_addr(b))
            await next_event(b, "connected", a.peer_id)
            for host in (a, b):  # the dialer's and the listener's side
                assert_kernel_watches(next(iter(next(iter(host._conns.values())))))
