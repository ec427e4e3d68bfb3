"""`p2psync run | id | --version`: flags and P2PSYNC_* variables to a NodeConfig.

Everything a user can get wrong is checked here, before any directory is
created or lock taken, and reported as one line with exit code 2. The
daemon receives a NodeConfig it can trust.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import trio

from p2psync.core.ids import InvalidPeerId, peer_id_from_seed, public_key_from_peer_id
from p2psync.node.config import NodeConfig
from p2psync.node.identity import IdentityError, load_or_create_seed
from p2psync.node.profiles import (
    DataDirBusy,
    DataDirLock,
    InvalidProfileName,
    NoFreeProfile,
    check_profile_name,
    claim_first_free_profile,
    data_root,
    lock_data_dir,
    profile_dir,
)

PROG = "p2psync"
ENV_PREFIX = "P2PSYNC_"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# `p2psync id` with no location names the profile a lone `p2psync run` takes.
DEFAULT_ID_PROFILE = "node1"

MAX_BATCH_SIZE = 10_000
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MULTIADDR_NETWORKS = ("ip4", "ip6", "dns", "dns4", "dns6")
_NETWORK_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DNS_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?")
_ENV_LIST_SEPARATORS = re.compile(r"[,\s]+")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})

_CONFIG_DEFAULTS = NodeConfig(data_dir=Path())

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A bad flag or variable: printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    try:
        try:
            options = parser.parse_args(arguments)
        except SystemExit as exit_request:  # --help and --version
            return exit_request.code if isinstance(exit_request.code, int) else EXIT_FAILURE
        if options.command is None:
            parser.print_usage(sys.stderr)
            return EXIT_USAGE
        command: Callable[[argparse.Namespace, Mapping[str, str]], int] = options.handler
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


def version() -> str:
    try:
        return metadata.version("p2psync")
    except metadata.PackageNotFoundError:
        # Running from a source tree that was never installed.
        return "0+unknown"


# --- commands -------------------------------------------------------------


def _run_command(options: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _apply_environment(options, environ)
    node_settings = _node_settings(options)
    _configure_logging(node_settings["log_level"])
    root = data_root(environ)
    profile, lock = _lock_location(options, root)
    try:
        load_or_create_seed(lock.data_dir)
        config = NodeConfig(
            data_dir=lock.data_dir, profile=profile, data_root=root, **node_settings
        )
        # Imported here so `p2psync id` and `--version` never pay for libp2p.
        from p2psync.node.daemon import run_node

        exit_code: int = trio.run(functools.partial(run_node, config, lock=lock))
        return exit_code
    finally:
        lock.release()


def _id_command(options: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _apply_environment(options, environ)
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


def _lock_location(options: argparse.Namespace, root: Path) -> tuple[str | None, DataDirLock]:
    if options.data_dir is not None:
        return None, lock_data_dir(options.data_dir)
    if options.profile is not None:
        return options.profile, lock_data_dir(profile_dir(root, options.profile))
    profile, lock = claim_first_free_profile(root)
    _print_note(f"using profile {profile} ({lock.data_dir})")
    return profile, lock


def _node_settings(options: argparse.Namespace) -> dict[str, Any]:
    """NodeConfig fields from the merged options; unset ones keep NodeConfig's defaults."""
    settings: dict[str, Any] = {
        "host": options.host,
        "port": options.port,
        "network": options.network,
        "api_port": options.api_port,
        "api_host": options.api_host,
        "metrics_port": options.metrics_port,
        "batch_size": options.batch_size,
        "sync_interval": options.sync_interval,
        "initial_ops": options.initial_ops,
        "op_interval": options.op_interval,
        "ops_per_interval": options.ops_per_interval,
        "seed": options.seed,
        "api_token": options.api_token,
        "log_level": options.log_level,
    }
    settings = {name: value for name, value in settings.items() if value is not None}
    settings["peers"] = tuple(dict.fromkeys(options.peer or ()))
    settings["mdns"] = not options.no_mdns
    settings["repl"] = not options.no_repl
    allowed = set(options.allow_peer or ())
    if options.allow_file is not None:
        allowed |= _read_allow_file(options.allow_file)
    settings["allow_peers"] = frozenset(allowed)
    defaults = {field.name: getattr(_CONFIG_DEFAULTS, field.name) for field in fields(NodeConfig)}
    merged = {**defaults, **settings}

    if merged["api_token"] is None and not _is_loopback(merged["api_host"]):
        raise UsageError(
            f"--api-host {merged['api_host']} is reachable from other machines; "
            "pass --api-token TOKEN to protect the API"
        )
    api_port, metrics_port = merged["api_port"], merged["metrics_port"]
    if api_port and metrics_port and api_port == metrics_port:
        raise UsageError(f"--metrics-port and --api-port are both {api_port}; pick two ports")
    location_fields = ("data_dir", "profile", "data_root")
    return {name: value for name, value in merged.items() if name not in location_fields}


