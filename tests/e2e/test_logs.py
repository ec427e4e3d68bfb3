"""Logs of a real node: one format for every line, libp2p's noise hidden, repeats counted."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from p2psync.core.ids import peer_id_from_seed
from tests.e2e.helpers import NodeProcess, wait_until

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_static_peer_is_logged_once_with_a_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Longer than the first dial backoffs (0.5-1 s, 1-2 s, 2-4 s): those repeats are held.
    monkeypatch.setenv("P2PSYNC_LOG_REPEAT_SECONDS", "8")
    nobody = peer_id_from_seed(b"\x07" * 32)
    addr = f"/ip4/127.0.0.1/tcp/{_closed_port()}/p2p/{nobody}"
    node = NodeProcess(tmp_path, ["--no-mdns", "--host", "127.0.0.1", "--peer", addr])
    try:
        wait_until(lambda: "(repeated " in node.stderr(), 60, "a repeat count", node)
        time.sleep(0.5)
        text = node.stderr()
    finally:
        node.stop()
    lines = [line for line in text.splitlines() if line and not line.startswith("p2psync: ")]
    assert lines and all(LINE.match(line) for line in lines), text  # no bare line, no traceback
    failures = [line for line in lines if f"static peer {nobody} unreachable" in line]
    assert failures[0].split()[1:3] == ["WARNING", "p2psync.node.dialing:"], text
    assert "(repeated" not in failures[0]
    assert any(re.search(r"\(repeated \d+ times?\)$", line) for line in failures), text
    assert not any(line.startswith("Failed to open TCP stream") for line in text.splitlines())
    assert not any("libp2p" in line.split()[2] for line in lines), text  # noise is DEBUG
