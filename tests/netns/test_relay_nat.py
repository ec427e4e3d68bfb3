"""Two homes behind real NAT meet through `p2psync relay` (issue 15, "Beyond the LAN").

tests/netns/nat_lab.py builds the network: home A and home B each behind a
router namespace doing iptables MASQUERADE and dropping what the WAN side
starts, the relay and a stranger on the public side. The test proves the
homes cannot dial each other, then that their nodes converge through the
relay (entries both ways, equal digests), go on converging after the relay
restarts, and that two strangers learn nothing: one allowed by the relay
but in another --network, one in our network but not on the relay's
allow list. Root only; --no-mdns everywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2psync.core.ids import peer_id_from_seed
from p2psync.node.identity import load_or_create_seed
from tests.netns.lab import WRITE_SCRIPT, require_netns
from tests.netns.nat_lab import PUBLIC_HOST_IP, RELAY_IP, NatLab, nat_lab

pytestmark = pytest.mark.netns

API_PORT = 18180
NODE_PORT = 4101
RELAY_PORT = 4001
_GET = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)
# Prints "open" if a TCP connection to ip:port succeeds within 3 s, else why not.
_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except OSError as exc:
    print(type(exc).__name__)
"""


def api(lab: NatLab, role: str, path: str) -> Any:
    url = f"http://127.0.0.1:{API_PORT}{path}"
    return json.loads(lab.run(role, [sys.executable, "-c", _GET, url]).stdout)


def metrics(lab: NatLab, role: str) -> str:
    return lab.run(
        role, [sys.executable, "-c", _GET, f"http://127.0.0.1:{API_PORT}/metrics"]
    ).stdout


def write(lab: NatLab, role: str, n: int, tag: str) -> None:
    url = f"http://127.0.0.1:{API_PORT}/api/v0/recipes"
    out = lab.run(role, [sys.executable, "-c", WRITE_SCRIPT, url, str(n), tag, "0"]).stdout
    assert out.strip() == str(n)


def probe(lab: NatLab, role: str, ip: str, port: int) -> str:
    return lab.run(role, [sys.executable, "-c", _PROBE, ip, str(port)]).stdout.strip()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, logs: Path) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if condition():
                return
        except (RuntimeError, subprocess.CalledProcessError, json.JSONDecodeError):
            pass  # the API is not up yet
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


