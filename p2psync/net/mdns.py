"""LAN peer discovery by libp2p's mDNS spec, trio-native, on top of zeroconf.

API::

    async def serve_mdns(
        peer_id: str, listen_addrs: list[str], network: str,
        on_found: Callable[[str, list[str]], None], *,
        interface_ip: str | None = None,
        refresh_interval: float = 30.0,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None

``serve_mdns`` runs until cancelled. It registers this node as the instance
``<peer name>._p2p._udp.local.`` (``SERVICE_TYPE``; the peer name is 32
random lower-case letters and digits, new each run, as the spec asks), so
it answers the question ``_p2p._udp.local PTR`` that every libp2p mDNS
implementation asks with

- the PTR answer, and as additionals one TXT record with one
  ``dnsaddr=<multiaddr>/p2p/<peer id>`` string per advertised address plus
  ``p2psync=<network>``, an SRV record (port = the libp2p TCP port, host
  ``<peer name>.local.``) and its A records, for DNS-SD browsers;
- advertised addresses are the real IPv4 addresses of ``listen_addrs``
  (0.0.0.0 expands to the interface addresses); loopback and unspecified
  ones never are.

It browses the same service and, for each instance, reads the raw TXT
records zeroconf's cache holds for it (every record, answers and
additionals alike: js-libp2p sends one TXT record per address and no SRV or
A, which zeroconf's ``ServiceInfo`` cannot resolve; see ``mdns_records``).
It calls ``on_found(peer_id, multiaddrs)`` in the trio thread (never in a
zeroconf thread) with the peer's dialable TCP dnsaddrs, unless the peer is
us or its TXT says ``p2psync=<another network>``: such a peer is skipped
without a dial. A peer without that hint (any other libp2p implementation)
is reported; whether it is of our network is learned after connecting.
When an instance's PTR arrives without TXT, one query for its TXT follows.

``on_found`` is called again for the same peer when its address set changes
and every ``refresh_interval`` seconds for every peer still in the mDNS
cache, so treat it as idempotent (it doubles as a "re-dial if disconnected"
hint). Every ``refresh_interval`` the node also re-announces itself
(unsolicited), so peers meet again after a partition heals without waiting
for a query. TTLs are 120 s, so a peer that vanished without a goodbye
stops being reported after about two minutes.

``task_status.started()`` fires once the service is registered (probing plus
the first announcement: about 1-2 s). On cancellation the browser thread is
stopped, goodbye packets are sent and zeroconf is closed in a worker thread;
no zeroconf thread outlives the call.

Only ever run this inside a network namespace in tests: it sends multicast.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar, cast

import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf._dns import DNSQuestion, DNSText
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR, _TYPE_TXT

from p2psync.net.addresses import interface_ipv4_addrs, is_reachable_ip
from p2psync.net.mdns_records import (
    NETWORK_KEY,
    SERVICE_TYPE,
    MdnsPeer,
    advertised_addrs,
    encode_txt,
    random_peer_name,
    read_peer,
)

if TYPE_CHECKING:
    # trio.TaskStatus: under mypy, trio's types come from trio-typing's stubs
    # (a dependency of py-libp2p), which spell it trio_typing.TaskStatus.
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

__all__ = ["SERVICE_TYPE", "serve_mdns"]

T = TypeVar("T")

TTL = 120  # seconds, for every record we publish (libp2p mDNS uses 120 too)
ASK_AGAIN_SECONDS = 2.0  # at most one TXT query per instance this often
# Instances remembered (reported and asked-for alike), the least recent
# dropped first: names cost a LAN attacker nothing.
MAX_INSTANCES = 256


def _local_ipv4(interface_ip: str | None) -> list[str]:
    if interface_ip is not None:
        return [interface_ip]
    return [ip for ip in interface_ipv4_addrs() if is_reachable_ip(ip)]


class _Discovery:
    """State of one serve_mdns call; everything here runs in the trio thread."""

    def __init__(
        self,
        zc: Zeroconf,
        own_name: str,
        peer_id: str,
        network: str,
        on_found: Callable[[str, list[str]], None],
    ) -> None:
        self.zc = zc
        self.own_name = own_name.lower()
        self.peer_id = peer_id
        self.network = network
        self.on_found = on_found
        self.reported: dict[str, MdnsPeer] = {}  # instance name -> what we last saw
        self.asked: dict[str, float] = {}  # instance name -> when we last asked for TXT

    def txt_records(self, name: str) -> list[bytes]:
        """Raw rdata of every unexpired TXT record cached for ``name``, oldest first."""
        now = current_time_millis()
        return [
            cast(DNSText, record).text
            for record in self.zc.cache.get_all_by_details(name, _TYPE_TXT, _CLASS_IN)
            if not record.is_expired(now)
        ]

    def evaluate(self, name: str, *, refresh: bool = False) -> None:
        """Read what the cache holds for ``name`` and report it, or ask for it
        (on a ``refresh``, a name whose records expired is forgotten instead)."""
        if name.lower() == self.own_name:
            return
        try:
            rdatas = self.txt_records(name)
            if not rdatas:
                if refresh:
                    self.forget(name)
                else:
                    self._ask(name)
                return
            found = read_peer(rdatas, self.peer_id)
        except Exception as exc:  # a malformed name or record must not stop discovery
            log.debug("mdns: ignoring %r: %r", name, exc)
            return
        if found is None:
            return
        previous = self.reported.pop(name, None)
        _remember(self.reported, name, found)
        if found.network is not None and found.network != self.network:
            if previous != found:
                log.debug(
                    "mdns: %s is in p2psync network %r, not ours (%r): not dialing",
                    found.peer_id, found.network, self.network,
                )  # fmt: skip
            return
        if not refresh and previous == found:
            return
        try:
            self.on_found(found.peer_id, list(found.addrs))
        except Exception:
            log.exception("mdns: on_found(%s) raised", found.peer_id)

    def _ask(self, name: str) -> None:
        """Query the instance's TXT (behind a PTR question, which js-libp2p answers)."""
        now = trio.current_time()
        if now - self.asked.get(name, -math.inf) < ASK_AGAIN_SECONDS:
            return
        self.asked.pop(name, None)
        _remember(self.asked, name, now)
        out = DNSOutgoing(_FLAGS_QR_QUERY)
        out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
        out.add_question(DNSQuestion(name, _TYPE_TXT, _CLASS_IN))
        with contextlib.suppress(Exception):  # zeroconf closing
            self.zc.send(out)  # thread-safe: hands the packet to zeroconf's loop

    def forget(self, name: str) -> None:
        self.reported.pop(name, None)
        self.asked.pop(name, None)


