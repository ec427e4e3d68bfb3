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
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
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


@dataclass
class _Exchange:
    target: int  # which node
    request: bytes
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    length: int | None = None  # of the whole answer, once its head is read
    status: int = 0


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
            parts = urlsplit(api)
            for request in batch:
                sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
                exchanges.append(_Exchange(target, request, sock))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        except (ValueError, IndexError):
            return True, False
        exchange.length = end + 4 + length
    if len(buffer) < exchange.length:
        return False, False
    return True, exchange.status == 201
