"""Talking to p2psync nodes that run inside a lab's host namespaces.

The test process lives in the root namespace and cannot reach a node's
loopback API, so each query runs a tiny stdlib client inside the host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.netns.lab import Lab

API_PORT = 18180
_QUERY = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


def api(lab: Lab, host: int, path: str) -> Any:
    """GET a node's API path from inside its host namespace."""
    result = lab.run(host, [sys.executable, "-c", _QUERY, f"http://127.0.0.1:{API_PORT}{path}"])
    return json.loads(result.stdout)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, logs: Path) -> float:
    """Poll until condition(); return the seconds it took, or fail with the node logs."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if condition():
                return time.monotonic() - start
        except (RuntimeError, subprocess.CalledProcessError, json.JSONDecodeError):
            pass  # the API is not up yet, or answered slowly
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")
