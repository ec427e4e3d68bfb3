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
    # shaped like an Ed25519 peer id (base58 text); the probes never dial
    return "12D3KooWNetnsProbe" + "abcdefgh"[i] + "x" * 33


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


def _start_responder(lab: Lab, i: int, instance: str, txt: list[str], *extra: str) -> Any:
    argv = [
        sys.executable, PROBE, "ptr-txt", "--netns", lab.netns(i),
        "--interface-ip", lab.ip(i), "--seconds", str(RUN_SECONDS + 3),
        "--instance", instance, *extra,
    ]  # fmt: skip
    for item in txt:
        argv += ["--txt", item]
    return lab.exec(i, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_raw_txt_records_are_read_from_answers_and_additionals() -> None:
    """PTR + TXT only (no SRV, no A) is enough, in both shapes seen in the wild:
    js-libp2p's (one TXT record per dnsaddr, as answers, no p2psync hint) and
    the spec's (one TXT record with every string, as an additional). A hint
    naming another p2psync network keeps its peer out without a dial."""
    require_netns()
    js_id = "12D3KooWJsLikeResponder" + "y" * 29
    spec_id = "12D3KooWSpecLikeResponder" + "z" * 27
    other_id = "12D3KooWOtherNetwork" + "w" * 32
    js_addrs = [f"/ip4/10.77.0.1/tcp/4321/p2p/{js_id}", f"/ip4/10.77.0.1/tcp/4322/p2p/{js_id}"]
    spec_addr = f"/ip4/10.77.0.2/tcp/4400/p2p/{spec_id}"
    with RootMdnsSniffer() as sniff, netns_lab(4, "mdnsraw") as lab:
        responders = [
            _start_responder(lab, 0, "rand0mjsinstance", [
                f"dnsaddr={js_addrs[0]}",
                f"dnsaddr=/ip4/127.0.0.1/tcp/4321/p2p/{js_id}",  # loopback: dropped
                f"dnsaddr=/ip4/0.0.0.0/tcp/4321/p2p/{js_id}",  # unspecified: dropped
                "dnsaddr=/ip4/10.77.0.9/tcp/1/p2p/12D3KooWSomeoneElse",  # other peer: dropped
                f"dnsaddr=/ip4/10.77.0.1/udp/4321/quic-v1/p2p/{js_id}",  # not TCP: dropped
                f"dnsaddr={js_addrs[1]}",
            ], "--records", "each", "--section", "answers"),
            _start_responder(lab, 1, "specshapedinstance", [
                "p2psync=a", f"dnsaddr={spec_addr}",
            ], "--records", "one", "--section", "additionals"),
            _start_responder(lab, 2, "othernetworkinstance", [
                f"dnsaddr=/ip4/10.77.0.3/tcp/4500/p2p/{other_id}", "p2psync=b",
            ], "--records", "one", "--section", "answers"),
        ]  # fmt: skip
        browser = _start_serve(lab, 3, "a", listen_host=lab.ip(3), iface=True)
        events = _collect(browser)
        responder_events = [_collect(r) for r in responders]
    _no_lab_left(lab)
    assert sniff.count in (0, None), f"{sniff.count} mDNS frames seen in the root namespace"

    _check_common(events, lab.hosts[3])
    for r in responder_events:
        assert r[0]["ok"], r
    assert _found(events) == {js_id: js_addrs, spec_id: [spec_addr]}, events


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