def _read_allow_file(path: Path) -> set[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"--allow-file {path}: cannot read: {reason}") from exc
    peer_ids: set[str] = set()
    for line_number, line in enumerate(text.splitlines(), start=1):
        peer_id = line.split("#", 1)[0].strip()
        if not peer_id:
            continue
        try:
            peer_ids.add(_peer_id(peer_id))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--allow-file {path}:{line_number}: {exc}") from exc
    return peer_ids


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


# --- parser -----------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Peer-to-peer recipe book. Every flag can also be set as P2PSYNC_<FLAG>, "
        "e.g. P2PSYNC_API_PORT=8080 or P2PSYNC_NO_MDNS=1; the command line wins.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="run a node (stdin is a command prompt)")
    run.set_defaults(command="run", handler=_run_command)
    _add_location_flags(run)
    defaults = _CONFIG_DEFAULTS
    run.add_argument(
        "--host",
        type=_ip_address,
        metavar="IP",
        help=f"listen address (default {defaults.host}: all interfaces)",
    )
    run.add_argument(
        "--port", type=_port, metavar="N", help="listen port (default 0: pick a free one)"
    )
    run.add_argument(
        "--peer",
        action="append",
        type=_peer_multiaddr,
        metavar="MULTIADDR",
        help="static peer /ip4/HOST/tcp/PORT/p2p/PEER_ID, re-dialed with backoff (repeatable)",
    )
    run.add_argument(
        "--no-mdns", action="store_true", default=None, help="disable LAN discovery by mDNS"
    )
    run.add_argument(
        "--network",
        type=_network_name,
        metavar="NAME",
        help=f"separate recipe books on one LAN (default {defaults.network!r})",
    )
    run.add_argument(
        "--api-port",
        type=_port,
        metavar="N",
        help="serve the HTTP JSON API and /metrics on this port",
    )
    run.add_argument(
        "--api-host",
        type=_api_host,
        metavar="IP",
        help=f"HTTP API address (default {defaults.api_host})",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        metavar="N",
        help="serve only Prometheus /metrics on this port",
    )
    run.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="N",
        help=f"max entries per backfill message (default {defaults.batch_size})",
    )
    run.add_argument(
        "--sync-interval",
        type=_positive_seconds,
        metavar="SECONDS",
        help=f"anti-entropy period per peer (default {defaults.sync_interval:g})",
    )
    run.add_argument(
        "--initial-ops",
        type=_non_negative_int,
        metavar="N",
        help="workload generator: operations made at start",
    )
    run.add_argument(
        "--op-interval",
        type=_positive_seconds,
        metavar="S",
        help="workload generator: seconds between bursts",
    )
    run.add_argument(
        "--ops-per-interval",
        type=_positive_int,
        metavar="K",
        help="workload generator: operations per burst",
    )
    run.add_argument("--seed", type=_integer, metavar="N", help="workload generator: random seed")
    run.add_argument(
        "--api-token",
        type=_api_token,
        metavar="TOKEN",
        help="bearer token for the API; required when it is not on loopback",
    )
    run.add_argument(
        "--allow-peer",
        action="append",
        type=_peer_id,
        metavar="PEER_ID",
        help="closed network: accept only these peers (repeatable)",
    )
    run.add_argument(
        "--allow-file",
        type=Path,
        metavar="PATH",
        help="closed network: file of peer ids, one per line, # comments",
    )
    run.add_argument(
        "--no-repl", action="store_true", default=None, help="do not read commands from stdin"
    )
    run.add_argument(
        "--log-level",
        type=_log_level,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default {defaults.log_level})",
    )

    identity = commands.add_parser("id", help="print this node's peer id")
    identity.set_defaults(command="id", handler=_id_command)
    _add_location_flags(identity)
    return parser


def _add_location_flags(parser: argparse.ArgumentParser) -> None:
    location = parser.add_mutually_exclusive_group()
    location.add_argument(
        "--profile",
        type=_profile_name,
        metavar="NAME",
        help="data dir <data root>/profiles/NAME "
        "(default: the first of node1, node2, ... not in use)",
    )
    location.add_argument(
        "--data-dir", type=_data_dir, metavar="PATH", help="keep this node's data in PATH"
    )


