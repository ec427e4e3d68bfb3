"""Real nodes in a namespace lab under network faults: loss, delay, partition.

SPEC §6.1 (convergence whatever the loss or delay on the way, entries relayed
to nodes that never met their origin) on a real network stack. No netem on
this kernel (DESIGN.md, "Verified on these machines"): loss is iptables
`statistic` DROP inside the host's namespace (lab.loss), delay is a userspace
TCP proxy (delay_proxy.py) in front of the node, partition is the switch-side
port going down (lab.partition). --no-mdns everywhere and static --peer
addresses: the topology is exactly the one each test draws. Root only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.netns.lab import WRITE_SCRIPT, Lab, netns_lab, require_netns
from tests.netns.nodes import API_PORT, api, wait_until

pytestmark = pytest.mark.netns

PROXY_SCRIPT = Path(__file__).with_name("delay_proxy.py")


def start_node(lab: Lab, host: int, tmp: Path, *args: str) -> subprocess.Popen[Any]:
    env = dict(os.environ)
    env["P2PSYNC_NO_MDNS"] = "1"
    env["P2PSYNC_DATA_ROOT"] = str(tmp / f"root{host}")
    env.pop("P2PSYNC_API_PORT", None)
    log = (tmp / f"node{host}.log").open("w")
    return lab.exec(
        host,
        [sys.executable, "-m", "p2psync", "run", "--no-repl", "--no-mdns",
         "--api-port", str(API_PORT), "--data-dir", str(tmp / f"node{host}"),
         "--sync-interval", "2", *args],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def start_writers(lab: Lab, counts: dict[int, int], pause: float) -> list[subprocess.Popen[str]]:
    """POST counts[host] recipes on each host at once; finish() collects them."""
    url = f"http://127.0.0.1:{API_PORT}/api/v0/recipes"
    return [
        lab.exec(
            host,
            [sys.executable, "-c", WRITE_SCRIPT, url, str(n), f"h{host}", str(pause)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for host, n in counts.items()
    ]


def finish(writers: list[subprocess.Popen[str]], counts: dict[int, int]) -> None:
    for (host, n), proc in zip(counts.items(), writers, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"writer on host {host} failed: {err[-2000:]}"
        assert int(out.strip()) == n, f"host {host}: {out.strip()} of {n} acknowledged"


def statuses(lab: Lab, hosts: range | list[int]) -> list[dict[str, Any]]:
    return [api(lab, i, "/api/v0/status") for i in hosts]


def same_book(lab: Lab, hosts: range | list[int], entries: int) -> Callable[[], bool]:
    def check() -> bool:
        seen = statuses(lab, hosts)
        return all(s["entries"] == entries for s in seen) and len({s["digest"] for s in seen}) == 1

    return check


def connected_ids(lab: Lab, host: int) -> set[str]:
    return {p["peer_id"] for p in api(lab, host, "/api/v0/peers") if p["connected"]}


def test_loss_and_delay_on_one_node_still_converge(tmp_path: Path) -> None:
    """A star around host 2, whose every packet may be lost (20 %, in and out)
    and whose every byte waits 100 ms each way; hosts 0 and 1 never meet, so
    each one's entries reach the other only through the faulty node."""
    require_netns()
    node_port, proxy_port = 4012, 4100
    counts = {0: 170, 1: 170, 2: 160}
    total = sum(counts.values())
    with netns_lab(3, "p2pf") as lab:
        lab.loss(2, 0.2)
        # Node 2 listens on its loopback only: reachable solely through the proxy.
        start_node(lab, 2, tmp_path, "--host", "127.0.0.1", "--port", str(node_port))
        wait_until(lambda: bool(api(lab, 2, "/api/v0/status")), 60, "node 2's API", tmp_path)
        node2 = api(lab, 2, "/api/v0/status")["peer_id"]
        proxy_log = (tmp_path / "proxy.log").open("w")
        proxy = lab.exec(
            2, [sys.executable, str(PROXY_SCRIPT), "--listen", f"{lab.ip(2)}:{proxy_port}",
                "--target", f"127.0.0.1:{node_port}", "--delay-ms", "100"],
            stdout=subprocess.PIPE, stderr=proxy_log, text=True,
        )  # fmt: skip
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        via_proxy = f"/ip4/{lab.ip(2)}/tcp/{proxy_port}/p2p/{node2}"
        # Hosts 0 and 1 listen on loopback too: nobody can dial them, node 2 included.
        for host in (0, 1):
            start_node(lab, host, tmp_path, "--host", "127.0.0.1", "--port", str(4010 + host),
                       "--peer", via_proxy)  # fmt: skip
        wait_until(
            lambda: all(node2 in connected_ids(lab, i) for i in (0, 1)),
            60, "hosts 0 and 1 to reach node 2 through the proxy", tmp_path,
        )  # fmt: skip

        writers = start_writers(lab, counts, pause=0.05)
        finish(writers, counts)
        took = wait_until(
            same_book(lab, range(3), total), 120, f"{total} entries everywhere", tmp_path
        )
        print(f"converged {took:.1f} s after the last write")

        ids = [s["peer_id"] for s in statuses(lab, range(3))]
        # The faults were real: packets were dropped and the proxy carried the traffic.
        dropped = lab.dropped(2)
        print(f"{dropped} packets dropped on host 2")
        assert dropped > 0, "the loss rules dropped nothing"
        opened = [line for line in (tmp_path / "proxy.log").read_text().splitlines()
                  if line.startswith("open ")]  # fmt: skip
        assert len(opened) >= 2, opened
        # The topology held: 0 and 1 never met; node 2 dialed nobody.
        assert ids[1] not in connected_ids(lab, 0) and ids[0] not in connected_ids(lab, 1)
        assert all(p["source"] == "inbound" for p in api(lab, 2, "/api/v0/peers"))
        for host in (0, 1):
            other = ids[1 - host]
            held = api(lab, host, "/api/v0/sync")["self"]
            assert held[other]["held"] == counts[1 - host], held
        peer2 = next(p for p in api(lab, 0, "/api/v0/peers") if p["peer_id"] == node2)
        assert peer2["syncs_ok"] >= 1
        # A sync round is at least one request and its answer: 200 ms through the proxy.
        assert peer2["avg_sync_ms"] is not None and peer2["avg_sync_ms"] >= 200, peer2
        lab.loss(2, 0)
        proxy_log.close()


