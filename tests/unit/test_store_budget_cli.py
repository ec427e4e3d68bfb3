"""`--max-store-mb` / P2PSYNC_MAX_STORE_MB: parsed into NodeConfig, bad values exit 2."""

from __future__ import annotations

import pytest

from tests.unit.test_cli import FakeDaemon, daemon, isolated_environment, one_error_line

__all__ = ["daemon", "isolated_environment"]  # fixtures, used by name

MIB = 1 << 20


def test_no_flag_means_no_limit(daemon: FakeDaemon) -> None:
    assert main_run([]) == 0
    (config,) = daemon.configs
    assert config.max_store_mb is None and config.max_store_bytes is None


@pytest.mark.parametrize(("text", "mb"), [("100", 100.0), ("0.5", 0.5), (" 2.25 ", 2.25)])
def test_flag_takes_mib_integer_or_decimal(text: str, mb: float, daemon: FakeDaemon) -> None:
    assert main_run(["--max-store-mb", text]) == 0
    (config,) = daemon.configs
    assert config.max_store_mb == mb
    assert config.max_store_bytes == int(mb * MIB)


def test_environment_supplies_it_and_command_line_wins(
    monkeypatch: pytest.MonkeyPatch, daemon: FakeDaemon
) -> None:
    monkeypatch.setenv("P2PSYNC_MAX_STORE_MB", "3")
    assert main_run([]) == 0
    assert main_run(["--max-store-mb", "7"]) == 0
    assert [config.max_store_mb for config in daemon.configs] == [3.0, 7.0]
    assert daemon.configs[0].max_store_bytes == 3 * MIB


@pytest.mark.parametrize("value", ["0", "-1", "ten", "nan", "inf", "1e30", ""])
def test_bad_flag_values_exit_2_with_one_line(
    value: str, capsys: pytest.CaptureFixture[str], daemon: FakeDaemon
) -> None:
    assert main_run(["--max-store-mb", value]) == 2
    assert "--max-store-mb" in one_error_line(capsys)
    assert daemon.configs == []


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1e30"])
def test_bad_environment_values_exit_2(
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    daemon: FakeDaemon,
) -> None:
    monkeypatch.setenv("P2PSYNC_MAX_STORE_MB", value)
    assert main_run([]) == 2
    assert "P2PSYNC_MAX_STORE_MB" in one_error_line(capsys)
    assert daemon.configs == []


def main_run(flags: list[str]) -> int:
    from p2psync.cli.main import main

    return main(["run", "--no-mdns", "--no-repl", *flags])
