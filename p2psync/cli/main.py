"""`p2psync run | id | backup | restore | relay | --version`: flags and P2PSYNC_* variables.

Everything a user can get wrong is checked (cli/options.py, cli/values.py)
before any directory is created or lock taken, and reported as one line with
exit code 2. The daemon receives a NodeConfig it can trust; `backup` and
`restore` hand checked paths to app.py, the only way to the store.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from p2psync.cli.logs import configure_logging
from p2psync.cli.options import (
    PROG,
    UsageError,
    apply_environment,
    build_parser,
    node_settings,
)
from p2psync.cli.relay_command import relay_command
from p2psync.core.ids import peer_id_from_seed
from p2psync.core.store import StoreError
from p2psync.node.config import NodeConfig
from p2psync.node.identity import IdentityError, load_or_create_seed
from p2psync.node.profiles import (
    DataDirBusy,
    DataDirLock,
    NoFreeProfile,
    claim_first_free_profile,
    data_root,
    lock_data_dir,
    profile_dir,
)
from p2psync.node.restore import RestoreError, finish_pending_restore

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# `p2psync id`, `backup` and `restore` with no location name the profile a lone
# `p2psync run` takes.
DEFAULT_ID_PROFILE = "node1"

log = logging.getLogger(__name__)


class CommandFailed(Exception):
    """A command could not do its work: printed as one line, exit code 1."""


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        try:
            options = parser.parse_args(arguments)
        except SystemExit as exit_request:  # --help and --version
            return exit_request.code if isinstance(exit_request.code, int) else EXIT_FAILURE
        if options.command is None:
            parser.print_usage(sys.stderr)
            return EXIT_USAGE
        command = _COMMANDS[options.command]
        return command(options, os.environ)
    except UsageError as error:
        _print_error(str(error))
        return EXIT_USAGE
    except (
        DataDirBusy,
        NoFreeProfile,
        IdentityError,
        StoreError,
        RestoreError,
        CommandFailed,
    ) as error:
        _print_error(str(error))
        return EXIT_FAILURE
    except OSError as error:
        # An unusable data dir or data root: say which path and why, no trace.
        where = f" ({error.filename})" if error.filename else ""
        _print_error(f"{error.strerror or error}{where}")
        return EXIT_FAILURE


def entrypoint() -> None:
    sys.exit(main())


# --- commands -------------------------------------------------------------


def _run_command(options: argparse.Namespace, environ: Mapping[str, str]) -> int:
    apply_environment(options, environ)
    settings = node_settings(options)
    _configure_logging(settings["log_level"])
    root = data_root(environ)
    profile, lock = _lock_location(options, root)
    try:
        if finish_pending_restore(lock.data_dir):
            _print_note(f"finished the interrupted restore into {lock.data_dir}")
        load_or_create_seed(lock.data_dir)
        config = NodeConfig(data_dir=lock.data_dir, profile=profile, data_root=root, **settings)
        # Imported here so `p2psync id` and `--version` never pay for libp2p.
        from p2psync.app import run_node

        exit_code: int = trio.run(functools.partial(run_node, config, lock=lock))
        return exit_code
    finally:
        lock.release()


def _id_command(options: argparse.Namespace, environ: Mapping[str, str]) -> int:
    apply_environment(options, environ)
    # No lock: asking a running node's data dir for its id must work.
    data_dir = _named_data_dir(options, environ)
    print(peer_id_from_seed(load_or_create_seed(data_dir)), flush=True)
    return EXIT_OK


def _backup_command(options: argparse.Namespace, environ: Mapping[str, str]) -> int:
    apply_environment(options, environ)
    target: Path = options.path
    if target.is_symlink() or (target.exists() and not _is_empty_dir(target)):
        raise UsageError(f"backup PATH {target} already exists; name a new or empty directory")
    if not target.parent.is_dir():
        raise UsageError(f"backup PATH {target}: directory {target.parent} does not exist")
    data_dir = _named_data_dir(options, environ)  # no lock: the node may be running
    from p2psync.app import backup_data_dir

    copy = backup_data_dir(data_dir, target)
    print(
        f"wrote backup of {data_dir} to {target}: {' and '.join(copy.files)} "
        f"({copy.entries} entries, peer id {copy.peer_id})",
        flush=True,
    )
    return EXIT_OK


def _restore_command(options: argparse.Namespace, environ: Mapping[str, str]) -> int:
    apply_environment(options, environ)
    backup: Path = options.path
    if not backup.is_dir():
        raise UsageError(f"restore PATH {backup} is not a directory written by `p2psync backup`")
    data_dir = _named_data_dir(options, environ)
    if data_dir == backup:
        raise UsageError(f"restore PATH {backup} is the data dir itself")
    from p2psync.app import restore_data_dir

    try:
        lock = lock_data_dir(data_dir)
    except DataDirBusy as busy:
        holder = f" (pid {busy.holder_pid})" if busy.holder_pid is not None else ""
        raise CommandFailed(
            f"cannot restore into {data_dir}: a node is running there{holder}; stop it first"
        ) from None
    try:
        copy = restore_data_dir(backup, lock)
    finally:
        lock.release()
    print(
        f"restored {' and '.join(copy.files)} from {backup} into {data_dir} "
        f"({copy.entries} entries, peer id {copy.peer_id})",
        flush=True,
    )
    _print_note("the node will catch up with its peers before it accepts local writes")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "run": _run_command,
    "id": _id_command,
    "backup": _backup_command,
    "restore": _restore_command,
    "relay": relay_command,
}


def _named_data_dir(options: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    """The data dir of --data-dir or --profile, else of profile node1 (with a note)."""
    if options.data_dir is not None:
        return Path(options.data_dir)
    profile = options.profile or DEFAULT_ID_PROFILE
    data_dir = profile_dir(data_root(environ), profile)
    if options.profile is None:
        _print_note(f"using profile {profile} ({data_dir})")
    return data_dir


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _lock_location(options: argparse.Namespace, root: Path) -> tuple[str | None, DataDirLock]:
    if options.data_dir is not None:
        return None, lock_data_dir(options.data_dir)
    if options.profile is not None:
        return options.profile, lock_data_dir(profile_dir(root, options.profile))
    profile, lock = claim_first_free_profile(root)
    _print_note(f"using profile {profile} ({lock.data_dir})")
    return profile, lock


# --- output ---------------------------------------------------------------


def _configure_logging(level: str) -> None:
    configure_logging(level)


def _print_error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _print_note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _one_line(message: str) -> str:
    return " ".join(message.split())
