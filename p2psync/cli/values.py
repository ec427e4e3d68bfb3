"""Value checks for flags and P2PSYNC_* variables, one function per kind of value.

Each takes the text as typed and returns the value or raises
``argparse.ArgumentTypeError`` with a one-line reason; argparse turns that into
``argument --x: <reason>``, the environment merge into ``P2PSYNC_X: <reason>``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from pathlib import Path

from p2psync.core.ids import InvalidPeerId, public_key_from_peer_id
from p2psync.net.addresses import parse_tcp_peer_addr
from p2psync.net.topics import check_network_name
from p2psync.node.profiles import InvalidProfileName, check_profile_name

MAX_BATCH_SIZE = 10_000
MIB = 1 << 20
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _bounded_int(text: str, low: int, high: int | None, what: str) -> int:
    value = integer(text)
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise argparse.ArgumentTypeError(f"{what} must be {bounds}, got {value}")
    return value


def port(text: str) -> int:
    return _bounded_int(text, 0, 65535, "port")


def batch_size(text: str) -> int:
    return _bounded_int(text, 1, MAX_BATCH_SIZE, "batch size")


def non_negative_int(text: str) -> int:
    return _bounded_int(text, 0, None, "count")


def positive_int(text: str) -> int:
    return _bounded_int(text, 1, None, "count")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"seconds must be a positive number, got {text!r}")
    return value


def store_megabytes(text: str) -> float:
    """--max-store-mb: a positive number of MiB (1 MiB = 1048576 bytes), decimals allowed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of MiB: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"MiB must be a positive number, got {text!r}")
    if value * MIB >= 2**63:
        raise argparse.ArgumentTypeError(f"MiB must be below {2**63 // MIB}, got {text!r}")
    return value


def ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def api_host(text: str) -> str:
    if text.strip().lower() == "localhost":
        return "localhost"
    return ip_address(text)


def network_name(text: str) -> str:
    try:
        return check_network_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def profile_name(text: str) -> str:
    try:
        return check_profile_name(text)
    except InvalidProfileName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def data_dir(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return Path(text).expanduser().absolute()


def api_token(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty token")
    return text


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r}: use one of {', '.join(LOG_LEVELS)}"
        )
    return level


def peer_id(text: str) -> str:
    """An Ed25519 libp2p peer id, the only kind a p2psync node has."""
    value = text.strip()
    try:
        public_key_from_peer_id(value)
    except InvalidPeerId:
        raise argparse.ArgumentTypeError(
            f"not a p2psync peer id (an Ed25519 libp2p id, 12D3KooW...): {value!r}"
        ) from None
    return value


def peer_multiaddr(text: str) -> str:
    """A static peer: ``/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT/p2p/PEER_ID``."""
    address = text.strip()
    try:
        parsed = parse_tcp_peer_addr(address)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    peer_id(parsed.peer_id)
    return address
