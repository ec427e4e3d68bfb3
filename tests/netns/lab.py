"""A throw-away LAN made of Linux network namespaces, for mDNS and fault tests.

Layout (see DESIGN.md, "Verified on these machines")::

    <prefix>-<pid>-<n>-sw      switch namespace: bridge br0 (multicast snooping
                               off) with one port hI per host
    <prefix>-<pid>-<n>-hI      host namespace I: lo + eth0 (10.77.0.(I+1)/24),
                               route 224.0.0.0/4 dev eth0

Nothing is created in the root namespace: every veth pair is made from inside
its host namespace with the peer end moved straight into the switch. Every
namespace, and every process started with ``lab.exec``, is removed in
``finally`` even when building the lab or the test fails.

Usage::

    require_netns()                      # pytest.skip unless root with `ip netns`
    with netns_lab(3, "mdns") as lab, RootMdnsSniffer() as sniff:
        p = lab.exec(0, [sys.executable, "probe.py"], stdout=subprocess.PIPE)
        lab.ip(0)                        # "10.77.0.1"
        lab.partition(1); lab.heal(1)    # switch-side port down / up
        lab.loss(2, 0.2)                 # iptables statistic DROP, in and out
        lab.dropped(2)                   # packets those rules dropped so far
    assert sniff.count in (0, None)      # no mDNS leaked into the root namespace
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

SUBNET = "10.77.0"  # a /24 unlikely to clash with anything real
_counter = itertools.count()


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_available() -> str | None:
    """None if namespaces can be built here, else why not."""
    if os.geteuid() != 0:
        return "needs root to build network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not found"
    try:
        probe = _run(["ip", "netns", "list"], check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` unavailable: {exc}"
    if probe.returncode != 0:
        return f"`ip netns` unavailable: {probe.stderr.strip()}"
    return None


def require_netns() -> None:
    """pytest.skip() unless this process may build network namespaces."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)