async def serve_mdns(
    peer_id: str,
    listen_addrs: list[str],
    network: str,
    on_found: Callable[[str, list[str]], None],
    *,
    interface_ip: str | None = None,
    refresh_interval: float = 30.0,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce this node and report the libp2p peers it finds until cancelled."""
    ips, port, maddrs = advertised_addrs(peer_id, listen_addrs, _local_ipv4(interface_ip))
    label = random_peer_name()
    txt = encode_txt([*(f"dnsaddr={m}" for m in maddrs), f"{NETWORK_KEY}={network}"])
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=port,
        properties=txt,
        server=f"{label}.local.",
        host_ttl=TTL,
        other_ttl=TTL,
        addresses=[socket.inet_aton(ip) for ip in ips],
    )

    token = trio.lowlevel.current_trio_token()
    send, recv = trio.open_memory_channel[tuple[str, ServiceStateChange]](math.inf)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # Runs in zeroconf's browser thread: hop into trio, never call on_found here.
        with contextlib.suppress(
            trio.RunFinishedError, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            trio.from_thread.run_sync(send.send_nowait, (name, state_change), trio_token=token)

    interfaces: list[str] | InterfaceChoice = (
        [interface_ip] if interface_ip else InterfaceChoice.All
    )
    zc: Zeroconf = await trio.to_thread.run_sync(
        partial(Zeroconf, interfaces=interfaces, ip_version=IPVersion.V4Only)
    )
    browser: ServiceBrowser | None = None
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        registered = bool(maddrs)
        if registered:
            await trio.to_thread.run_sync(
                partial(zc.register_service, info, allow_name_change=True)
            )
            log.info("mdns: registered %s (%s)", info.name, ", ".join(maddrs))
        else:
            log.warning("mdns: no LAN address to advertise in %s; browsing only", listen_addrs)
        disc = _Discovery(zc, info.name, peer_id, network, on_found)
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_refresh, zc, info, registered, disc, refresh_interval)
            async for name, change in recv:
                if change is ServiceStateChange.Removed:
                    disc.forget(name)
                else:
                    disc.evaluate(name)
    finally:
        send.close()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_shutdown, zc, browser)


async def _refresh(
    zc: Zeroconf, info: ServiceInfo, registered: bool, disc: _Discovery, interval: float
) -> None:
    while True:
        await trio.sleep(interval)
        try:
            if registered:
                await trio.to_thread.run_sync(zc.update_service, info)
        except Exception as exc:
            log.debug("mdns: re-announce failed: %r", exc)
        for name in list(disc.reported):
            disc.evaluate(name, refresh=True)


def _remember(table: dict[str, T], name: str, value: T) -> None:
    table[name] = value
    while len(table) > MAX_INSTANCES:
        del table[next(iter(table))]


def _shutdown(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
    """Blocking: stop the browser thread, send goodbyes, stop zeroconf's loop thread."""
    try:
        if browser is not None:
            browser.cancel()
    finally:
        zc.close()
