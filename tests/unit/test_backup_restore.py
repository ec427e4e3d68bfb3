"""`p2psync backup` and `p2psync restore`: what they write, what they refuse."""

from __future__ import annotations

import itertools
import os
import sqlite3
import stat
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import p2psync.node.restore as restore_module
from p2psync.cli.main import main
from p2psync.core.ids import peer_id_from_seed
from p2psync.node.config import NodeConfig
from p2psync.node.identity import load_or_create_seed
from p2psync.node.node import data_file
from p2psync.node.profiles import DataDirLock, lock_data_dir
from p2psync.store.sqlite import SqliteStore
from tests.store.store_helper import entry_stream, persists


@pytest.fixture(autouse=True)
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("P2PSYNC_"):
            monkeypatch.delenv(name)
    data_root = tmp_path / "root"
    monkeypatch.setenv("P2PSYNC_DATA_ROOT", str(data_root))
    return data_root


def profile(root: Path, name: str) -> Path:
    return root / "profiles" / name


def make_node_data(data_dir: Path, seed: int, batches: int = 2) -> tuple[str, int, str]:
    """A data dir as a node leaves it: identity and database; (peer id, entries, digest)."""
    peer_id = peer_id_from_seed(load_or_create_seed(data_dir))
    with SqliteStore.open(data_file(data_dir)) as store:
        for persist in itertools.islice(persists(entry_stream(seed)), batches):
            store.commit(persist)
        return peer_id, store.entry_count(), store.digest()