# --- environment ------------------------------------------------------------


def env_variable_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def _apply_environment(options: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill every flag the command line left unset from its P2PSYNC_* variable."""
    location_on_command_line = options.profile is not None or options.data_dir is not None
    env_location = [
        name
        for name in (env_variable_name("--profile"), env_variable_name("--data-dir"))
        if environ.get(name, "").strip()
    ]
    if not location_on_command_line and len(env_location) > 1:
        raise UsageError(f"{' and '.join(env_location)} are mutually exclusive; set only one")

    for action in _options_of(options.command):
        if location_on_command_line and action.dest in ("profile", "data_dir"):
            continue
        if getattr(options, action.dest) is not None:
            continue
        name = env_variable_name(action.option_strings[-1])
        raw = environ.get(name, "").strip()
        if raw:
            setattr(options, action.dest, _env_value(action, name, raw))


def _env_value(action: argparse.Action, name: str, raw: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        word = raw.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise UsageError(f"{name}={raw!r}: expected 1 or 0")
    convert: Callable[[str], Any] = action.type if callable(action.type) else str
    try:
        if isinstance(action, argparse._AppendAction):
            return [convert(item) for item in _ENV_LIST_SEPARATORS.split(raw) if item]
        return convert(raw)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise UsageError(f"{name}: {exc}") from exc


def _options_of(command: str) -> list[argparse.Action]:
    parser = _build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    command_parser = subparsers.choices[command]
    return [
        action
        for action in command_parser._actions
        if action.option_strings and action.dest != "help"
    ]


# --- value checks (argparse turns ArgumentTypeError into "argument --x: ...") ---


def _integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _bounded_int(text: str, low: int, high: int | None, what: str) -> int:
    value = _integer(text)
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise argparse.ArgumentTypeError(f"{what} must be {bounds}, got {value}")
    return value


def _port(text: str) -> int:
    return _bounded_int(text, 0, 65535, "port")


def _batch_size(text: str) -> int:
    return _bounded_int(text, 1, MAX_BATCH_SIZE, "batch size")


def _non_negative_int(text: str) -> int:
    return _bounded_int(text, 0, None, "count")


def _positive_int(text: str) -> int:
    return _bounded_int(text, 1, None, "count")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"seconds must be a positive number, got {text!r}")
    return value


def _ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _api_host(text: str) -> str:
    if text.strip().lower() == "localhost":
        return "localhost"
    return _ip_address(text)


def _is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def _network_name(text: str) -> str:
    if not _NETWORK_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid network name {text!r}: use 1-64 of A-Z a-z 0-9 . _ -"
        )
    return text


def _profile_name(text: str) -> str:
    try:
        return check_profile_name(text)
    except InvalidProfileName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _data_dir(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return Path(text).expanduser().absolute()


def _api_token(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty token")
    return text


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r}: use one of {', '.join(LOG_LEVELS)}"
        )
    return level


def _peer_id(text: str) -> str:
    peer_id = text.strip()
    try:
        public_key_from_peer_id(peer_id)
    except InvalidPeerId:
        raise argparse.ArgumentTypeError(
            f"not a p2psync peer id (an Ed25519 libp2p id, 12D3KooW...): {peer_id!r}"
        ) from None
    return peer_id


def _peer_multiaddr(text: str) -> str:
    address = text.strip()
    expected = "expected /ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT/p2p/PEER_ID"
    parts = address.split("/")
    if len(parts) != 7 or parts[0] != "" or parts[3] != "tcp" or parts[5] != "p2p":
        raise argparse.ArgumentTypeError(f"{expected}, got {address!r}")
    network, host, port, peer_id = parts[1], parts[2], parts[4], parts[6]
    if network not in MULTIADDR_NETWORKS:
        raise argparse.ArgumentTypeError(f"{expected}, got {network!r} in {address!r}")
    if network in ("ip4", "ip6"):
        try:
            parsed_host = ipaddress.ip_address(host)
        except ValueError:
            parsed_host = None
        if parsed_host is None or parsed_host.version != int(network[-1]):
            raise argparse.ArgumentTypeError(f"not an {network} address: {host!r} in {address!r}")
    elif not _DNS_NAME.fullmatch(host):
        raise argparse.ArgumentTypeError(f"not a host name: {host!r} in {address!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"tcp port must be 1..65535: {port!r} in {address!r}")
    _peer_id(peer_id)
    return address
