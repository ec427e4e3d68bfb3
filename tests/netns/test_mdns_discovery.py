"""mDNS discovery across a namespace lab: every multicast stays inside it.

Each probe (tests/netns/mdns_probe.py) runs under ``ip netns exec`` and first
proves it is inside its namespace (/proc/self/ns/net == /run/netns/NAME),
refusing to start otherwise. Needs root; skips cleanly without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns.lab import Lab, RootMdnsSniffer, list_netns, netns_lab, require_netns

pytestmark = pytest.mark.netns

PROBE = str(Path(__file__).with_name("mdns_probe.py"))
RUN_SECONDS = 4.0  # each probe serves this long after registering
WAIT = 25.0  # hard bound on any probe process
HEAL_AT = 4.0  # seconds the partition lasts in the heal test


def _peer(i: int) -> str:
    # shaped like an Ed25519 peer id; the probes never dial
    return f"12D3KooWNetnsProbe{i}" + "x" * 34


def _start_serve(
    lab: Lab,
    i: int,
    network: str,
    *,
    listen_host: str,
    iface: bool,
    seconds: float = RUN_SECONDS,
    refresh: float = 30.0,
) -> Any:
    pid = _peer(i)
    argv = [
        sys.executable, PROBE, "serve", "--netns", lab.netns(i), "--peer-id", pid,
        "--addr", f"/ip4/{listen_host}/tcp/{4100 + i}/p2p/{pid}",
        "--addr", f"/ip4/127.0.0.1/tcp/{4100 + i}/p2p/{pid}",
        "--network", network, "--seconds", str(seconds), "--refresh", str(refresh),
    ]  # fmt: skip
    if iface:
        argv += ["--interface-ip", lab.ip(i)]
    return lab.exec(i, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc: Any) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=WAIT)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"probe failed ({proc.returncode}):\n{out}\n{err[-3000:]}"
    return events


def _check_common(events: list[dict[str, Any]], netns: str) -> None:
    first = events[0]
    assert first["event"] == "netns" and first["ok"] and first["netns"] == netns, first
    done = [e for e in events if e["event"] == "done"]
    assert done, events
    leaked = [t for t in done[0]["threads"] if t != "MainThread" and not t.startswith("Trio ")]
    assert not leaked, f"threads left after serve_mdns returned: {leaked}"
    for e in events:
        if e["event"] == "found":
            assert e["thread"] == "MainThread", e  # on_found runs in the trio thread


def _found(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {e["peer_id"]: e["addrs"] for e in events if e["event"] == "found"}


def _no_lab_left(lab: Lab) -> None:
    left = [n for n in list_netns() if n in (lab.switch, *lab.hosts)]
    assert not left, f"namespaces left behind: {left}"


def test_same_network_peers_find_each_other_other_network_stays_apart() -> None:
    require_netns()
    with RootMdnsSniffer() as sniff, netns_lab(3, "mdns") as lab:
        procs = [
            _start_serve(lab, 0, "a", listen_host=lab.ip(0), iface=True),
            # 0.0.0.0 listen address + InterfaceChoice.All: expands to eth0's IP
            _start_serve(lab, 1, "a", listen_host="0.0.0.0", iface=False),
            _start_serve(lab, 2, "b", listen_host=lab.ip(2), iface=True),
        ]
        results = [_collect(p) for p in procs]
    _no_lab_left(lab)
    assert sniff.count in (0, None), f"{sniff.count} mDNS frames seen in the root namespace"

    for i, events in enumerate(results):
        _check_common(events, lab.hosts[i])
    found = [_found(events) for events in results]
    assert found[0] == {_peer(1): [f"/ip4/{lab.ip(1)}/tcp/4101/p2p/{_peer(1)}"]}
    assert found[1] == {_peer(0): [f"/ip4/{lab.ip(0)}/tcp/4100/p2p/{_peer(0)}"]}
    assert found[2] == {}, "network b must not see network a"
    for events in results[:2]:
        started = next(e["t"] for e in events if e["event"] == "started")
        first = min(e["t"] for e in events if e["event"] == "found")
        assert first <= started + 3.0, f"discovery too slow: {events}"
        for e in events:
            for addr in e.get("addrs", []):
                assert addr.startswith("/ip4/10.77.0."), addr
                assert "/0.0.0.0/" not in addr and "/127.0.0.1/" not in addr


def test_ptr_txt_only_responder_is_discovered_by_dnsaddr() -> None:
    """A js-libp2p-style answer (PTR + TXT dnsaddr=..., no SRV, no A) is enough."""
    require_netns()
    js_id = "12D3KooWJsLikeResponder" + "y" * 29
    good = f"/ip4/10.77.0.1/tcp/4321/p2p/{js_id}"
    with netns_lab(2, "mdnsptr") as lab:
        responder_argv = [
            sys.executable, PROBE, "ptr-txt", "--netns", lab.netns(0),
            "--interface-ip", lab.ip(0), "--network", "a",
            "--seconds", str(RUN_SECONDS + 3),
            "--instance", "rAnd0mJsInstance",
            "--txt", "network=a",
            "--txt", f"dnsaddr={good}",
            "--txt", f"dnsaddr=/ip4/127.0.0.1/tcp/4321/p2p/{js_id}",  # must be dropped
            "--txt", f"dnsaddr=/ip4/0.0.0.0/tcp/4321/p2p/{js_id}",  # must be dropped
            "--txt", "dnsaddr=/ip4/10.77.0.9/tcp/1/p2p/12D3KooWSomeoneElse",  # other peer
        ]  # fmt: skip
        responder = lab.exec(
            0, responder_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        browser = _start_serve(lab, 1, "a", listen_host=lab.ip(1), iface=True)
        events = _collect(browser)
        responder_events = _collect(responder)
    _no_lab_left(lab)

    _check_common(events, lab.hosts[1])
    assert responder_events[0]["ok"], responder_events
    assert _found(events) == {js_id: [good]}, events


def test_peers_meet_after_partition_heals() -> None:
    """Start apart (switch port down), heal: periodic re-announce brings them together."""
    require_netns()
    with netns_lab(2, "mdnsheal") as lab:
        lab.partition(1)
        t0 = time.monotonic()
        procs = [
            _start_serve(lab, i, "a", listen_host=lab.ip(i), iface=True,
                         seconds=HEAL_AT + 5.0, refresh=1.0)
            for i in range(2)
        ]  # fmt: skip
        time.sleep(HEAL_AT)
        lab.heal(1)
        healed = time.monotonic() - t0
        results = [_collect(p) for p in procs]
    _no_lab_left(lab)

    for i, events in enumerate(results):
        _check_common(events, lab.hosts[i])
        other = 1 - i
        assert _found(events) == {
            _peer(other): [f"/ip4/{lab.ip(other)}/tcp/{4100 + other}/p2p/{_peer(other)}"]
        }
        first = min(e["t"] for e in events if e["event"] == "found")
        # probe clocks start a little after t0: allow some slack both ways
        assert first >= healed - 0.5, f"found while partitioned: {events}"
        assert first <= healed + 4.0, f"not found soon enough after heal at {healed:.1f}s: {events}"
