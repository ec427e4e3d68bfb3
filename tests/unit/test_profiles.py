from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2psync.core.ids import SEED_BYTES
from p2psync.node.identity import IdentityError, load_or_create_seed
from p2psync.node.profiles import (
    DataDirBusy,
    InvalidProfileName,
    claim_first_free_profile,
    data_root,
    lock_data_dir,
    profile_dir,
)


def test_claims_take_the_first_free_profile(tmp_path: Path) -> None:
    first_name, first_lock = claim_first_free_profile(tmp_path)
    second_name, second_lock = claim_first_free_profile(tmp_path)
    with first_lock, second_lock:
        assert (first_name, second_name) == ("node1", "node2")
        assert first_lock.data_dir == tmp_path / "profiles" / "node1"
        assert second_lock.data_dir == tmp_path / "profiles" / "node2"


def test_released_profile_is_reused(tmp_path: Path) -> None:
    name, lock = claim_first_free_profile(tmp_path)
    lock.release()
    assert not lock.held
    again, lock_again = claim_first_free_profile(tmp_path)
    with lock_again:
        assert again == name == "node1"


def test_busy_data_dir_names_dir_and_holder(tmp_path: Path) -> None:
    with lock_data_dir(tmp_path / "d"), pytest.raises(DataDirBusy) as raised:
        lock_data_dir(tmp_path / "d")
    message = str(raised.value)
    assert str(tmp_path / "d") in message
    assert f"pid {os.getpid()}" in message
    assert "--profile" in message
    assert raised.value.holder_pid == os.getpid()


def test_release_is_idempotent(tmp_path: Path) -> None:
    lock = lock_data_dir(tmp_path)
    lock.release()
    lock.release()
    with lock_data_dir(tmp_path):
        pass


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root({}) == tmp_path / "home" / ".local" / "share" / "p2psync"
    assert data_root({"XDG_DATA_HOME": "/xdg"}) == Path("/xdg/p2psync")
    assert data_root({"XDG_DATA_HOME": "relative"}) == tmp_path / "home/.local/share/p2psync"
    both = {"XDG_DATA_HOME": "/xdg", "P2PSYNC_DATA_ROOT": "/root-here"}
    assert data_root(both) == Path("/root-here")


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "x" * 65])
def test_bad_profile_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidProfileName):
        profile_dir(tmp_path, name)


def test_identity_created_once_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "dir"
    seed = load_or_create_seed(data_dir)
    assert len(seed) == SEED_BYTES
    key_file = data_dir / "identity.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_seed(data_dir) == seed
    assert [path.name for path in data_dir.iterdir()] == ["identity.key"]


def test_identity_of_wrong_size_is_refused(tmp_path: Path) -> None:
    (tmp_path / "identity.key").write_bytes(b"short")
    with pytest.raises(IdentityError, match=r"identity\.key holds 5 bytes"):
        load_or_create_seed(tmp_path)
