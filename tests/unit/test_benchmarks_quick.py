"""The benchmark suite still runs: its fast in-process scenarios, in quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_core_and_in_sync_round_write_their_keys(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    argv = ["--quick", "--only", "core,in_sync_round", "--out", str(out)]
    argv += ["--workdir", str(tmp_path / "work")]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    assert {"nproc", "cpu_model"} <= set(report["machine"])
    assert "timestamp" in report and "git" in report
    core = report["scenarios"]["core"]
    assert core["apply_per_s"] > 0
    assert core["live_apply_us"] > 0 and core["live_validate_us"] > 0  # every live op applied
    in_sync = report["scenarios"]["in_sync_round"]
    for key in ("bytes", "round_trips", "bytes_one_missing", "round_trips_one_missing"):
        assert in_sync[key] > 0, key
    assert in_sync["bytes_one_missing"] > in_sync["bytes"]
    assert "core" in done.stdout and "in_sync_round" in done.stdout  # the table


def test_scale_reads_cpu_and_memory_from_proc() -> None:
    """The scale scenario's /proc readers (its full runs spawn N nodes: too long for tests)."""
    import os

    from benchmarks.common import rss_mb
    from benchmarks.scale import _summary, cpu_seconds, idle_cpu_pct

    pid = os.getpid()
    assert cpu_seconds(pid) > 0
    (share,) = idle_cpu_pct([pid], 0.05)
    assert share >= 0
    assert rss_mb(pid) > 0
    assert _summary([1.0, 3.0]) == {"mean": 2.0, "max": 3.0, "min": 1.0, "sum": 4.0}


def test_scale_burst_posts_every_create_at_once_and_in_turn() -> None:
    """The burst against two stand-in nodes that share one store (every node
    holds every entry at once): all creates sent, counted and timed."""
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from types import SimpleNamespace

    from benchmarks.scale import _burst

    created: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                created.append(json.loads(body)["name"])
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    nodes = [
        SimpleNamespace(
            api=f"http://127.0.0.1:{server.server_address[1]}",
            entries=lambda: len(created),
            proc=SimpleNamespace(pid=os.getpid()),
        )
        for server in servers
    ]
    try:
        for at_once in (True, False):
            before = len(created)
            figures = _burst(nodes, 5, 10, at_once=at_once)  # type: ignore[arg-type]
            assert len(created) == before + 10
            assert figures["s"] is not None and figures["failed_posts"] == 0
            assert figures["min_held"] == 10
            assert figures["posts_answered_s"] is not None
            assert figures["node_cpu_s"] >= 0
        assert len(set(created)) == 20  # every create its own recipe
    finally:
        for server in servers:
            server.shutdown()


