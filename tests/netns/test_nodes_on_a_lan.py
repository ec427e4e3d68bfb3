"""Real nodes with mDNS on, each in its own network namespace of a test LAN.

No --peer anywhere and separate data roots (no same-host discovery): only
mDNS can bring these nodes together. Root only; skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns.lab import Lab, RootMdnsSniffer, netns_lab, require_netns
from tests.netns.nodes import API_PORT, api, wait_until

pytestmark = pytest.mark.netns


def start_node(lab: Lab, host: int, tmp: Path, *args: str) -> subprocess.Popen[Any]:
    env = dict(os.environ)
    env.pop("P2PSYNC_NO_MDNS", None)
    env["P2PSYNC_DATA_ROOT"] = str(tmp / f"root{host}")
    log = (tmp / f"node{host}.log").open("w")
    return lab.exec(
        host,
        [sys.executable, "-m", "p2psync", "run", "--no-repl", "--api-port", str(API_PORT),
         "--data-dir", str(tmp / f"node{host}"), "--sync-interval", "3", *args],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_mdns_nodes_find_each_other_and_networks_stay_apart(tmp_path: Path) -> None:
    require_netns()
    with netns_lab(4, "p2pn") as lab, RootMdnsSniffer() as sniffer:
        start_node(lab, 0, tmp_path, "--initial-ops", "60", "--seed", "1")
        start_node(lab, 1, tmp_path, "--initial-ops", "40", "--seed", "2")
        start_node(lab, 2, tmp_path)
        start_node(lab, 3, tmp_path, "--network", "other", "--initial-ops", "10", "--seed", "3")

        def converged() -> bool:
            statuses = [api(lab, i, "/api/v0/status") for i in range(3)]
            return (
                all(s["entries"] == 100 for s in statuses)
                and len({s["digest"] for s in statuses}) == 1
            )

        wait_until(converged, 60, "three mDNS nodes to converge", tmp_path)
        for i in range(3):
            status = api(lab, i, "/api/v0/status")
            assert not any("/ip4/0.0.0.0/" in a for a in status["listen_addrs"])
            peers = api(lab, i, "/api/v0/peers")
            mdns_found = {p["peer_id"] for p in peers if p["source"] in ("mdns", "inbound")}
            assert len(mdns_found) >= 1, peers
        other = api(lab, 3, "/api/v0/status")
        assert other["entries"] == 10 and other["peers"] == 0
        assert all(api(lab, i, "/api/v0/status")["entries"] == 100 for i in range(3))
        other_id = other["peer_id"]
        for i in range(3):
            assert other_id not in {p["peer_id"] for p in api(lab, i, "/api/v0/peers")}
    assert sniffer.count in (0, None), "mDNS leaked into the root namespace"


def test_a_silently_vanished_peer_is_noticed_and_rejoins(tmp_path: Path) -> None:
    require_netns()
    with netns_lab(2, "p2ph") as lab:
        start_node(lab, 0, tmp_path, "--initial-ops", "5", "--seed", "1")
        start_node(lab, 1, tmp_path)

        def connected(host: int) -> int:
            return int(api(lab, host, "/api/v0/status")["peers"])

        wait_until(lambda: connected(0) == 1 and connected(1) == 1, 60, "the pair", tmp_path)
        lab.partition(1)  # the switch port goes down: no FIN, no RST, just silence
        cut = time.monotonic()
        wait_until(lambda: connected(0) == 0, 30, "the health check to notice", tmp_path)
        noticed = time.monotonic() - cut
        assert noticed < 20, f"took {noticed:.1f} s to notice a vanished peer"
        lab.heal(1)
        wait_until(lambda: connected(0) == 1, 90, "mDNS to bring the peer back", tmp_path)
