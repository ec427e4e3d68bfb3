"""hypercorn writes an answer's head and body in one socket write (api/hypercorn_fixes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from p2psync.api.http import serve_http
from p2psync.api.hypercorn_fixes import write_answers_in_one


class _FailsAfterItsHead:
    """A raw ASGI app: an answer's head with a length, then an exception."""

    async def __call__(self, scope: object, receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})  # fmt: skip
        raise RuntimeError("the app failed after its head")


class _InPieces:
    """A raw ASGI app: a sized body sent in three pieces."""

    async def __call__(self, scope: object, receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"9")]})  # fmt: skip
        for piece in (b"abc", b"def", b"ghi"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def _app(stream_go: trio.Event) -> Starlette:
    async def json(request: Request) -> Response:
        return Response(b'{"ok": true}', media_type="application/json")

    async def empty(request: Request) -> Response:
        return Response(status_code=204)

    async def stream(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            await stream_go.wait()  # the client has the head before the first event
            yield b"data: one\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [
        Route("/json", json, methods=["GET"]),
        Route("/empty", empty, methods=["GET"]),
        Route("/stream", stream),
        Route("/fails", _FailsAfterItsHead()),
        Route("/pieces", _InPieces()),
    ]
    return Starlette(routes=routes)


async def _read_answer(stream: trio.SocketStream, buffer: bytearray, *, head_only: bool) -> bytes:
    """One answer's bytes: its head, and its Content-Length of body unless `head_only`."""
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive_some(65536)
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end]).lower()
    length = 0
    if b"content-length:" in head and not head_only:
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
    while len(buffer) < end + length:
        buffer += await stream.receive_some(65536)
    answer = bytes(buffer[: end + length])
    del buffer[: end + length]
    return answer


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every non-empty socket write of the test, server's and client's, in order."""
    written: list[bytes] = []
    send_all = trio.SocketStream.send_all

    async def counted(self: trio.SocketStream, data: bytes | bytearray | memoryview) -> None:
        if data:
            written.append(bytes(data))
        await send_all(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counted)
    return written


async def test_an_answer_goes_out_in_one_write_and_a_stream_head_at_once(
    writes: list[bytes],
) -> None:
    go = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, _app(go), "127.0.0.1", 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            buffer = bytearray()
            # Two answers on one keep-alive connection: one write each, whole.
            for _ in range(2):
                writes.clear()
                await stream.send_all(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
                answer = await _read_answer(stream, buffer, head_only=False)
                assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"ok": true}')
                server_writes = [w for w in writes if w.startswith(b"HTTP/1.1")]
                assert server_writes == [answer]  # head and body together (two writes before)
            # HEAD: a length but no body; the held head still goes out.
            await stream.send_all(b"HEAD /json HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await _read_answer(stream, buffer, head_only=True)
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 12" in head.lower()
            # No body follows a 204: its head is not held either.
            await stream.send_all(b"GET /empty HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await _read_answer(stream, buffer, head_only=True)).startswith(b"HTTP/1.1 204")
            # An event stream has no length: its head comes before its first event.
            await stream.send_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            stream_head = await _read_answer(stream, buffer, head_only=True)
            assert stream_head.startswith(b"HTTP/1.1 200")
            go.set()
            while b"data: one" not in buffer:
                buffer += await stream.receive_some(65536)
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_failing_app_still_sends_its_head_and_pieces_all_arrive(
    writes: list[bytes],
) -> None:
    assert write_answers_in_one()  # the pinned hypercorn is the one this was written for
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, _app(trio.Event()), "127.0.0.1", 0)
            # A sized body in three pieces: the head goes with the first.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /pieces HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = await _read_answer(stream, bytearray(), head_only=False)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"abcdefghi")
            ours = [w for w in writes if w.startswith(b"HTTP/1.1")]
            assert len(ours) == 1 and ours[0].endswith(b"\r\n\r\nabc")
            await stream.aclose()
            # The app fails after its head: the head still arrives, then the close.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /fails HTTP/1.1\r\nHost: t\r\n\r\n")
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
            assert received.startswith(b"HTTP/1.1 200") and b"content-length: 10" in received
            await stream.aclose()
            nursery.cancel_scope.cancel()
