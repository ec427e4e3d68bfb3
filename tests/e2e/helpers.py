"""Start real `p2psync` processes for end-to-end tests (loopback, no mDNS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


def node_env(data_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["P2PSYNC_DATA_ROOT"] = str(data_root)
    env["P2PSYNC_NO_MDNS"] = "1"  # never multicast from the root namespace
    env.pop("P2PSYNC_API_PORT", None)
    return env


def run_cli(
    args: list[str], data_root: Path, *, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2psync", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=node_env(data_root),
        check=False,
    )


class NodeProcess:
    """A `p2psync run` child with its API on an ephemeral port."""

    def __init__(self, data_root: Path, args: list[str], *, stdin_pipe: bool = False) -> None:
        data_root.mkdir(parents=True, exist_ok=True)
        self.stderr_path = data_root / f"stderr-{time.monotonic_ns()}.log"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "p2psync",
                "run",
                *([] if stdin_pipe else ["--no-repl"]),
                "--api-port",
                "0",
                *args,
            ],
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stderr=self._stderr,
            env=node_env(data_root),
            text=True,
        )
        self.api = self._wait_for(r"API on (http://\S+)/api/v0/status", 60)

    def _wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr_path.read_text()
            match = re.search(pattern, text)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.stderr_path.read_text()}")

    def get(self, path: str) -> Any:
        response = httpx.get(self.api + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return httpx.post(self.api + path, json=body, timeout=10)

    def stop(self, sig: int = 15, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._stderr.close()
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def start_node(started: list[NodeProcess], root: Path, *args: str) -> NodeProcess:
    """A loopback node with a short sync interval, remembered for teardown."""
    node = NodeProcess(root, ["--host", "127.0.0.1", "--sync-interval", "2", *args])
    started.append(node)
    return node


def listen_addr(node: NodeProcess) -> str:
    """The node's loopback multiaddr, /p2p/ id included."""
    addrs = node.get("/api/v0/status")["listen_addrs"]
    return str(next(a for a in addrs if a.startswith("/ip4/127.0.0.1/")))


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *nodes: NodeProcess
) -> None:
    """Poll condition(); on timeout fail with the stderr tails of `nodes`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    tails = "".join(f"\n--- {n.stderr_path}\n{n.stderr()[-2000:]}" for n in nodes)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{tails}")
