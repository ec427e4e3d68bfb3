"""A lean HTTP load generator: many POSTs in flight at once, at little CPU.

httpx spends about 2.4 ms of CPU per request on this machine class, on the
same two cores as the nodes under test: at N = 4 the harness's client used
0.23-0.30 s of CPU to send a burst's 100 creates, as much as the four nodes
handling them, and it was the burst's bottleneck. A load generator should
cost as little as it can, so this one writes requests encoded before the
clock starts over connections opened before it, and reads each answer with a
minimal HTTP/1.1 parser (status line, Content-Length, body). One connection
per request: HTTP/1.1 answers a connection's requests one after another, so
requests meant to be in flight together each need their own.

`post_all_at_once` sends a burst; `post_paced` sends requests at a steady
rate over a few keep-alive connections (the live scenario's creator).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def post_request(api: str, path: str, body: bytes) -> bytes:
    """One `POST path` with a JSON `body` to the API at `api` (http://host:port)."""
    netloc = urlsplit(api).netloc
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _connect(api: str) -> socket.socket:
    """A TCP connection to the API at `api`, Nagle off (requests are small)."""
    parts = urlsplit(api)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(eq=False)  # one per connection: compared and hashed by identity
class _Exchange:
    target: int  # which node
    request: bytes
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    length: int | None = None  # of the whole answer, once its head is read
    status: int = 0
    closing: bool = False  # the answer said `Connection: close`


def post_all_at_once(
    apis: list[str],
    requests: list[list[bytes]],
    go: threading.Event,
    on_ready: Callable[[], None],
    on_sent: Callable[[], None],
    on_answer: Callable[[int, bool], None],
    timeout: float = 60,
) -> None:
    """Open a connection per request in `requests[i]` (to `apis[i]`), call
    `on_ready`, wait for `go` (at most `timeout`), write every request, in
    turns over the targets (each target's first, then each one's second...),
    call `on_sent`, then read the answers, calling `on_answer(i, ok)` for each
    (ok: status 201), failures and answers missing after `timeout` included."""
    selector = selectors.DefaultSelector()
    exchanges: list[_Exchange] = []
    try:
        for target, (api, batch) in enumerate(zip(apis, requests, strict=True)):
            for request in batch:
                exchanges.append(_Exchange(target, request, _connect(api)))
        on_ready()
        if not go.wait(timeout):
            raise TimeoutError("the burst was never started")
        for exchange in _in_turns(exchanges):
            try:
                exchange.sock.sendall(exchange.request)
            except OSError:
                on_answer(exchange.target, False)
                continue
            exchange.sock.setblocking(False)
            selector.register(exchange.sock, selectors.EVENT_READ, exchange)
        on_sent()
        deadline = time.monotonic() + timeout
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                exchange = key.data
                done, ok = _read(exchange)
                if done:
                    selector.unregister(exchange.sock)
                    on_answer(exchange.target, ok)
        for key in list(selector.get_map().values()):
            on_answer(key.data.target, False)  # no answer in time
    finally:
        selector.close()
        for exchange in exchanges:
            exchange.sock.close()


def _in_turns(exchanges: list[_Exchange]) -> list[_Exchange]:
    """Each target's first request, then each one's second, and so on."""
    rank: dict[int, int] = {}
    order = []
    for exchange in exchanges:
        rank[exchange.target] = rank.get(exchange.target, -1) + 1
        order.append((rank[exchange.target], exchange.target, exchange))
    return [exchange for *_, exchange in sorted(order, key=lambda o: (o[0], o[1]))]


def _read(exchange: _Exchange) -> tuple[bool, bool]:
    """Read what the socket holds: (answer complete or connection over, ok).

    An answer is complete at Content-Length bytes past its head (the API
    always sends one, and keeps the connection open after it); one without is
    complete at its head. A head that does not parse is a failed answer.
    """
    try:
        data = exchange.sock.recv(65536)
    except BlockingIOError:
        return False, False
    except OSError:
        return True, False
    if not data:
        return True, False
    buffer = exchange.buffer
    buffer += data
    if exchange.length is None:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False, False
        try:
            head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            exchange.status = int(head[0].split(" ", 2)[1])
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                elif name.strip().lower() == "connection":
                    tokens = {token.strip().lower() for token in value.split(",")}
                    exchange.closing = "close" in tokens
        except (ValueError, IndexError):
            return True, False
        exchange.length = end + 4 + length
    if len(buffer) < exchange.length:
        return False, False
    return True, exchange.status == 201


def post_paced(
    api: str, requests: list[bytes], rate: float, *, connections: int = 4, timeout: float = 10
) -> int:
    """Write `requests[i]` to `api` at i/rate seconds from the start, each on a
    keep-alive connection with no request in flight (`connections` opened
    before the start; another is opened if all are busy), and read the
    answers meanwhile. Idle connections are taken oldest first, so all of
    them carry requests. Returns how many failed: not 201, no connection,
    the connection lost, or no answer within `timeout` of being sent (after
    the last request is sent, at most `timeout` is waited for the rest)."""

    def connect() -> _Exchange:
        return _Exchange(0, b"", _connect(api))

    selector = selectors.DefaultSelector()
    idle: deque[_Exchange] = deque()
    in_flight: dict[_Exchange, float] = {}  # exchange -> when its request went out
    failed = sent = 0
    try:
        for _ in range(connections):
            idle.append(connect())
        start = time.monotonic()
        while sent < len(requests) or in_flight:
            now = time.monotonic()
            if sent < len(requests) and now >= start + sent / rate:
                sent += 1
                try:
                    exchange = idle.popleft() if idle else connect()
                except OSError:
                    failed += 1
                    continue
                exchange.buffer, exchange.length, exchange.status = bytearray(), None, 0
                exchange.closing = False
                try:
                    exchange.sock.sendall(requests[sent - 1])
                except OSError:
                    failed += 1
                    exchange.sock.close()
                    continue
                in_flight[exchange] = now
                selector.register(exchange.sock, selectors.EVENT_READ, exchange)
                continue
            due = start + sent / rate - now if sent < len(requests) else 0.05
            for key, _ in selector.select(timeout=max(0.0, due)):
                exchange = key.data
                done, ok = _read(exchange)
                if not done:
                    continue
                selector.unregister(exchange.sock)
                del in_flight[exchange]
                failed += not ok
                if ok and not exchange.closing:
                    idle.append(exchange)
                else:  # hypercorn closes a connection after 1000 requests
                    exchange.sock.close()
            now = time.monotonic()
            for exchange, at in list(in_flight.items()):
                if now - at > timeout:
                    selector.unregister(exchange.sock)
                    del in_flight[exchange]
                    failed += 1
                    exchange.sock.close()
    finally:
        selector.close()
        for exchange in [*idle, *in_flight]:
            exchange.sock.close()
    return failed
