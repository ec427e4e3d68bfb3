"""`p2psync relay`: a circuit relay and rendezvous point for a host with a public address.

It keeps one file: its identity (``<data root>/relay/identity.key``, 0600),
so that its peer id, which every node names in ``--relay``, survives a
restart. No store, no recipes (net/relay_service.py says what it runs and
what it can see). It prints the address nodes should use, one per line
on stdout, then serves until SIGINT or SIGTERM (exit code 0).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio

from p2psync.cli.logs import configure_logging
from p2psync.cli.options import RELAY_PORT, apply_environment, read_allow_file
from p2psync.node.identity import load_or_create_seed
from p2psync.node.profiles import data_root, lock_data_dir

if TYPE_CHECKING:
    from p2psync.net.relay_service import RelayPoint

log = logging.getLogger(__name__)

RELAY_DIR = "relay"  # under the data root: the relay's identity and lock
STATS_SECONDS = 300.0
QUIET_LOGGERS = ("libp2p.relay.circuit_v2.protocol", "libp2p.discovery.rendezvous.service")


def relay_command(options: argparse.Namespace, environ: Mapping[str, str]) -> int:
    apply_environment(options, environ)
    allow = set(options.allow_peer or ())
    if options.allow_file is not None:
        allow |= read_allow_file(options.allow_file)
    level = options.log_level or "WARNING"
    configure_logging(level)
    if level != "DEBUG":
        # Both log every stream a client closes first as an ERROR with an empty
        # message ("Error handling stream from X: "): news to nobody.
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    host = options.host or "0.0.0.0"
    port = RELAY_PORT if options.port is None else options.port
    lock = lock_data_dir(data_root(environ) / RELAY_DIR)
    try:
        seed = load_or_create_seed(lock.data_dir)
        code: int = trio.run(functools.partial(serve_relay, seed, host, port, frozenset(allow)))
        return code
    finally:
        lock.release()


async def serve_relay(seed: bytes, host: str, port: int, allow: frozenset[str]) -> int:
    from p2psync.net.relay_service import open_relay  # libp2p loads only here

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_relay(seed, host, port, allow=allow) as relay:
            addrs = relay.listen_addrs()
            if not addrs:
                print(f"p2psync: error: cannot listen on {host}:{port}", file=sys.stderr)
                return 1
            who = f"{len(allow)} allowed peer(s)" if allow else "any peer"
            print(f"p2psync relay {relay.peer_id} serving {who}; nodes use:", flush=True)
            for addr in addrs:
                print(f"  --relay {addr}", flush=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_report, relay)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
    return 0


async def _report(relay: RelayPoint) -> None:
    """A line of counts now and then, so an operator sees it is in use."""
    while True:
        await trio.sleep(STATS_SECONDS)
        counts = relay.counts
        log.info(
            "relay: %d reservations, %d registrations, %d refused peers,"
            " %d reservations refused (per address), %d circuits refused (per pair),"
            " %d reservations freed by a disconnect",
            relay.reservations(),
            relay.registrations(),
            counts.refused_peers,
            counts.refused_reservations,
            counts.refused_circuits,
            counts.freed_reservations,
        )