def test_partition_heal(tmp_path: Path) -> None:
    """A line A - B - C; B is cut off while all three write; after healing,
    everything converges, A's entries reaching C through B."""
    require_netns()
    a, b, c = 0, 1, 2
    port_b = 4001
    before = {a: 50, b: 20, c: 30}
    during = {a: 40, b: 20, c: 30}
    with netns_lab(3, "p2pp") as lab:
        start_node(lab, b, tmp_path, "--host", lab.ip(b), "--port", str(port_b),
                   "--initial-ops", str(before[b]), "--seed", "2")  # fmt: skip
        wait_until(lambda: bool(api(lab, b, "/api/v0/status")), 60, "B's API", tmp_path)
        b_id = api(lab, b, "/api/v0/status")["peer_id"]
        to_b = f"/ip4/{lab.ip(b)}/tcp/{port_b}/p2p/{b_id}"
        start_node(lab, a, tmp_path, "--host", lab.ip(a), "--peer", to_b,
                   "--initial-ops", str(before[a]), "--seed", "1")  # fmt: skip
        start_node(lab, c, tmp_path, "--host", lab.ip(c), "--peer", to_b,
                   "--initial-ops", str(before[c]), "--seed", "3")  # fmt: skip
        wait_until(same_book(lab, range(3), sum(before.values())), 60, "first sync", tmp_path)
        a_id, _, c_id = (s["peer_id"] for s in statuses(lab, range(3)))

        lab.partition(b)
        # Half the writes while the links still look alive (live messages
        # vanish into the cut), the rest once the health checks gave up.
        half = {host: n // 2 for host, n in during.items()}
        finish(start_writers(lab, half, pause=0.01), half)
        wait_until(
            lambda: not connected_ids(lab, a) and not connected_ids(lab, c),
            30, "A and C to notice B is gone", tmp_path,
        )  # fmt: skip
        rest = {host: n - half[host] for host, n in during.items()}
        finish(start_writers(lab, rest, pause=0.01), rest)
        time.sleep(2)
        # Nothing crossed the cut.
        cut = {i: s["entries"] for i, s in zip(range(3), statuses(lab, range(3)), strict=True)}
        for host in (a, b, c):
            assert cut[host] == sum(before.values()) + during[host], cut

        lab.heal(b)
        total = sum(before.values()) + sum(during.values())
        took = wait_until(same_book(lab, range(3), total), 120, "convergence after heal", tmp_path)
        print(f"converged {took:.1f} s after healing")
        held_at_c = api(lab, c, "/api/v0/sync")["self"]
        assert held_at_c[a_id]["held"] == before[a] + during[a], held_at_c
        held_at_a = api(lab, a, "/api/v0/sync")["self"]
        assert held_at_a[c_id]["held"] == before[c] + during[c], held_at_a
        # A and C never met: A's entries at C came through B.
        assert c_id not in connected_ids(lab, a) and a_id not in connected_ids(lab, c)
