"""The node's Ed25519 identity: one seed per data dir, created once, reused after.

A restarted node must be the same peer, so the seed is written durably the
first time and never replaced. `p2psync id` and `p2psync run` may race to
create it in a fresh data dir; linking a fully written temp file into place
(which fails if the name exists) makes exactly one of them win, and the other
reads the winner's seed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from p2psync.core.ids import SEED_BYTES

IDENTITY_FILE_NAME = "identity.key"


class IdentityError(Exception):
    """The identity file exists but cannot be used; the message names it."""


def load_or_create_seed(data_dir: Path) -> bytes:
    """The 32-byte Ed25519 seed stored in `data_dir/identity.key`, made on first use."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = data_dir / IDENTITY_FILE_NAME
    try:
        return _read_seed(key_path)
    except FileNotFoundError:
        pass
    _create_seed_file(key_path)
    return _read_seed(key_path)


def read_seed(data_dir: Path) -> bytes:
    """The seed in `data_dir/identity.key`, never creating one (IdentityError if absent)."""
    key_path = data_dir / IDENTITY_FILE_NAME
    try:
        return _read_seed(key_path)
    except FileNotFoundError:
        raise IdentityError(f"no identity file {key_path}") from None


def _read_seed(key_path: Path) -> bytes:
    try:
        seed = key_path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(f"cannot read identity file {key_path}: {exc.strerror}") from exc
    if len(seed) != SEED_BYTES:
        raise IdentityError(
            f"identity file {key_path} holds {len(seed)} bytes, expected {SEED_BYTES}; "
            "it is damaged or not a p2psync key (move it away to make a new identity)"
        )
    return seed


def _create_seed_file(key_path: Path) -> None:
    temp_path = key_path.with_name(f".{key_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    # 0600 from the first byte: the secret is never readable by others, even briefly.
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as temp_file:
            temp_file.write(secrets.token_bytes(SEED_BYTES))
            temp_file.flush()
            os.fsync(temp_file.fileno())
        # link, unlike rename, refuses to replace a seed a concurrent process just made.
        with contextlib.suppress(FileExistsError):
            os.link(temp_path, key_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp_path.unlink()
    _fsync_directory(key_path.parent)


def _fsync_directory(directory: Path) -> None:
    # Without this a crash right after creation could lose the new name, and the
    # node would come back as a different peer.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
