"""`--relay`, `P2PSYNC_RELAY`, `p2psync relay` flags, and how relayed peers are shown."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from p2psync.cli.main import main
from p2psync.cli.repl_execute import _show_peers
from p2psync.core.ids import peer_id_from_seed
from p2psync.node.config import NodeConfig
from p2psync.node.profiles import DataDirLock
from p2psync.node.service import PeerView

RELAY = peer_id_from_seed(b"\x09" * 32)
RELAY_ADDR = f"/ip4/203.0.113.10/tcp/4001/p2p/{RELAY}"
OTHER_RELAY = peer_id_from_seed(b"\x08" * 32)
OTHER_ADDR = f"/dns4/relay.example.org/tcp/4001/p2p/{OTHER_RELAY}"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import os

    for name in list(os.environ):
        if name.startswith("P2PSYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("P2PSYNC_DATA_ROOT", str(tmp_path / "root"))
    return tmp_path / "root"


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> list[NodeConfig]:
    seen: list[NodeConfig] = []

    async def run_node(config: NodeConfig, *, lock: DataDirLock) -> int:
        seen.append(config)
        return 0

    module: Any = types.ModuleType("p2psync.app")
    module.run_node = run_node
    monkeypatch.setitem(sys.modules, "p2psync.app", module)
    return seen


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2psync: error: "), lines
    return lines[0]


def test_relay_flags_reach_the_node_config(configs: list[NodeConfig]) -> None:
    argv = ["run", "--no-repl", "--no-mdns", "--relay", RELAY_ADDR, "--relay", OTHER_ADDR,
            "--relay", RELAY_ADDR]  # fmt: skip
    assert main(argv) == 0
    assert configs[0].relays == (RELAY_ADDR, OTHER_ADDR)
    assert configs[0].hole_punch is False


def test_relays_from_the_environment(
    configs: list[NodeConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PSYNC_RELAY", f"{RELAY_ADDR}, {OTHER_ADDR}")
    monkeypatch.setenv("P2PSYNC_HOLE_PUNCH", "1")
    assert main(["run", "--no-repl", "--no-mdns"]) == 0
    assert configs[0].relays == (RELAY_ADDR, OTHER_ADDR)
    assert configs[0].hole_punch is True


@pytest.mark.parametrize(
    ("argv", "part"),
    [
        (["run", "--relay", "/ip4/203.0.113.10/tcp/4001"], "--relay"),
        (["run", "--relay", f"/ip4/203.0.113.10/tcp/99999/p2p/{RELAY}"], "--relay"),
        (["relay", "--port", "70000"], "--port"),
        (["relay", "--allow-peer", "not-a-peer"], "--allow-peer"),
        (["relay", "--network", "x"], "unrecognized"),
    ],
)
def test_bad_relay_input_is_one_line_and_exit_2(
    argv: list[str], part: str, capsys: pytest.CaptureFixture[str], configs: list[NodeConfig]
) -> None:
    assert main(argv) == 2
    assert part in error_line(capsys)
    assert configs == []


def test_relay_allow_file_errors_name_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text(f"{RELAY}  # the relay itself\nnonsense\n")
    assert main(["relay", "--allow-file", str(allow)]) == 2
    assert f"{allow}:2" in error_line(capsys)


def _peer(connected: bool, relayed: bool, source: str = "relay") -> PeerView:
    return PeerView(RELAY, [f"{RELAY_ADDR}/p2p-circuit/p2p/{RELAY}"], connected, source,
                    "connected" if connected else "known", 1, 0, None, None, relayed)  # fmt: skip


def test_ls_p_and_the_api_say_how_a_peer_is_linked() -> None:
    for peer, link in ((_peer(True, True), "relayed"), (_peer(True, False), "direct")):
        out: list[str] = []
        _show_peers([peer], out.append)
        header, row = out[0].splitlines()[0], out[0].splitlines()[-1]
        assert "LINK" in header and "SOURCE" in header
        assert link in row and "relay" in row
        assert peer.to_json()["relayed"] is peer.relayed
    out = []
    _show_peers([_peer(False, False)], out.append)
    assert "relayed" not in out[0] and "direct" not in out[0]