def _env(tmp: Path, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env["P2PSYNC_NO_MDNS"] = "1"
    env["P2PSYNC_DATA_ROOT"] = str(tmp / f"root-{name}")
    for key in ("P2PSYNC_API_PORT", "P2PSYNC_RELAY", "P2PSYNC_NETWORK"):
        env.pop(key, None)
    return env


def start_relay(lab: NatLab, tmp: Path, allow: list[str], run: int) -> subprocess.Popen[Any]:
    log = (tmp / f"relay{run}.log").open("w")
    allow_args = [arg for peer in allow for arg in ("--allow-peer", peer)]
    return lab.exec(
        "relay",
        [sys.executable, "-m", "p2psync", "relay", "--port", str(RELAY_PORT), *allow_args],
        env=_env(tmp, "relay"), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def start_node(lab: NatLab, role: str, tmp: Path, relay: str, *args: str) -> subprocess.Popen[Any]:
    log = (tmp / f"{role}.log").open("w")
    return lab.exec(
        role,
        [sys.executable, "-m", "p2psync", "run", "--no-repl", "--no-mdns", "--log-level", "INFO",
         "--api-port", str(API_PORT), "--port", str(NODE_PORT), "--data-dir", str(tmp / role),
         "--sync-interval", "2", "--relay", relay, *args],
        env=_env(tmp, role), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def identity(path: Path) -> str:
    return peer_id_from_seed(load_or_create_seed(path))


def relay_peers(lab: NatLab, role: str) -> list[dict[str, Any]]:
    return [p for p in api(lab, role, "/api/v0/peers") if p["connected"]]


def converged(lab: NatLab, entries: int) -> bool:
    a, b = api(lab, "hA", "/api/v0/status"), api(lab, "hB", "/api/v0/status")
    return a["entries"] == b["entries"] == entries and a["digest"] == b["digest"]


def test_two_homes_behind_nat_sync_through_the_relay(tmp_path: Path) -> None:
    require_netns()
    with nat_lab() as lab:
        node_a, node_b = identity(tmp_path / "hA"), identity(tmp_path / "hB")
        other_net = identity(tmp_path / "pub-other")  # allowed, but in another network
        relay_id = identity(tmp_path / "root-relay" / "relay")
        relay_addr = f"/ip4/{RELAY_IP}/tcp/{RELAY_PORT}/p2p/{relay_id}"
        relay = start_relay(lab, tmp_path, [node_a, node_b, other_net], 1)
        start_node(lab, "hA", tmp_path, relay_addr)
        start_node(lab, "hB", tmp_path, relay_addr)
        wait_until(lambda: probe(lab, "hA", RELAY_IP, RELAY_PORT) == "open", 30, "relay", tmp_path)
        wait_until(lambda: api(lab, "hB", "/api/v0/status")["peer_id"] == node_b, 30, "B",
                   tmp_path)  # fmt: skip

        # The homes cannot reach each other: no route to the other LAN, and
        # the other router drops what its WAN side starts.
        assert probe(lab, "hA", lab.home_ip("B"), NODE_PORT) != "open"
        assert probe(lab, "hA", lab.wan_ip("B"), NODE_PORT) != "open"
        assert probe(lab, "hB", lab.wan_ip("A"), NODE_PORT) != "open"
        assert probe(lab, "hB", lab.home_ip("B"), NODE_PORT) == "open"  # the node does listen

        def meet(role: str, other: str) -> bool:
            peers = relay_peers(lab, role)
            return [(p["peer_id"], p["source"], p["relayed"]) for p in peers] == [
                (other, "relay", True)
            ]

        wait_until(lambda: meet("hA", node_b) and meet("hB", node_a), 60, "meeting", tmp_path)
        write(lab, "hA", 25, "from A")
        write(lab, "hB", 25, "from B")
        wait_until(lambda: converged(lab, 50), 60, "convergence through the relay", tmp_path)
        assert api(lab, "hA", "/api/v0/status")["recipes"] == 50

        # The relay restarts: the circuits die, the nodes reserve and register again.
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=20) == 0
        write(lab, "hA", 5, "A while the relay is down")
        start_relay(lab, tmp_path, [node_a, node_b, other_net], 2)
        write(lab, "hB", 5, "B after the restart")
        wait_until(lambda: converged(lab, 60), 90, "convergence after the restart", tmp_path)
        for role in ("hA", "hB"):
            text = metrics(lab, role)
            assert 'p2psync_relay_events_total{event="lost"}' in text
            assert _counter(text, 'p2psync_relay_events_total{event="reserved"}') >= 2

        # Strangers learn nothing: another network (allowed by the relay), and
        # our network's name without a place on the allow list.
        stranger = start_node(lab, "pub", tmp_path, relay_addr, "--network", "other",
                              "--data-dir", str(tmp_path / "pub-other"))  # fmt: skip
        time.sleep(15)
        status = api(lab, "pub", "/api/v0/status")
        assert (status["peers"], status["entries"]) == (0, 0)
        assert _counter(metrics(lab, "pub"), 'p2psync_relay_events_total{event="reserved"}') >= 1
        stranger.send_signal(signal.SIGTERM)
        assert stranger.wait(timeout=20) == 0
        start_node(lab, "pub", tmp_path, relay_addr, "--data-dir", str(tmp_path / "pub-stranger"))
        wait_until(
            lambda: _counter(metrics(lab, "pub"), 'p2psync_relay_events_total{event="unreachable"}')
            + _counter(metrics(lab, "pub"), 'p2psync_relay_events_total{event="refused"}') >= 1,
            60, "the stranger refused", tmp_path,
        )  # fmt: skip
        status = api(lab, "pub", "/api/v0/status")
        assert (status["peers"], status["entries"]) == (0, 0)
        for role, other in (("hA", node_b), ("hB", node_a)):
            assert [p["peer_id"] for p in api(lab, role, "/api/v0/peers")] == [other]
        assert PUBLIC_HOST_IP not in json.dumps(api(lab, "hA", "/api/v0/peers"))


def _counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
