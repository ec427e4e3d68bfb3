"""p2psync and an independent js-libp2p 2.x node (@libp2p/mdns) on one test LAN.

Three host namespaces, no --peer anywhere, so only mDNS can bring them
together:

- h0: a p2psync node (network "default", mDNS on);
- h1: a js-libp2p node subscribed to p2psync's live topic
  ``/p2psync/default/v4/live`` (tests/netns/js/peer.mjs): of our network;
- h2: a js-libp2p node subscribed to ``/p2psync/other/v4/live``: of another
  network, which p2psync can only learn after connecting (js sends no
  ``p2psync=`` hint).

Checks: both sides discover each other by mDNS (js: @libp2p/mdns reports
the p2psync node at its LAN address; p2psync: the js peer with source
``mdns``); an op created on the p2psync node reaches the js node on the live
topic, decoded as the create it is; the other network's js node ends up
``foreign``, disconnected, never banned, and is not dialed again when mDNS
reports it anew (restarted with the same key on a new port).

The js packages are pinned in tests/netns/js/package-lock.json and installed
by ``make js-tools`` (``npm ci``), or here if missing. Skips cleanly without
root, node or npm, or when the install fails.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2psync.net.topics import live_topic
from tests.netns.lab import Lab, RootMdnsSniffer, netns_lab, require_netns
from tests.netns.nodes import API_PORT, api, wait_until

pytestmark = pytest.mark.netns

JS_DIR = Path(__file__).with_name("js")
NPM_TIMEOUT = 300
OTHER_SEED = "07" * 32  # the other network's js node keeps its key across a restart
_POST = (
    "import sys, urllib.request; "
    "r = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST', "
    "headers={'Content-Type': 'application/json'}); "
    "print(urllib.request.urlopen(r, timeout=18).read().decode())"
)


def js_unavailable() -> str | None:
    """None if the js-libp2p node can run here (installing it if need be), else why not."""
    node = shutil.which("node")
    if node is None:
        return "node (Node.js) not installed"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    major = version.stdout.strip().lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < 20:
        return f"Node.js 20 or newer needed, found {version.stdout.strip() or 'none'}"
    wanted = ["libp2p", "@libp2p/mdns", "@chainsafe/libp2p-gossipsub"]
    if all((JS_DIR / "node_modules" / name / "package.json").is_file() for name in wanted):
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm not installed and tests/netns/js/node_modules missing (make js-tools)"
    try:
        result = subprocess.run(
            [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund", "--fetch-retries=1"],
            capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"npm ci in tests/netns/js took over {NPM_TIMEOUT} s"
    if result.returncode != 0:
        return f"npm ci in tests/netns/js failed: {result.stderr.strip()[-500:]}"
    return None


class JsPeer:
    """One peer.mjs process in a lab host; its JSON events gathered by a reader thread."""

    def __init__(self, lab: Lab, host: int, topics: list[str], seed: str | None = None) -> None:
        argv = ["node", str(JS_DIR / "peer.mjs"), "--ip", lab.ip(host), "--seconds", "120"]
        for topic in topics:
            argv += ["--topic", topic]
        if seed is not None:
            argv += ["--seed", seed]
        self.proc = lab.exec(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        started = self.wait_for(lambda e: e["event"] == "started", 30, "the js node to start")
        self.peer_id: str = started["peer_id"]
        self.addrs: list[str] = started["addrs"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _drain(self) -> bool:
        """Move the lines read so far into ``events``; False once the output ended."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return True
            if line is None:
                return False
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            alive = self._drain()
            for event in self.events:
                if match(event):
                    return event
            if not alive or time.monotonic() > deadline:
                err = self.proc.stderr.read() if not alive and self.proc.stderr else ""
                raise AssertionError(f"js node: no {what} within {timeout} s: {self.events} {err}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self._reader.join(timeout=5)
        self._drain()


def start_p2psync(lab: Lab, host: int, tmp: Path) -> subprocess.Popen[Any]:
    env = dict(os.environ)
    env.pop("P2PSYNC_NO_MDNS", None)
    env["P2PSYNC_DATA_ROOT"] = str(tmp / f"root{host}")
    env["P2PSYNC_LOG_REPEAT_SECONDS"] = "0.1"  # show every repeated log line (dials)
    log = (tmp / f"node{host}.log").open("w")
    return lab.exec(
        host,
        [sys.executable, "-m", "p2psync", "run", "--no-repl", "--api-port", str(API_PORT),
         "--data-dir", str(tmp / f"node{host}"), "--sync-interval", "3", "--log-level", "INFO"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def create_recipe(lab: Lab, host: int, name: str) -> dict[str, Any]:
    """POST a recipe. The node's first write may wait up to 10 s to learn its own
    log's head from a connected peer (node.OWN_HEAD_WAIT_SECONDS); js never
    syncs, so it waits that long here."""
    body = json.dumps({"name": name, "ingredients": "flour", "instructions": "mix"})
    url = f"http://127.0.0.1:{API_PORT}/api/v0/recipes"
    result = lab.run(host, [sys.executable, "-c", _POST, url, body])
    created: dict[str, Any] = json.loads(result.stdout)
    return created


def peer_row(lab: Lab, host: int, peer_id: str) -> dict[str, Any] | None:
    return next((p for p in api(lab, host, "/api/v0/peers") if p["peer_id"] == peer_id), None)


def test_js_libp2p_and_p2psync_discover_each_other_and_a_live_op_reaches_js(
    tmp_path: Path,
) -> None:
    require_netns()
    reason = js_unavailable()
    if reason is not None:
        pytest.skip(reason)
    log = tmp_path / "node0.log"
    js: list[JsPeer] = []
    with netns_lab(3, "jsmdns") as lab, RootMdnsSniffer() as sniffer:
        try:
            start_p2psync(lab, 0, tmp_path)
            wait_until(lambda: bool(api(lab, 0, "/api/v0/status")), 60, "the API", tmp_path)
            me = api(lab, 0, "/api/v0/status")["peer_id"]
            same = JsPeer(lab, 1, [live_topic("default")])
            other = JsPeer(lab, 2, [live_topic("other")], seed=OTHER_SEED)
            js += [same, other]

            # js finds p2psync by mDNS (@libp2p/mdns's own event), at its LAN address.
            found = same.wait_for(
                lambda e: e["event"] == "mdns" and e["peer_id"] == me, 30,
                "@libp2p/mdns to report the p2psync node",
            )  # fmt: skip
            assert any(a.startswith(f"/ip4/{lab.ip(0)}/tcp/") for a in found["addrs"]), found

            # p2psync finds js by mDNS (source "mdns"), dials it, and keeps it.
            def js_connected() -> bool:
                row = peer_row(lab, 0, same.peer_id)
                return row is not None and row["connected"] and row["state"] == "connected"

            wait_until(js_connected, 30, "p2psync to find and connect the js node", tmp_path)
            row = peer_row(lab, 0, same.peer_id)
            assert row is not None and row["source"] == "mdns", row
            assert any(a.startswith(f"/ip4/{lab.ip(1)}/tcp/") for a in row["addrs"]), row

            # A live op reaches js on the live topic. Publishing goes to mesh
            # peers only, so create until one arrives (the mesh forms within
            # a heartbeat or two).
            names: set[str] = set()
            deadline = time.monotonic() + 30
            message: dict[str, Any] | None = None
            while message is None and time.monotonic() < deadline:
                names.add(create_recipe(lab, 0, f"Live to js {len(names)}")["name"])
                try:
                    message = same.wait_for(
                        lambda e: e["event"] == "message" and e.get("op", {}).get("n") in names,
                        2, "live op",
                    )  # fmt: skip
                except AssertionError:
                    continue
            assert message is not None, f"no live op reached js: {same.events}"
            assert message["topic"] == live_topic("default")
            assert message["from"] == me
            assert (message["version"], message["kind"], message["count"]) == (4, 1, 1)  # LIVE
            assert message["op"]["k"] == "create" and message["op"]["i"] == "mix", message

            # The other network's node: connected once (no hint in its TXT), found
            # foreign from its subscriptions, cut off, not banned.
            def other_foreign() -> bool:
                row = peer_row(lab, 0, other.peer_id)
                return row is not None and row["state"] == "foreign" and not row["connected"]

            wait_until(other_foreign, 30, "the other network's js node to be foreign", tmp_path)
            other.wait_for(lambda e: e["event"] == "mdns" and e["peer_id"] == me, 10, "p2psync")

            # Restarted with the same key on a new port, mDNS reports it anew:
            # it stays foreign and is not dialed again.
            other.stop()
            other_port = other.addrs[0].split("/tcp/")[1].split("/")[0]
            again = JsPeer(lab, 2, [live_topic("other")], seed=OTHER_SEED)
            js.append(again)
            assert again.peer_id == other.peer_id
            new_port = again.addrs[0].split("/tcp/")[1].split("/")[0]
            assert new_port != other_port

            def rediscovered() -> bool:
                row = peer_row(lab, 0, other.peer_id)
                return row is not None and any(f"/tcp/{new_port}/" in a for a in row["addrs"])

            wait_until(rediscovered, 30, "mDNS to report the restarted js node", tmp_path)
            row = peer_row(lab, 0, other.peer_id)
            assert row is not None and row["state"] == "foreign" and not row["connected"], row
            assert not any(e["event"] == "connected" for e in again.events), again.events
            text = log.read_text()
            assert text.count(f"dialing {other.peer_id}") == 1, text[-3000:]
            assert sum(e["event"] == "connected" for e in other.events) == 1, other.events
            assert f"peer {other.peer_id} is in network 'other'" in text, text[-3000:]
            assert "banned" not in text and "misbehaves" not in text, text[-3000:]
            status = api(lab, 0, "/api/v0/status")
            assert status["peers"] == 1, status  # the same-network js node only
        finally:
            for peer in js:
                peer.stop()
    assert sniffer.count in (0, None), "mDNS leaked into the root namespace"