def stored(data_dir: Path) -> tuple[str, int, str]:
    peer_id = peer_id_from_seed((data_dir / "identity.key").read_bytes())
    with SqliteStore.open(data_file(data_dir)) as store:
        return peer_id, store.entry_count(), store.digest()


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("p2psync: error: "), err
    return err[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_backup_of_a_running_node_restores_into_a_fresh_profile(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = make_node_data(profile(root, "a"), seed=3)
    target = tmp_path / "backup"
    with lock_data_dir(profile(root, "a")):  # "running": backup needs no lock
        assert main(["backup", str(target), "--profile", "a"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"wrote backup of {profile(root, 'a')} to {target}")
    assert f"{original[1]} entries" in out[0] and original[0] in out[0]
    assert mode(target) == 0o700
    assert sorted(p.name for p in target.iterdir()) == ["identity.key", "p2psync.db"]
    assert all(mode(p) == 0o600 for p in target.iterdir())

    assert main(["restore", str(target), "--profile", "b"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"restored p2psync.db and identity.key from {target}")
    assert "catch up with its peers before it accepts local writes" in captured.err
    assert stored(profile(root, "b")) == original
    assert main(["id", "--profile", "b"]) == 0
    assert capsys.readouterr().out.strip() == original[0]
    assert not [p for p in profile(root, "b").iterdir() if p.name.startswith(".restore")]
    assert not (profile(root, "b") / "restore-pending").exists()


def test_restore_replaces_another_nodes_data_and_its_stale_wal(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = make_node_data(tmp_path / "a", seed=3)
    assert main(["backup", str(tmp_path / "backup"), "--data-dir", str(tmp_path / "a")]) == 0
    other = make_node_data(tmp_path / "b", seed=4, batches=3)
    assert other[0] != original[0]
    # What SQLite would replay onto the new database if it were left there.
    Path(f"{data_file(tmp_path / 'b')}-wal").write_bytes(b"stale frames")
    Path(f"{data_file(tmp_path / 'b')}-journal").write_bytes(b"stale journal")
    assert main(["restore", str(tmp_path / "backup"), "--data-dir", str(tmp_path / "b")]) == 0
    assert not Path(f"{data_file(tmp_path / 'b')}-journal").exists()
    assert stored(tmp_path / "b") == original
    assert mode(data_file(tmp_path / "b")) == 0o600


def test_restore_refuses_a_running_profile(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_node_data(tmp_path / "a", seed=3)
    assert main(["backup", str(tmp_path / "backup"), "--data-dir", str(tmp_path / "a")]) == 0
    running = make_node_data(profile(root, "b"), seed=4)
    capsys.readouterr()
    with lock_data_dir(profile(root, "b")):
        assert main(["restore", str(tmp_path / "backup"), "--profile", "b"]) == 1
    line = one_error_line(capsys)
    assert "a node is running there" in line and f"pid {os.getpid()}" in line
    assert stored(profile(root, "b")) == running


def test_restore_refuses_a_foreign_database_and_changes_nothing(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "identity.key").write_bytes(b"\x07" * 32)
    with sqlite3.connect(backup / "p2psync.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    before = make_node_data(profile(root, "b"), seed=4)
    assert main(["restore", str(backup), "--profile", "b"]) == 1
    assert "is not a p2psync database" in one_error_line(capsys)
    assert stored(profile(root, "b")) == before
    assert not [p for p in profile(root, "b").iterdir() if p.name.startswith(".restore")]


def test_restore_refuses_a_backup_without_identity(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_node_data(tmp_path / "a", seed=3)
    assert main(["backup", str(tmp_path / "backup"), "--data-dir", str(tmp_path / "a")]) == 0
    (tmp_path / "backup" / "identity.key").unlink()
    capsys.readouterr()
    assert main(["restore", str(tmp_path / "backup"), "--profile", "b"]) == 1
    assert "no identity file" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["backup", "{existing}", "--profile", "a"], 2, "already exists"),
        (["backup", "{tmp}/no/such/dir", "--profile", "a"], 2, "does not exist"),
        (["backup", "{tmp}/new", "--profile", "empty"], 1, "nothing to back up"),
        (["backup", "{tmp}/new", "--profile", "a", "--data-dir", "{tmp}"], 2, "not allowed"),
        (["restore", "{tmp}/missing", "--profile", "a"], 2, "not a directory"),
        (["restore", "{tmp}/empty-backup", "--profile", "a"], 1, "no identity file"),
        (["restore", "--profile", "a"], 2, "required"),
    ],
)
def test_bad_arguments_and_failures_are_one_line(
    root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    make_node_data(profile(root, "a"), seed=3)
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "file").write_text("x")
    (tmp_path / "empty-backup").mkdir()
    profile(root, "empty").mkdir(parents=True)
    args = [arg.format(tmp=tmp_path, existing=tmp_path / "existing") for arg in argv]
    assert main(args) == code
    assert message in one_error_line(capsys)
    assert not (tmp_path / "new").exists()


def test_location_comes_from_the_environment(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = make_node_data(profile(root, "a"), seed=3)
    monkeypatch.setenv("P2PSYNC_PROFILE", "a")
    assert main(["backup", str(tmp_path / "backup")]) == 0
    monkeypatch.setenv("P2PSYNC_PROFILE", "b")
    assert main(["restore", str(tmp_path / "backup")]) == 0
    assert stored(profile(root, "b")) == original


class _Crash(Exception):
    pass


def _fake_app(monkeypatch: pytest.MonkeyPatch, started: list[NodeConfig]) -> None:
    async def run_node(config: NodeConfig, *, lock: DataDirLock) -> int:
        started.append(config)
        return 0

    module: Any = types.ModuleType("p2psync.app")
    module.run_node = run_node
    monkeypatch.setitem(sys.modules, "p2psync.app", module)


def test_a_restore_interrupted_after_its_commit_point_is_finished_by_run(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = make_node_data(tmp_path / "a", seed=3)
    assert main(["backup", str(tmp_path / "backup"), "--data-dir", str(tmp_path / "a")]) == 0
    old = make_node_data(profile(root, "b"), seed=4)

    def crash(data_dir: Path) -> bool:
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr(restore_module, "finish_pending_restore", crash)
        with pytest.raises(_Crash):
            main(["restore", str(tmp_path / "backup"), "--profile", "b"])
    # Crashed right after the commit point: nothing replaced yet, but decided.
    assert (profile(root, "b") / "restore-pending").exists()
    assert stored(profile(root, "b")) == old
    started: list[NodeConfig] = []
    _fake_app(monkeypatch, started)
    capsys.readouterr()
    assert main(["run", "--profile", "b"]) == 0
    assert "finished the interrupted restore" in capsys.readouterr().err
    assert len(started) == 1
    assert stored(profile(root, "b")) == original
    assert not (profile(root, "b") / "restore-pending").exists()


def test_a_restore_interrupted_before_its_commit_point_changes_nothing(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_node_data(tmp_path / "a", seed=3)
    assert main(["backup", str(tmp_path / "backup"), "--data-dir", str(tmp_path / "a")]) == 0
    old = make_node_data(profile(root, "b"), seed=4)

    def crash(data_dir: Path, install: Any, remove: Any) -> None:
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr("p2psync.app.commit_restore", crash)
        with pytest.raises(_Crash):
            main(["restore", str(tmp_path / "backup"), "--profile", "b"])
    assert [p for p in profile(root, "b").iterdir() if p.name.startswith(".restore")]
    started: list[NodeConfig] = []
    _fake_app(monkeypatch, started)
    assert main(["run", "--profile", "b"]) == 0
    assert stored(profile(root, "b")) == old
