"""Flags and P2PSYNC_* variables of every command, merged and checked.

One table (``COMMAND_FLAGS``) lists each command's flags. The argparse parser
is built from it, and the environment merge reads it too: a flag the command
line left unset is taken from ``P2PSYNC_<FLAG>`` (``--api-port`` ->
``P2PSYNC_API_PORT``), converted by the same value check. ``node_settings``
then turns the merged options into NodeConfig fields, checking the rules
that involve several flags.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from p2psync.cli import values
from p2psync.core.protocol import PROTOCOL_VERSION
from p2psync.net.addresses import is_loopback
from p2psync.node.config import NodeConfig

PROG = "p2psync"
ENV_PREFIX = "P2PSYNC_"

_CONFIG_DEFAULTS = NodeConfig(data_dir=Path())
_ENV_LIST_SEPARATORS = re.compile(r"[,\s]+")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class UsageError(Exception):
    """A bad flag or variable: printed as one line, exit code 2."""


def version() -> str:
    try:
        return metadata.version("p2psync")
    except metadata.PackageNotFoundError:
        # Running from a source tree that was never installed.
        return "0+unknown"


def env_variable_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


# --- the flags ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flag:
    """One command-line flag and its P2PSYNC_* variable."""

    name: str  # "--api-port"
    help: str
    convert: Callable[[str], Any] | None = None  # None: an on/off switch
    metavar: str | None = None
    repeatable: bool = False  # given several times; a list in the environment

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def env_name(self) -> str:
        return env_variable_name(self.name)

    def add_to(self, add_argument: Callable[..., object]) -> None:
        """Declare the flag through ``add_argument`` of a parser or a group."""
        if self.convert is None:
            add_argument(
                self.name, dest=self.dest, action="store_true", default=None, help=self.help
            )
        else:
            add_argument(
                self.name,
                dest=self.dest,
                action="append" if self.repeatable else "store",
                type=self.convert,
                metavar=self.metavar,
                help=self.help,
            )

    def from_environment(self, raw: str) -> Any:
        """The value of ``<env_name>=<raw>``; UsageError naming the variable if bad."""
        if self.convert is None:
            word = raw.lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            raise UsageError(f"{self.env_name}={raw!r}: expected 1 or 0")
        try:
            if self.repeatable:
                return [self.convert(item) for item in _ENV_LIST_SEPARATORS.split(raw) if item]
            return self.convert(raw)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise UsageError(f"{self.env_name}: {exc}") from exc


_D = _CONFIG_DEFAULTS

LOCATION_FLAGS = (
    Flag(
        "--profile",
        "data dir <data root>/profiles/NAME (default: the first of node1, node2, ... not in use)",
        values.profile_name,
        "NAME",
    ),
    Flag("--data-dir", "keep this node's data in PATH", values.data_dir, "PATH"),
)

RUN_FLAGS = (
    Flag("--host", f"listen address (default {_D.host}: all interfaces)", values.ip_address, "IP"),
    Flag("--port", "listen port (default 0: pick a free one)", values.port, "N"),
    Flag(
        "--peer",
        "static peer /ip4/HOST/tcp/PORT/p2p/PEER_ID, re-dialed with backoff (repeatable)",
        values.peer_multiaddr,
        "MULTIADDR",
        repeatable=True,
    ),
    Flag("--no-mdns", "disable LAN discovery by mDNS"),
    Flag(
        "--network",
        f"separate recipe books on one LAN (default {_D.network!r})",
        values.network_name,
        "NAME",
    ),
    Flag("--api-port", "serve the HTTP JSON API and /metrics on this port", values.port, "N"),
    Flag("--api-host", f"HTTP API address (default {_D.api_host})", values.api_host, "IP"),
    Flag("--metrics-port", "serve only Prometheus /metrics on this port", values.port, "N"),
    Flag(
        "--batch-size",
        f"max entries per backfill message (default {_D.batch_size})",
        values.batch_size,
        "N",
    ),
    Flag(
        "--sync-interval",
        f"anti-entropy period per peer (default {_D.sync_interval:g};"
        " x peers/8 past 8 peers, at most 4x)",
        values.positive_seconds,
        "SECONDS",
    ),
    Flag(
        "--initial-ops",
        "workload generator: operations made at start",
        values.non_negative_int,
        "N",
    ),
    Flag(
        "--op-interval",
        "workload generator: seconds between bursts",
        values.positive_seconds,
        "S",
    ),
    Flag(
        "--ops-per-interval",
        "workload generator: operations per burst",
        values.positive_int,
        "K",
    ),
    Flag("--seed", "workload generator: random seed", values.integer, "N"),
    Flag(
        "--api-token",
        "bearer token for the API; required when it is not on loopback",
        values.api_token,
        "TOKEN",
    ),
    Flag(
        "--allow-peer",
        "closed network: accept only these peers (repeatable)",
        values.peer_id,
        "PEER_ID",
        repeatable=True,
    ),
    Flag(
        "--allow-file",
        "closed network: file of peer ids, one per line, # comments",
        Path,
        "PATH",
    ),
    Flag(
        "--max-store-mb",
        "past this database size in MiB, refuse other origins' entries (own writes go on;"
        " default: no limit)",
        values.store_megabytes,
        "N",
    ),
    Flag(
        "--new-origins-per-hour",
        "origins new to us that one peer may introduce per hour, after a first burst of as"
        f" many (default {_D.new_origins_per_hour}; 0: no limit, e.g. for a network with"
        " many thousands of authors)",
        values.non_negative_int,
        "N",
    ),
    Flag(
        "--relay",
        "circuit relay /ip4/HOST/tcp/PORT/p2p/RELAY_ID (`p2psync relay`): reserve a slot there"
        " and meet this network's other nodes through it (repeatable)",
        values.peer_multiaddr,
        "MULTIADDR",
        repeatable=True,
    ),
    Flag(
        "--hole-punch",
        "with --relay: try DCUtR hole punching to turn relayed connections direct"
        " (experimental, see docs/OPERATIONS.md)",
    ),
    Flag("--no-repl", "do not read commands from stdin"),
    Flag(
        "--log-level",
        f"one of {', '.join(values.LOG_LEVELS)} (default {_D.log_level})",
        values.log_level,
        "LEVEL",
    ),
)

RELAY_PORT = 4001  # `p2psync relay` listens here unless told: nodes name it in --relay
_RUN_FLAG = {flag.name: flag for flag in RUN_FLAGS}
RELAY_FLAGS = (
    Flag("--host", "listen address (default 0.0.0.0: all interfaces)", values.ip_address, "IP"),
    Flag("--port", f"listen port (default {RELAY_PORT})", values.port, "N"),
    Flag(
        "--allow-peer",
        "serve only these peers (repeatable; default: any peer)",
        values.peer_id,
        "PEER_ID",
        repeatable=True,
    ),
    _RUN_FLAG["--allow-file"],
    _RUN_FLAG["--log-level"],
)

# command -> its flags, location flags first (the environment is read in this order)
COMMAND_FLAGS: dict[str, tuple[Flag, ...]] = {
    "run": LOCATION_FLAGS + RUN_FLAGS,
    "id": LOCATION_FLAGS,
    "backup": LOCATION_FLAGS,
    "restore": LOCATION_FLAGS,
    "relay": RELAY_FLAGS,
}

# command -> its positional arguments: (dest, help); converted like --data-dir
COMMAND_ARGUMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "backup": (("path", "new directory for the backup (must not exist, or be empty)"),),
    "restore": (("path", "a directory written by `p2psync backup`"),),
}


# --- the parser ----------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The parser; ``options.command`` is the command name, or None if none was given."""
    parser = _Parser(
        prog=PROG,
        description="Peer-to-peer recipe book. Every flag can also be set as P2PSYNC_<FLAG>, "
        "e.g. P2PSYNC_API_PORT=8080 or P2PSYNC_NO_MDNS=1; the command line wins.",
    )
    parser.add_argument(
        "--version", action="version", version=f"{PROG} {version()} (protocol {PROTOCOL_VERSION})"
    )
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    helps = {
        "run": "run a node (stdin is a command prompt)",
        "id": "print this node's peer id",
        "backup": "copy a node's database and identity to PATH (works while it runs)",
        "restore": "replace a stopped node's database and identity by the backup in PATH",
        "relay": "run a circuit relay and rendezvous point on a public host (holds no recipes)",
    }
    for command, flags in COMMAND_FLAGS.items():
        sub = commands.add_parser(command, help=helps[command])
        sub.set_defaults(command=command)
        for dest, argument_help in COMMAND_ARGUMENTS.get(command, ()):
            sub.add_argument(dest, type=values.data_dir, metavar=dest.upper(), help=argument_help)
        location = sub.add_mutually_exclusive_group()
        for flag in flags:
            flag.add_to(location.add_argument if flag in LOCATION_FLAGS else sub.add_argument)
    return parser


