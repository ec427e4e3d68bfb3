"""A userspace TCP proxy that holds every chunk for a fixed delay, both ways.

The kernel here has no ``sch_netem`` (DESIGN.md, "Verified on these
machines"), so the fault tests add latency by putting this proxy in front of a
node: peers dial the proxy, the proxy dials the node. Each chunk read is
released ``--delay-ms`` after it arrived, in order; chunks are pipelined (the
delay does not accumulate), like a long wire. Half-closes are forwarded once
everything read before them has been delivered.

Run it inside a lab namespace::

    python tests/netns/delay_proxy.py --listen 10.77.0.3:4100 \
        --target 127.0.0.1:4001 --delay-ms 100

It prints ``ready`` on stdout once listening, and one line per connection
(``open N`` / ``close N up=BYTES down=BYTES``) on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from dataclasses import dataclass

import trio

CHUNK = 64 * 1024
QUEUE = 4096  # chunks in flight per direction before the reader waits


@dataclass
class Totals:
    up: int = 0  # client -> target bytes
    down: int = 0  # target -> client bytes


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _pump(
    src: trio.SocketStream, dst: trio.SocketStream, delay: float, totals: Totals, up: bool
) -> None:
    """Copy src to dst, each chunk released `delay` seconds after it was read."""
    send, receive = trio.open_memory_channel[tuple[float, bytes]](QUEUE)

    async def reader() -> None:
        async with send:
            while True:
                try:
                    data = await src.receive_some(CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                await send.send((trio.current_time() + delay, data))
                if not data:
                    return

    async def writer() -> None:
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                if not data:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await dst.send_eof()
                    return
                await dst.send_all(data)
                if up:
                    totals.up += len(data)
                else:
                    totals.down += len(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(writer)


async def _serve_one(
    client: trio.SocketStream, target: tuple[str, int], delay: float, number: int
) -> None:
    totals = Totals()
    print(f"open {number}", file=sys.stderr, flush=True)
    try:
        upstream = await trio.open_tcp_stream(*target)
    except OSError as exc:
        print(f"close {number} connect failed: {exc}", file=sys.stderr, flush=True)
        await client.aclose()
        return
    try:
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream, delay, totals, True)
            nursery.start_soon(_pump, upstream, client, delay, totals, False)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # one side reset: drop the whole connection, like a broken wire
    finally:
        print(f"close {number} up={totals.up} down={totals.down}", file=sys.stderr, flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="per direction")
    options = parser.parse_args()
    host, port = _hostport(options.listen)
    target = _hostport(options.target)
    delay = options.delay_ms / 1000.0
    numbers = itertools.count(1)
    listeners = await trio.open_tcp_listeners(port, host=host)
    print("ready", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_one(stream, target, delay, next(numbers))

    await trio.serve_listeners(handler, listeners)


if __name__ == "__main__":
    trio.run(main)
