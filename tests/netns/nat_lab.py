"""Two homes behind NAT routers and a public network, made of namespaces.

Layout (every name is ``<prefix>-<pid>-<n>-<role>``)::

    inet     the "internet": bridge br0, ports relay, rA, rB, pub
    relay    eth0 203.0.113.10/24                      (public, the relay)
    pub      eth0 203.0.113.20/24                      (public, a stranger)
    rA       wan0 203.0.113.1/24, lan0 192.168.1.1/24  (home A's router)
    hA       eth0 192.168.1.2/24, default via 192.168.1.1
    rB       wan0 203.0.113.2/24, lan0 192.168.2.1/24  (home B's router)
    hB       eth0 192.168.2.2/24, default via 192.168.2.1

Each router forwards, MASQUERADEs what leaves its WAN, and like a home
router drops every connection the WAN side starts (FORWARD policy DROP,
only ESTABLISHED,RELATED back in; a SYN to the router itself is dropped
too, no RST). Nothing is made in the root namespace:
each veth is created inside a namespace with its peer moved straight into
the other. Everything is removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.netns.lab import _run, delete_namespaces, kill_all

PUBLIC = "203.0.113"
RELAY_IP = f"{PUBLIC}.10"
PUBLIC_HOST_IP = f"{PUBLIC}.20"
HOMES = {"A": ("1", "192.168.1"), "B": ("2", "192.168.2")}  # home -> (WAN last octet, LAN /24)
_counter = itertools.count()


def iptables_with_nat() -> str | None:
    """The first iptables binary that has a nat table here, or None."""
    for name in ("iptables", "iptables-nft", "iptables-legacy"):
        path = shutil.which(name)
        if path is None:
            continue
        if _run([path, "-w", "5", "-t", "nat", "-S"], check=False).returncode == 0:
            return path
    return None


class NatLab:
    def __init__(self, prefix: str) -> None:
        base = f"{prefix}-{os.getpid()}-{next(_counter)}"
        roles = ("inet", "relay", "pub", "rA", "hA", "rB", "hB")
        self.ns = {role: f"{base}-{role}" for role in roles}
        self.procs: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        found = iptables_with_nat()
        if found is None:
            pytest.skip("no iptables with a nat table: cannot build the NAT routers")
        self.iptables = found

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _veth(self, ns: str, dev: str, peer_ns: str, peer_dev: str) -> None:
        _run(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer_dev,
              "netns", peer_ns])  # fmt: skip

    def _addr(self, ns: str, dev: str, cidr: str) -> None:
        _run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
        _run(["ip", "-n", ns, "link", "set", dev, "up"])

    def _on_switch(self, role: str, dev: str, cidr: str) -> None:
        inet = self.ns["inet"]
        self._veth(self.ns[role], dev, inet, role)
        _run(["ip", "-n", inet, "link", "set", role, "master", "br0"])
        _run(["ip", "-n", inet, "link", "set", role, "up"])
        self._addr(self.ns[role], dev, cidr)

    def build(self) -> None:
        for name in self.ns.values():
            self._add_ns(name)
        inet = self.ns["inet"]
        _run(["ip", "-n", inet, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", inet, "link", "set", "br0", "up"])
        self._on_switch("relay", "eth0", f"{RELAY_IP}/24")
        self._on_switch("pub", "eth0", f"{PUBLIC_HOST_IP}/24")
        for home, (wan_octet, lan) in HOMES.items():
            router, host = self.ns[f"r{home}"], self.ns[f"h{home}"]
            self._on_switch(f"r{home}", "wan0", f"{PUBLIC}.{wan_octet}/24")
            self._veth(router, "lan0", host, "eth0")
            self._addr(router, "lan0", f"{lan}.1/24")
            self._addr(host, "eth0", f"{lan}.2/24")
            _run(["ip", "-n", host, "route", "add", "default", "via", f"{lan}.1"])
            _run(["ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            ipt = ["ip", "netns", "exec", router, self.iptables, "-w", "5"]
            _run([*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE"])
            _run([*ipt, "-P", "FORWARD", "DROP"])
            _run([*ipt, "-A", "FORWARD", "-i", "lan0", "-o", "wan0", "-j", "ACCEPT"])
            _run([*ipt, "-A", "FORWARD", "-i", "wan0", "-o", "lan0", "-m", "conntrack",
                  "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"])  # fmt: skip
            # Stealth, like most home routers: a SYN from the WAN to the router
            # itself is dropped, not answered by a RST.
            _run([*ipt, "-A", "INPUT", "-i", "wan0", "-m", "conntrack", "--ctstate", "NEW",
                  "-j", "DROP"])  # fmt: skip

    def destroy(self) -> None:
        kill_all(self.procs)
        delete_namespaces(self._created)

    def exec(self, role: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside namespace ``role``; killed when the lab ends."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[role], *argv], **popen_kwargs
        )
        self.procs.append(proc)
        return proc

    def run(self, role: str, argv: Sequence[str], *, check: bool = True
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return _run(["ip", "netns", "exec", self.ns[role], *argv], check=check)

    def home_ip(self, home: str) -> str:
        return f"{HOMES[home][1]}.2"

    def wan_ip(self, home: str) -> str:
        return f"{PUBLIC}.{HOMES[home][0]}"


@contextlib.contextmanager
def nat_lab(prefix: str = "p2nat") -> Iterator[NatLab]:
    lab = NatLab(prefix)
    try:
        lab.build()
        yield lab
    finally:
        lab.destroy()