def list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class Lab:
    def __init__(self, n_hosts: int, prefix: str) -> None:
        base = f"{prefix}-{os.getpid()}-{next(_counter)}"
        self.switch = f"{base}-sw"
        self.hosts = [f"{base}-h{i}" for i in range(n_hosts)]
        self.procs: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        # Chosen on first use of loss(): the first iptables that works here.
        self._iptables: str | None = None
        self._iptables_probed = False

    # -- building -------------------------------------------------------------
    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def build(self) -> None:
        sw = self.switch
        self._add_ns(sw)
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        for i, host in enumerate(self.hosts):
            self._add_ns(host)
            # Created inside the host namespace, peer end moved into the switch:
            # no interface ever exists in the root namespace.
            _run(["ip", "-n", host, "link", "add", "eth0", "type", "veth",
                  "peer", "name", f"h{i}", "netns", sw])  # fmt: skip
            _run(["ip", "-n", sw, "link", "set", f"h{i}", "master", "br0"])
            _run(["ip", "-n", sw, "link", "set", f"h{i}", "up"])
            _run(["ip", "-n", host, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            _run(["ip", "-n", host, "link", "set", "eth0", "up"])
            _run(["ip", "-n", host, "route", "add", "224.0.0.0/4", "dev", "eth0"])

    def destroy(self) -> None:
        kill_all(self.procs)
        delete_namespaces(self._created)

    # -- using ----------------------------------------------------------------
    def ip(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def netns(self, i: int) -> str:
        return self.hosts[i]

    def exec(self, i: int, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside host i (``ip netns exec``); killed when the lab ends."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[i], *argv], **popen_kwargs
        )
        self.procs.append(proc)
        return proc

    def run(self, i: int, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run a short command inside host i and wait for it."""
        return _run(["ip", "netns", "exec", self.hosts[i], *argv])

    def partition(self, i: int) -> None:
        """Cut host i off the switch (its own eth0 and routes stay as they are)."""
        _run(["ip", "-n", self.switch, "link", "set", f"h{i}", "down"])

    def heal(self, i: int) -> None:
        _run(["ip", "-n", self.switch, "link", "set", f"h{i}", "up"])

    @property
    def has_iptables(self) -> bool:
        return self.iptables() is not None

    def iptables(self) -> str | None:
        """The first of iptables, iptables-nft, iptables-legacy that can add a
        ``-m statistic`` DROP rule inside a host namespace, or None.

        Both backends work on the verified machines (each namespace has its own
        tables); the probe guards against a binary whose backend or match
        module this kernel lacks. Use the same one for every rule of a lab.
        """
        if self._iptables_probed:
            return self._iptables
        self._iptables_probed = True
        for name in ("iptables", "iptables-nft", "iptables-legacy"):
            path = shutil.which(name)
            if path is None:
                continue
            ns = ["ip", "netns", "exec", self.hosts[0], path, "-w", "5"]
            rule = ["OUTPUT", "-o", "eth0", "-m", "statistic", "--mode", "random",
                    "--probability", "0.0001", "-j", "DROP"]  # fmt: skip
            try:
                added = _run([*ns, "-A", *rule], check=False)
            except (OSError, subprocess.SubprocessError):
                continue
            if added.returncode != 0:
                continue
            if _run([*ns, "-D", *rule], check=False).returncode != 0:
                _run([*ns, "-F", "OUTPUT"], check=False)
            self._iptables = path
            break
        return self._iptables

    def dropped(self, i: int) -> int:
        """Packets the loss() rules of host i have dropped so far (in + out)."""
        ipt = self.iptables()
        if ipt is None:
            return 0
        total = 0
        for chain in ("INPUT", "OUTPUT"):
            out = self.run(i, [ipt, "-w", "5", "-L", chain, "-v", "-x", "-n"]).stdout
            for line in out.splitlines():
                fields = line.split()
                if len(fields) > 2 and fields[2] == "DROP" and fields[0].isdigit():
                    total += int(fields[0])
        return total

    def loss(self, i: int, prob: float) -> None:
        """Drop each packet to and from host i with probability prob (0 clears)."""
        ipt = self.iptables()
        if ipt is None:
            pytest.skip("no working iptables: no packet-loss helper")
        ns = ["ip", "netns", "exec", self.hosts[i], ipt, "-w", "5"]
        _run([*ns, "-F", "OUTPUT"])
        _run([*ns, "-F", "INPUT"])
        if prob <= 0:
            return
        for chain, flag in (("OUTPUT", "-o"), ("INPUT", "-i")):
            _run([*ns, "-A", chain, flag, "eth0", "-m", "statistic", "--mode", "random",
                  "--probability", f"{prob:.4f}", "-j", "DROP"])  # fmt: skip


@contextlib.contextmanager
def netns_lab(n_hosts: int, prefix: str) -> Iterator[Lab]:
    lab = Lab(n_hosts, prefix)
    try:
        lab.build()
        yield lab
    finally:
        lab.destroy()


class RootMdnsSniffer:
    """Passively counts mDNS frames (UDP port 5353) seen in the ROOT namespace.

    Uses an AF_PACKET socket in the namespace the test process runs in (the
    root one): it only listens, sends nothing and joins no group. ``count`` is
    None when raw sockets are unavailable.
    """

    def __init__(self) -> None:
        self.count: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def __enter__(self) -> RootMdnsSniffer:
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        except (OSError, AttributeError):
            return self
        self._sock.settimeout(0.1)
        self.count = 0
        self._thread = threading.Thread(target=self._loop, name="root-mdns-sniffer", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if _is_mdns(frame) and self.count is not None:
                self.count += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()


def _is_mdns(frame: bytes) -> bool:
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(frame) >= 34 and frame[23] == 17:  # IPv4 / UDP
        off = 14 + (frame[14] & 0x0F) * 4
    elif ethertype == b"\x86\xdd" and len(frame) >= 62 and frame[20] == 17:  # IPv6 / UDP
        off = 54
    else:
        return False
    if len(frame) < off + 4:
        return False
    sport, dport = struct.unpack("!HH", frame[off : off + 4])
    return 5353 in (sport, dport)


def kill_all(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """Kill what a lab started inside its namespaces, and close its pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()


def delete_namespaces(created: list[str]) -> None:
    """Delete the namespaces a lab made, last first; empties ``created``."""
    errors = []
    for name in reversed(created):
        res = _run(["ip", "netns", "del", name], check=False)
        if res.returncode != 0 and name in list_netns():
            errors.append(f"{name}: {res.stderr.strip()}")
    created.clear()
    if errors:
        raise RuntimeError("could not delete namespaces: " + "; ".join(errors))


# POST n recipes to the node's API, a short pause between them; prints how
# many were acknowledged (201).
# The timeout is past OWN_HEAD_WAIT_SECONDS (10 s): a node's first write may
# wait that long for a round with a peer, and through a lossy link it does.
WRITE_SCRIPT = """
import json, sys, time, urllib.request
url, n, tag, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
ok = 0
for k in range(n):
    body = json.dumps({"name": f"{tag} {k}", "ingredients": "salt", "instructions": "stir"})
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        ok += response.status == 201
    time.sleep(pause)
print(ok)
"""
