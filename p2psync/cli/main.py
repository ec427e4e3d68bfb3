"""`p2psync run | id | --version`: flags and P2PSYNC_* variables to a NodeConfig.

Everything a user can get wrong is checked (cli/options.py, cli/values.py)
before any directory is created or lock taken, and reported as one line with
exit code 2. The daemon receives a NodeConfig it can trust.
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

from p2psync.cli.options import (
    PROG,
    UsageError,
    apply_environment,
    build_parser,
    node_settings,
)
from p2psync.core.ids import peer_id_from_seed
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

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# `p2psync id` with no location names the profile a lone `p2psync run` takes.
DEFAULT_ID_PROFILE = "node1"

log = logging.getLogger(__name__)


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
    except (DataDirBusy, NoFreeProfile, IdentityError) as error:
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
    if options.data_dir is not None:
        data_dir = options.data_dir
    else:
        # No lock: asking a running node's data dir for its id must work.
        profile = options.profile or DEFAULT_ID_PROFILE
        data_dir = profile_dir(data_root(environ), profile)
        if options.profile is None:
            _print_note(f"using profile {profile} ({data_dir})")
    print(peer_id_from_seed(load_or_create_seed(data_dir)), flush=True)
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "run": _run_command,
    "id": _id_command,
}


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
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _print_error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _print_note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _one_line(message: str) -> str:
    return " ".join(message.split())