# --- the environment -------------------------------------------------------------


def apply_environment(options: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill every flag the command line left unset from its P2PSYNC_* variable."""
    location_on_command_line = (
        getattr(options, "profile", None) is not None
        or getattr(options, "data_dir", None) is not None
    )
    env_location = [
        flag.env_name for flag in LOCATION_FLAGS if environ.get(flag.env_name, "").strip()
    ]
    has_location = LOCATION_FLAGS[0] in COMMAND_FLAGS[options.command]
    if has_location and not location_on_command_line and len(env_location) > 1:
        raise UsageError(f"{' and '.join(env_location)} are mutually exclusive; set only one")

    for flag in COMMAND_FLAGS[options.command]:
        if location_on_command_line and flag in LOCATION_FLAGS:
            continue
        if getattr(options, flag.dest) is not None:
            continue
        raw = environ.get(flag.env_name, "").strip()
        if raw:
            setattr(options, flag.dest, flag.from_environment(raw))


# --- options -> NodeConfig fields ------------------------------------------------


def node_settings(options: argparse.Namespace) -> dict[str, Any]:
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
        "max_store_mb": options.max_store_mb,
        "new_origins_per_hour": options.new_origins_per_hour,
    }
    settings = {name: value for name, value in settings.items() if value is not None}
    settings["peers"] = tuple(dict.fromkeys(options.peer or ()))
    settings["relays"] = tuple(dict.fromkeys(options.relay or ()))
    settings["hole_punch"] = bool(options.hole_punch)
    settings["mdns"] = not options.no_mdns
    settings["repl"] = not options.no_repl
    allowed = set(options.allow_peer or ())
    if options.allow_file is not None:
        allowed |= read_allow_file(options.allow_file)
    settings["allow_peers"] = frozenset(allowed)
    defaults = {field.name: getattr(_CONFIG_DEFAULTS, field.name) for field in fields(NodeConfig)}
    merged = {**defaults, **settings}

    if merged["api_token"] is None and not is_loopback(merged["api_host"]):
        raise UsageError(
            f"--api-host {merged['api_host']} is reachable from other machines; "
            "pass --api-token TOKEN to protect the API"
        )
    api_port, metrics_port = merged["api_port"], merged["metrics_port"]
    if api_port and metrics_port and api_port == metrics_port:
        raise UsageError(f"--metrics-port and --api-port are both {api_port}; pick two ports")
    location_fields = ("data_dir", "profile", "data_root")
    return {name: value for name, value in merged.items() if name not in location_fields}


def read_allow_file(path: Path) -> set[str]:
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
            peer_ids.add(values.peer_id(peer_id))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--allow-file {path}:{line_number}: {exc}") from exc
    return peer_ids
