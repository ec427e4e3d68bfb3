"""Where nodes keep their data, and the lock that keeps two nodes out of one dir.

Several `p2psync run` on one machine with no flags each take the first
profile (`node1`, `node2`, ...) whose data dir is not locked. The lock is an
flock on `<data_dir>/lock`: the kernel drops it when the process dies, however
it dies, so a crashed node never leaves a profile stuck.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

DATA_ROOT_ENV = "P2PSYNC_DATA_ROOT"
LOCK_FILE_NAME = "lock"
AUTO_PROFILE_PREFIX = "node"
# A bound so a broken data root (say, every dir unlockable) fails with a message
# instead of looping forever.
MAX_AUTO_PROFILES = 1000

_PROFILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


class DataDirBusy(Exception):
    """Another running node holds the data dir's lock."""

    def __init__(self, data_dir: Path, holder_pid: int | None) -> None:
        holder = f"pid {holder_pid}" if holder_pid is not None else "another process"
        super().__init__(
            f"data dir {data_dir} is in use by another p2psync node ({holder}); "
            "stop it, or choose another --profile or --data-dir"
        )
        self.data_dir = data_dir
        self.holder_pid = holder_pid


class NoFreeProfile(Exception):
    """Every automatic profile is held by a running node."""


class InvalidProfileName(ValueError):
    pass


def data_root(environ: Mapping[str, str] | None = None) -> Path:
    """`$P2PSYNC_DATA_ROOT`, else `$XDG_DATA_HOME/p2psync`, else `~/.local/share/p2psync`."""
    env = os.environ if environ is None else environ
    explicit_root = env.get(DATA_ROOT_ENV)
    if explicit_root:
        return Path(explicit_root).expanduser().absolute()
    xdg_data_home = env.get("XDG_DATA_HOME")
    # The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    if xdg_data_home and Path(xdg_data_home).is_absolute():
        return Path(xdg_data_home) / "p2psync"
    return Path.home() / ".local" / "share" / "p2psync"


def check_profile_name(name: str) -> str:
    # Names become directory names: no separators, no "..", nothing hidden.
    if not _PROFILE_NAME.fullmatch(name):
        raise InvalidProfileName(
            f"invalid profile name {name!r}: use 1-64 of A-Z a-z 0-9 . _ - "
            "(not starting with a dot)"
        )
    return name


def profile_dir(root: Path, name: str) -> Path:
    return root / "profiles" / check_profile_name(name)


class DataDirLock:
    """An exclusive hold on one data dir for as long as this object is unreleased."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            # Closing drops the flock; the file stays so no other process can be
            # left locking an unlinked inode while a third creates a new one.
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DataDirLock({str(self.data_dir)!r}, held={self.held})"


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Create `data_dir` if needed and lock it, or raise `DataDirBusy`."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_path = data_dir / LOCK_FILE_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder_pid = _read_pid(fd)
        os.close(fd)
        raise DataDirBusy(data_dir, holder_pid) from None
    except BaseException:
        os.close(fd)
        raise
    # The pid is only for the busy message and for people; the flock is the truth.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return DataDirLock(data_dir, fd)


def claim_first_free_profile(root: Path) -> tuple[str, DataDirLock]:
    """Lock the first of node1, node2, ... that no running node holds."""
    for number in range(1, MAX_AUTO_PROFILES + 1):
        name = f"{AUTO_PROFILE_PREFIX}{number}"
        try:
            return name, lock_data_dir(profile_dir(root, name))
        except DataDirBusy:
            continue
    raise NoFreeProfile(
        f"all of {AUTO_PROFILE_PREFIX}1..{AUTO_PROFILE_PREFIX}{MAX_AUTO_PROFILES} under "
        f"{root / 'profiles'} are in use; pass --profile or --data-dir"
    )


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
