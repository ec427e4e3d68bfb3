from __future__ import annotations

import stat
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from p2psync.cli.main import main
from p2psync.core.ids import peer_id_from_seed
from p2psync.node.config import NodeConfig
from p2psync.node.profiles import DataDirLock, lock_data_dir

PEER_A = peer_id_from_seed(b"\x01" * 32)
PEER_B = peer_id_from_seed(b"\x02" * 32)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import os

    for name in list(os.environ):
        if name.startswith("P2PSYNC_"):
            monkeypatch.delenv(name)
    root = tmp_path / "root"
    monkeypatch.setenv("P2PSYNC_DATA_ROOT", str(root))
    return root


class FakeDaemon:
    def __init__(self) -> None:
        self.configs: list[NodeConfig] = []
        self.lock_held_while_running: list[bool] = []

    async def run_node(self, config: NodeConfig, *, lock: DataDirLock) -> int:
        self.configs.append(config)
        self.lock_held_while_running.append(lock.held)
        return 0


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    fake = FakeDaemon()
    module: Any = types.ModuleType("p2psync.app")
    module.run_node = fake.run_node
    monkeypatch.setitem(sys.modules, "p2psync.app", module)
    return fake


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("p2psync: error: ")
    return lines[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """It names the wire protocol: nodes of two protocols do not sync."""
    from p2psync.core.protocol import PROTOCOL_VERSION
    from p2psync.net.topics import VERSION

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("p2psync ") and out.rstrip().endswith(f"(protocol {PROTOCOL_VERSION})")
    assert f"v{PROTOCOL_VERSION}" == VERSION  # topic names follow the protocol


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message_part"),
    [
        (["run", "--port", "70000"], "--port"),
        (["run", "--port", "x"], "not an integer"),
        (["run", "--api-port", "-1"], "0..65535"),
        (["run", "--batch-size", "0"], "batch size"),
        (["run", "--batch-size", "10001"], "batch size"),
        (["run", "--sync-interval", "0"], "positive"),
        (["run", "--sync-interval", "nan"], "positive"),
        (["run", "--network", "bad name"], "network name"),
        (["run", "--network", "x" * 65], "network name"),
        (["run", "--host", "nowhere"], "IP address"),
        (["run", "--api-host", "0.0.0.0"], "--api-token"),
        (["run", "--api-host", "::"], "--api-token"),
        (["run", "--log-level", "loud"], "log level"),
        (["run", "--peer", "/ip4/1.2.3.4/tcp/4001"], "/p2p/"),
        (["run", "--peer", f"/ip4/1.2.3/tcp/4001/p2p/{PEER_A}"], "ip4"),
        (["run", "--peer", f"/ip4/1.2.3.4/tcp/0/p2p/{PEER_A}"], "tcp port"),
        (["run", "--peer", f"/udp/1.2.3.4/tcp/1/p2p/{PEER_A}"], "expected"),
        (["run", "--peer", "/ip4/1.2.3.4/tcp/4001/p2p/QmNotOurs"], "peer id"),
        (["run", "--allow-peer", "nope"], "peer id"),
        (["run", "--profile", "a", "--data-dir", "/tmp/x"], "not allowed"),
        (["run", "--profile", "../escape"], "profile name"),
        (["run", "--api-port", "8080", "--metrics-port", "8080"], "two ports"),
        (["run", "--bogus"], "unrecognized"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    argv: list[str], message_part: str, capsys: pytest.CaptureFixture[str], daemon: FakeDaemon
) -> None:
    assert main(argv) == 2
    assert message_part in one_error_line(capsys)
    assert daemon.configs == []


def test_run_maps_flags_to_config(
    tmp_path: Path, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    allow_file = tmp_path / "allow"
    allow_file.write_text(f"# friends\n{PEER_B}  # bob\n\n")
    peer = f"/dns4/box.local/tcp/4001/p2p/{PEER_A}"
    argv = [
        "run", "--data-dir", str(tmp_path / "d"), "--host", "127.0.0.1", "--port", "4001",
        "--peer", peer, "--peer", f"/ip6/::1/tcp/4002/p2p/{PEER_B}", "--no-mdns",
        "--network", "kitchen", "--api-port", "0", "--api-host", "0.0.0.0",
        "--api-token", "secret", "--metrics-port", "9100", "--batch-size", "10",
        "--sync-interval", "0.5", "--initial-ops", "5", "--op-interval", "2",
        "--ops-per-interval", "3", "--seed", "42", "--allow-peer", PEER_A,
        "--allow-file", str(allow_file), "--no-repl", "--log-level", "debug",
    ]  # fmt: skip
    assert main(argv) == 0
    (config,) = daemon.configs
    assert config == NodeConfig(
        data_dir=tmp_path / "d",
        profile=None,
        data_root=tmp_path / "root",
        host="127.0.0.1",
        port=4001,
        peers=(peer, f"/ip6/::1/tcp/4002/p2p/{PEER_B}"),
        mdns=False,
        network="kitchen",
        api_port=0,
        api_host="0.0.0.0",
        metrics_port=9100,
        batch_size=10,
        sync_interval=0.5,
        initial_ops=5,
        op_interval=2.0,
        ops_per_interval=3,
        seed=42,
        api_token="secret",
        allow_peers=frozenset({PEER_A, PEER_B}),
        repl=False,
        log_level="DEBUG",
    )
    assert daemon.lock_held_while_running == [True]
    # The lock is given back once the daemon returns.
    with lock_data_dir(tmp_path / "d"):
        pass


def test_run_defaults_claim_first_free_profile(
    isolated_environment: Path, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    with lock_data_dir(isolated_environment / "profiles" / "node1"):
        assert main(["run"]) == 0
    (config,) = daemon.configs
    node2 = isolated_environment / "profiles" / "node2"
    assert config.profile == "node2"
    assert config.data_dir == node2
    assert config.mdns and config.repl
    assert config == NodeConfig(data_dir=node2, profile="node2", data_root=isolated_environment)
    assert capsys.readouterr().err == f"p2psync: using profile node2 ({node2})\n"


def test_run_on_busy_profile_fails(
    isolated_environment: Path, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    with lock_data_dir(isolated_environment / "profiles" / "mine"):
        assert main(["run", "--profile", "mine"]) == 1
    assert "in use by another p2psync node" in one_error_line(capsys)
    assert daemon.configs == []


def test_environment_supplies_flags_and_command_line_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon: FakeDaemon
) -> None:
    monkeypatch.setenv("P2PSYNC_DATA_DIR", str(tmp_path / "env-dir"))
    monkeypatch.setenv("P2PSYNC_API_PORT", "8080")
    monkeypatch.setenv("P2PSYNC_PORT", "4001")
    monkeypatch.setenv("P2PSYNC_NO_MDNS", "1")
    monkeypatch.setenv("P2PSYNC_NO_REPL", "0")
    monkeypatch.setenv(
        "P2PSYNC_PEER",
        f"/ip4/10.0.0.1/tcp/1/p2p/{PEER_A}, /ip4/10.0.0.2/tcp/2/p2p/{PEER_B}",
    )
    monkeypatch.setenv("P2PSYNC_ALLOW_PEER", f"{PEER_A} {PEER_B}")
    monkeypatch.setenv("P2PSYNC_SYNC_INTERVAL", "7.5")
    assert main(["run", "--port", "5000"]) == 0
    (config,) = daemon.configs
    assert config.data_dir == tmp_path / "env-dir"
    assert config.api_port == 8080
    assert config.port == 5000
    assert config.mdns is False
    assert config.repl is True
    assert config.peers == (
        f"/ip4/10.0.0.1/tcp/1/p2p/{PEER_A}",
        f"/ip4/10.0.0.2/tcp/2/p2p/{PEER_B}",
    )
    assert config.allow_peers == {PEER_A, PEER_B}
    assert config.sync_interval == 7.5


def test_command_line_location_beats_environment_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon: FakeDaemon
) -> None:
    monkeypatch.setenv("P2PSYNC_PROFILE", "from-env")
    assert main(["run", "--data-dir", str(tmp_path / "cli")]) == 0
    assert daemon.configs[0].data_dir == tmp_path / "cli"
    assert daemon.configs[0].profile is None


@pytest.mark.parametrize(
    ("name", "value", "message_part"),
    [
        ("P2PSYNC_API_PORT", "eighty", "P2PSYNC_API_PORT"),
        ("P2PSYNC_NO_MDNS", "maybe", "P2PSYNC_NO_MDNS"),
        ("P2PSYNC_PEER", "/ip4/1.2.3.4/tcp/1", "P2PSYNC_PEER"),
        ("P2PSYNC_API_HOST", "10.1.2.3", "--api-token"),
    ],
)
def test_bad_environment_values_exit_2(
    name: str,
    value: str,
    message_part: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    daemon: FakeDaemon,
) -> None:
    monkeypatch.setenv(name, value)
    assert main(["run"]) == 2
    assert message_part in one_error_line(capsys)


def test_profile_and_data_dir_both_in_environment_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("P2PSYNC_PROFILE", "a")
    monkeypatch.setenv("P2PSYNC_DATA_DIR", "/tmp/b")
    assert main(["id"]) == 2
    assert "mutually exclusive" in one_error_line(capsys)


def test_unreadable_allow_file_and_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon: FakeDaemon
) -> None:
    assert main(["run", "--allow-file", str(tmp_path / "missing")]) == 2
    assert "cannot read" in one_error_line(capsys)
    bad = tmp_path / "bad"
    bad.write_text(f"{PEER_A}\nnot-a-peer\n")
    assert main(["run", "--allow-file", str(bad)]) == 2
    assert f"{bad}:2" in one_error_line(capsys)


def test_id_is_stable_and_key_is_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "node"
    assert main(["id", "--data-dir", str(data_dir)]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["id", "--data-dir", str(data_dir)]) == 0
    assert capsys.readouterr().out.strip() == first
    assert first.startswith("12D3KooW")
    assert stat.S_IMODE((data_dir / "identity.key").stat().st_mode) == 0o600


def test_id_works_while_a_node_holds_the_data_dir(
    isolated_environment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with lock_data_dir(isolated_environment / "profiles" / "node1"):
        assert main(["id"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("12D3KooW")
    assert "using profile node1" in captured.err


def test_run_and_id_agree_on_the_identity(
    tmp_path: Path, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--profile", "p"]) == 0
    assert main(["id", "--profile", "p"]) == 0
    from p2psync.node.identity import load_or_create_seed

    expected = peer_id_from_seed(load_or_create_seed(daemon.configs[0].data_dir))
    assert capsys.readouterr().out.strip() == expected
