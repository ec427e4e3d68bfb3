"""Raw py-libp2p baselines, through the same wrapper the daemon uses (p2psync.net.host).

Stream mode uses the test-only stream helpers (tests/e2e/streams.py): the
daemon speaks gossipsub alone, so the wrapper has no stream API of its own.

Run as separate processes, one per role (the orchestrating functions at the
bottom start them)::

    python -m benchmarks.raw_libp2p recv --mode gossip|stream --count N --size S
    python -m benchmarks.raw_libp2p send --mode gossip|stream --peer ADDR --count N --size S
    python -m benchmarks.raw_libp2p latency --index I [--peer ADDR]... [--expect K]
                                           --rate R --seconds D --size S

Each prints ``ADDR <multiaddr>`` once listening and ``RESULT <json>`` at the end.
Every payload carries, in its first bytes, the sender's wall time (same host, so
``time.time()`` is comparable across processes): for throughput the moment the
sender's ``connect()`` returned, for latency the moment of publishing.

Throughput is measured from that connect to the last byte received, so, like a
cold join, it includes waiting for the gossipsub mesh (one heartbeat at most).
The gossip sender publishes through ``Libp2pHost.publish``, paced by its own
backpressure (it waits for room in the peer's 32-slot queue); the receiver only
counts bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from typing import Any

import trio

TOPIC = "p2psync-bench/raw"
PROTOCOL = "/p2psync-bench/stream/1.0.0"
_HEAD = struct.Struct(">dIB")  # wall time, seq, kind
DATA, END = 0, 1


def _payload(stamp: float, seq: int, size: int, kind: int = DATA) -> bytes:
    head = _HEAD.pack(stamp, seq, kind)
    return head + bytes(max(0, size - len(head)))


def _emit(tag: str, value: Any) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    print(f"{tag} {text}", flush=True)


def _loopback(addrs: list[str]) -> str:
    return next(a for a in addrs if a.startswith("/ip4/127.0.0.1/"))


# ---------------------------------------------------------------- roles


async def recv(args: argparse.Namespace) -> None:
    from p2psync.net.host import open_libp2p_host
    from tests.e2e.streams import set_stream_handler

    total = args.count * args.size
    state: dict[str, Any] = {"bytes": 0, "messages": 0, "first": None, "last": None, "t0": None}
    done = trio.Event()

    def account(data: bytes, now: float) -> None:
        if state["first"] is None:
            state["first"] = now
            state["t0"] = _HEAD.unpack_from(data)[0]
        state["bytes"] += len(data)
        state["last"] = now

    async with open_libp2p_host(os.urandom(32), "127.0.0.1", 0) as host:
        if args.mode == "gossip":
            channel = await host.subscribe(TOPIC, buffer=4096)
        else:

            async def handler(stream: Any) -> None:
                while state["bytes"] < total:
                    chunk = await stream.read(1 << 20)
                    if not chunk:
                        break
                    account(chunk, time.time())
                    state["messages"] += 1
                done.set()

            set_stream_handler(host, PROTOCOL, handler)
        _emit("ADDR", _loopback(host.listen_addrs()))
        with trio.move_on_after(args.timeout):
            if args.mode == "gossip":
                async for received in channel:
                    account(received.data, time.time())
                    state["messages"] += 1
                    if state["messages"] >= args.count:
                        break
            else:
                await done.wait()
        elapsed = (state["last"] - state["t0"]) if state["first"] is not None else None
        after_first = (state["last"] - state["first"]) if state["first"] is not None else None
        _emit(
            "RESULT",
            {
                "mode": args.mode,
                "bytes": state["bytes"],
                "messages": state["messages"],
                "complete": state["bytes"] >= total,
                "seconds": elapsed,
                "bytes_per_s": state["bytes"] / elapsed if elapsed else None,
                "seconds_after_first": after_first,
                "drops": host.drop_counts(),
            },
        )


async def send(args: argparse.Namespace) -> None:
    from p2psync.net.host import open_libp2p_host
    from tests.e2e.streams import open_stream

    async with open_libp2p_host(os.urandom(32), "127.0.0.1", 0) as host:
        if args.mode == "gossip":
            await host.subscribe(TOPIC)  # like a pair topic: both sides subscribe
        peer = await host.connect(args.peer, timeout=10)
        t0 = time.time()
        if args.mode == "gossip":
            # As the daemon does before its first round: the peer's subscription
            # must be known, else py-libp2p parks messages in a lossy pending queue.
            await host.wait_for_topic_peer(TOPIC, peer, 10)
            await host.wait_for_mesh_peer(TOPIC, peer, 10)
        refused: dict[str, int] = {}
        with trio.move_on_after(args.timeout):
            if args.mode == "gossip":
                for seq in range(args.count):
                    result = await host.publish(TOPIC, _payload(t0, seq, args.size), timeout=10)
                    if not result:
                        refused[str(result.reason)] = refused.get(str(result.reason), 0) + 1
            else:
                stream = await open_stream(host, peer, PROTOCOL)
                chunk = bytearray(args.size)
                for seq in range(args.count):
                    chunk[: _HEAD.size] = _HEAD.pack(t0, seq, DATA)
                    await stream.write(bytes(chunk))
                await stream.close()
        sent_seconds = time.time() - t0
        # Stay up until the receiver has everything and hangs up (or time runs out).
        with trio.move_on_after(args.timeout):
            async for event in host.peer_events:
                if event.kind == "disconnected" and event.peer_id == peer:
                    break
        _emit("RESULT", {"refused": refused, "send_seconds": sent_seconds})


async def latency(args: argparse.Namespace) -> None:
    from p2psync.net.host import open_libp2p_host

    async with open_libp2p_host(os.urandom(32), "127.0.0.1", 0) as host:
        channel = await host.subscribe(TOPIC, buffer=4096)
        _emit("ADDR", _loopback(host.listen_addrs()))
        for peer in args.peer:
            await host.connect(peer, timeout=10)
        if args.index == 0:
            await _publish_paced(host, args)
            return
        latencies: list[float] = []
        cpu = _CpuWindow()
        with trio.move_on_after(args.timeout):
            async for received in channel:
                now = time.time()
                stamp, _seq, kind = _HEAD.unpack_from(received.data)
                if kind == END:
                    break
                cpu.mark()
                latencies.append((now - stamp) * 1000)
                if len(latencies) >= int(args.rate * args.seconds):
                    cpu.stop()  # right after the last mark; if some were lost, the
                    break  # window ends at the last reading (up to EVERY - 1 marks early)
        _emit("RESULT", {"latencies_ms": [round(x, 3) for x in latencies], "cpu_pct": cpu.pct()})


class _CpuWindow:
    """This process's CPU between the first and the last `mark()`, in % of one core.

    `time.process_time()` is a system call (no vDSO for a process's CPU
    clock): py-spy found a receiver marking every message spending about 10 %
    of its busy samples in it, work the baseline should not do. So it is read
    on the first mark, on every `EVERY`-th, and by `stop()`, which a caller
    may call right after its last mark (that reading gets the mark's wall
    time); without it the window ends at the last reading.
    """

    EVERY = 64

    def __init__(self) -> None:
        self._first: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None
        self._marks = 0
        self._last_mark = 0.0

    def mark(self) -> None:
        self._last_mark = time.monotonic()
        if self._first is None or self._marks % self.EVERY == 0:
            self._read()
        self._marks += 1

    def _read(self) -> None:
        now = (self._last_mark, time.process_time())
        if self._first is None:
            self._first = now
        self._last = now

    def stop(self) -> None:
        if self._first is not None:
            self._read()

    def pct(self) -> float | None:
        if self._first is None or self._last is None or self._last[0] <= self._first[0]:
            return None
        wall = self._last[0] - self._first[0]
        return round(100 * (self._last[1] - self._first[1]) / wall, 1)


async def _publish_paced(host: Any, args: argparse.Namespace) -> None:
    with trio.move_on_after(args.timeout):
        while len(host.mesh_peers(TOPIC)) < args.expect:
            await trio.sleep(0.05)
    await trio.sleep(1.5)  # a heartbeat or so for the receivers' meshes too
    count = int(args.rate * args.seconds)
    start = trio.current_time()
    sent = refused = 0
    cpu = _CpuWindow()
    cpu.mark()
    for seq in range(count):
        await trio.sleep_until(start + seq / args.rate)
        result = await host.publish(TOPIC, _payload(time.time(), seq, args.size), timeout=1)
        sent += bool(result)
        refused += not result
    await trio.sleep_until(start + count / args.rate)
    cpu.mark()
    cpu.stop()
    await trio.sleep(1.0)
    for _ in range(5):  # END is best effort too; receivers also stop on their timeout
        await host.publish(TOPIC, _payload(time.time(), count, args.size, END), timeout=1)
        await trio.sleep(0.1)
    await trio.sleep(1.0)
    mesh = len(host.mesh_peers(TOPIC))
    _emit("RESULT", {"published": sent, "refused": refused, "mesh": mesh, "cpu_pct": cpu.pct()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raw_libp2p")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("recv", "send"):
        p = sub.add_parser(role)
        p.add_argument("--mode", choices=("gossip", "stream"), required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--size", type=int, required=True)
        p.add_argument("--timeout", type=float, default=120)
        if role == "send":
            p.add_argument("--peer", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--size", type=int, default=270)
    p.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    role = {"recv": recv, "send": send, "latency": latency}[args.role]
    trio.run(role, args)
    return 0


# ---------------------------------------------------------------- orchestration


class _Child:
    def __init__(self, argv: list[str]) -> None:
        import tempfile

        from benchmarks.common import REPO

        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the child)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.raw_libp2p", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=REPO,
        )

    def line(self, tag: str, timeout: float) -> str:
        """The next stdout line starting with `tag` (blocking, bounded by a reader thread)."""
        import threading

        found: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(tag + " "):
                    found.append(line[len(tag) + 1 :].strip())
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.kill()
            err = self.stderr()
            raise RuntimeError(f"raw libp2p child gave no {tag} in {timeout:g} s: {err[-2000:]}")
        return found[0]

    def result(self, timeout: float) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.line("RESULT", timeout))
        return value

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()


def run_throughput(mode: str, count: int, size: int, timeout: float = 120) -> dict[str, Any]:
    """One receiver and one sender process; what the receiver measured."""
    common = ["--mode", mode, "--count", str(count), "--size", str(size)]
    receiver = _Child(["recv", *common, "--timeout", str(timeout)])
    sender: _Child | None = None
    try:
        addr = receiver.line("ADDR", 30)
        sender = _Child(["send", *common, "--peer", addr, "--timeout", str(timeout)])
        result = receiver.result(timeout + 30)
        sent = sender.result(15)
        result["refused"] = sent.get("refused", {})
        return result
    finally:
        receiver.kill()
        if sender is not None:
            sender.kill()


def run_latency(
    nodes: int, rate: float, seconds: float, size: int, *, topology: str = "mesh"
) -> dict[str, Any]:
    """One publisher and nodes-1 receivers; all latencies in ms, and each
    process's CPU over its window in % of one core (`cpu_pct`, publisher first:
    while it publishes; a receiver: from its first message to its last).

    topology "mesh": every process dials every earlier one; "star": all dial the publisher.
    """
    children: list[_Child] = []
    timeout = seconds + 20
    try:
        addrs: list[str] = []
        for index in range(nodes):
            argv = ["latency", "--index", str(index), "--rate", str(rate)]
            argv += ["--seconds", str(seconds), "--size", str(size), "--timeout", str(timeout)]
            dial = addrs if topology == "mesh" else addrs[:1]
            argv += [x for a in dial for x in ("--peer", a)]
            if index == 0:
                argv += ["--expect", str(nodes - 1)]
            child = _Child(argv)
            children.append(child)
            addrs.append(child.line("ADDR", 30))
        latencies: list[float] = []
        received: list[int] = []
        cpu: list[float | None] = []
        for child in children[1:]:
            result = child.result(timeout + 10)
            got = result["latencies_ms"]
            received.append(len(got))
            latencies.extend(got)
            cpu.append(result.get("cpu_pct"))
        published = children[0].result(15)
        cpu.insert(0, published.pop("cpu_pct", None))
        return {"latencies_ms": latencies, "received": received, "cpu_pct": cpu, **published}
    finally:
        for child in children:
            child.kill()


if __name__ == "__main__":
    sys.exit(main())
