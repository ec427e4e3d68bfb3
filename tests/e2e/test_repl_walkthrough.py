"""The README walkthrough, typed into three real terminals (pseudo-ttys)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.e2e.helpers import node_env

pytestmark = pytest.mark.e2e

PROMPT = "p2psync> "


def spawn(root: Path, profiles: list[str]) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "p2psync", "run", "--host", "127.0.0.1"],
        env=node_env(root),
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    child.expect("using profile (node\\d)")
    profiles.append(child.match.group(1))
    child.expect_exact(PROMPT)
    return child


def command(child: pexpect.spawn, line: str) -> str:
    child.sendline(line)
    child.expect_exact(PROMPT)
    return str(child.before)


def test_three_terminals_create_on_one_see_on_the_others(tmp_path: Path) -> None:
    profiles: list[str] = []
    terminals = [spawn(tmp_path, profiles) for _ in range(3)]
    try:
        assert sorted(profiles) == ["node1", "node2", "node3"]
        created = command(terminals[0], "create r Pancakes|flour,egg,milk|whisk")
        assert "error" not in created.lower()
        for other in terminals[1:]:
            deadline = time.monotonic() + 20
            while "Pancakes" not in command(other, "ls r"):
                assert time.monotonic() < deadline, "recipe did not reach the other terminal"
                time.sleep(0.3)
        peers = command(terminals[2], "ls p")
        assert "connected" in peers
        assert "error" in command(terminals[1], "publish r nosuchid").lower()
    finally:
        for terminal in terminals:
            if terminal.isalive():
                terminal.sendline("quit")
        for terminal in terminals:
            terminal.expect(pexpect.EOF, timeout=20)
            terminal.close()
            assert terminal.exitstatus == 0