def test_the_load_generator_reads_split_answers_and_counts_failures() -> None:
    """benchmarks/load.py against a server that answers in pieces and keeps
    each connection open, as hypercorn does: an answer is complete at its
    Content-Length (not when the connection closes), a 201 is ok, any other
    status, a connection closed without an answer or no answer in time is
    not, and the requests go out in turns over the targets."""
    import socket
    import threading
    import time

    from benchmarks.load import post_all_at_once, post_request

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    last_piece: list[float] = []
    arrived: list[bytes] = []
    release = threading.Event()

    def answer(conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        arrived.append(request.split(b" ")[1])
        if b"/close" in request:
            conn.close()  # no answer at all
            return
        if b"/never" in request:
            release.wait(10)
            conn.close()
            return
        status = b"201 Created" if b"/ok" in request else b"500 Oops"
        body = b'{"id": "x"}' * 100
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Le")
        time.sleep(0.05)
        conn.sendall(b"ngth: %d\r\n\r\n" % len(body) + body[:7])
        time.sleep(0.05)
        last_piece.append(time.monotonic())
        conn.sendall(body[7:])
        release.wait(10)  # kept open, as keep-alive does
        conn.close()

    def serve() -> None:
        for _ in range(6):
            conn, _ = listener.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    api = f"http://127.0.0.1:{port}"
    paths = [("/ok-a", "/fail-a", "/never-a"), ("/ok-b", "/close-b", "/ok-c")]
    requests = [[post_request(api, path, b"{}") for path in group] for group in paths]
    answers: list[tuple[int, bool, float]] = []
    ready, go, sent = threading.Event(), threading.Event(), threading.Event()
    go.set()
    started = time.monotonic()
    try:
        post_all_at_once(
            [api, api],
            requests,
            go,
            ready.set,
            sent.set,
            lambda i, ok: answers.append((i, ok, time.monotonic())),
            timeout=2,
        )
    finally:
        release.set()
        listener.close()
    took = time.monotonic() - started
    assert ready.is_set() and sent.is_set()
    assert sorted((i, ok) for i, ok, _ in answers) == [
        (0, False),  # 500
        (0, False),  # never answered: counted at the timeout
        (0, True),
        (1, False),  # closed without an answer
        (1, True),
        (1, True),
    ]
    assert 2 <= took < 5  # the timeout, not the servers' 10 s
    oks = sorted(t for _, ok, t in answers if ok)
    assert len(last_piece) == 4 and oks[0] >= min(last_piece)  # whole bodies read
    assert sorted(arrived) == sorted(p.encode() for group in paths for p in group)


def test_the_load_generator_sends_in_turns_over_the_targets() -> None:
    from benchmarks.load import _Exchange, _in_turns

    exchanges = [
        _Exchange(target, b"%d-%d" % (target, i), None)  # type: ignore[arg-type]
        for target, count in ((0, 3), (1, 1), (2, 2))
        for i in range(count)
    ]
    order = [e.request for e in _in_turns(exchanges)]
    assert order == [b"0-0", b"1-0", b"2-0", b"0-1", b"2-1", b"0-2"]


def test_a_burst_whose_nodes_cannot_be_reached_fails_without_hanging() -> None:
    import os
    import socket
    import time
    from types import SimpleNamespace

    from benchmarks.scale import _burst

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [
        SimpleNamespace(
            api=f"http://127.0.0.1:{port}",
            entries=lambda: 0,
            proc=SimpleNamespace(pid=os.getpid()),
        )
    ]
    started = time.monotonic()
    figures = _burst(nodes, 3, 2, at_once=True)  # type: ignore[arg-type]
    assert time.monotonic() - started < 10
    assert figures["s"] is None and figures["failed_posts"] == 3
    assert figures["posts_answered_s"] is not None  # all three answered: as failures


def test_the_paced_load_generator_reuses_connections_and_counts_failures() -> None:
    """benchmarks/load.post_paced (the live scenario's client): requests go
    out one every 1/rate s over keep-alive connections, each connection
    carries one request at a time and is reused once answered, and a 500,
    a connection closed without an answer and no answer in time each count
    as one failure; a connection whose answer says `Connection: close` is
    not used again."""
    import socket
    import threading
    import time

    from benchmarks.load import post_paced, post_request

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    arrived: list[tuple[bytes, float]] = []
    release = threading.Event()

    def answer(conn: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(4096)
                if not data:
                    return
                buffer += data
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += conn.recv(4096)
            buffer = rest[length:]
            path = head.split(b" ")[1]
            arrived.append((path, time.monotonic()))
            if path == b"/close":
                conn.close()
                return
            if path == b"/never":
                release.wait(10)
                conn.close()
                return
            status = b"500 Oops" if path == b"/fail" else b"201 Created"
            if path == b"/last":  # as hypercorn ends a connection's 1000th answer
                conn.sendall(
                    b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
                )
                conn.close()
                return
            conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    api = f"http://127.0.0.1:{port}"
    paths = ["/ok"] * 12 + ["/fail", "/close", "/never", "/last"] + ["/ok"] * 5
    requests = [post_request(api, path, b"{}") for path in paths]
    rate = 100.0
    try:
        failed = post_paced(api, requests, rate, connections=2, timeout=0.5)
    finally:
        release.set()
        listener.close()
    assert failed == 3
    assert sorted(p for p, _ in arrived) == sorted(p.encode() for p in paths)
    # Two connections made up front; the three failures close theirs, and a
    # request finding both busy opens another: far fewer than one per request.
    assert 2 <= len(accepted) <= 2 + 4 + 4
    times = sorted(t for _, t in arrived)
    assert times[-1] - times[0] >= (len(paths) - 1) / rate - 0.005  # paced, not all at once
