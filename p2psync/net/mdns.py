"""LAN peer discovery over mDNS / DNS-SD, trio-native, on top of zeroconf.

API::

    async def serve_mdns(
        peer_id: str, listen_addrs: list[str], network: str,
        on_found: Callable[[str, list[str]], None], *,
        interface_ip: str | None = None,
        refresh_interval: float = 30.0,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None

    def service_type(network: str) -> str    # "_p2ps-<8 hex>._udp.local."

``serve_mdns`` runs until cancelled. It registers this node as the service
instance ``<peer id>.<service_type(network)>`` (instance label truncated to 63
bytes) with

- SRV port = the libp2p TCP port, A records = the real IPv4 addresses of
  ``listen_addrs`` (0.0.0.0 expands to the interface addresses; loopback and
  unspecified addresses are never advertised);
- TXT ``id=<full peer id>``, ``network=<name>`` and one ``dnsaddr=<multiaddr>``
  per advertised listen address (as the libp2p mDNS spec and js-libp2p do).

It browses the same type and, for each service found, calls
``on_found(peer_id, multiaddrs)`` in the trio thread (never in a zeroconf
thread). Multiaddrs end in ``/p2p/<peer_id>``. A service is accepted only if
its TXT says ``network=<our network>`` (the type is already per network; the
TXT check keeps two networks apart even on a hash collision). Our own peer id
is ignored. Peers that answer with PTR + TXT only (no SRV / A, as js-libp2p
does) are accepted: their ``dnsaddr=`` values are used directly, and the peer
id comes from ``id=`` or else the trailing ``/p2p/`` part of the first dnsaddr
that has one; dnsaddrs naming another peer, and loopback / unspecified ones,
are dropped.

``on_found`` is called again for the same peer when its address set changes
and every ``refresh_interval`` seconds for every peer still in the mDNS cache,
so treat it as idempotent (it doubles as a "re-dial if disconnected" hint).
Every ``refresh_interval`` the node also re-announces itself (unsolicited), so
peers meet again after a partition heals without waiting for a query. TTLs are
120 s, so a peer that vanished without a goodbye stops being reported after
about two minutes.

``task_status.started()`` fires once the service is registered (probing plus
the first announcement: about 1-2 s). On cancellation the browser thread is
stopped, goodbye packets are sent and zeroconf is closed in a worker thread;
no zeroconf thread outlives the call.

Only ever run this inside a network namespace in tests: it sends multicast.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import socket
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from p2psync.net.addresses import (
    has_peer_id,
    interface_ipv4_addrs,
    is_reachable_ip,
    multiaddr_parts,
    peer_id_of,
    with_peer_id,
)

if TYPE_CHECKING:
    # trio.TaskStatus: under mypy, trio's types come from trio-typing's stubs
    # (a dependency of py-libp2p), which spell it trio_typing.TaskStatus.
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

__all__ = ["serve_mdns", "service_type"]

TTL = 120  # seconds, for every record we publish (libp2p mDNS uses 120 too)
RESOLVE_TIMEOUT_MS = 3000
MAX_LABEL = 63  # DNS label limit, bytes
MAX_TXT_STRING = 255  # one TXT character-string, bytes
MAX_ADDRS = 32  # ignore the tail of absurdly long address lists
MAX_RESOLVING = 16  # concurrent SRV/A lookups (each holds a worker thread)


def service_type(network: str) -> str:
    """The DNS-SD service type for one network: ``_p2ps-<8 hex>._udp.local.``.

    Service names are limited to 15 characters, so the network name is
    hashed (blake2b, 4 bytes); the plain name travels in TXT ``network=``.
    """
    digest = hashlib.blake2b(network.encode("utf-8"), digest_size=4).hexdigest()
    return f"_p2ps-{digest}._udp.local."


def _truncate_label(text: str) -> str:
    raw = text.encode("utf-8")[:MAX_LABEL]
    return raw.decode("utf-8", errors="ignore").replace(".", "-") or "p2psync"


def _encode_txt(strings: list[str]) -> bytes:
    out = bytearray()
    for s in strings:
        raw = s.encode("utf-8")
        if len(raw) > MAX_TXT_STRING:
            log.warning("mdns: TXT value too long, not advertised: %.60s...", s)
            continue
        out.append(len(raw))
        out += raw
    return bytes(out)


def _decode_txt(text: bytes | None) -> list[tuple[str, str]]:
    """TXT rdata -> [(key, value)], duplicates kept (there is one per dnsaddr)."""
    pairs: list[tuple[str, str]] = []
    if not text:
        return pairs
    i = 0
    while i < len(text):
        n = text[i]
        chunk = text[i + 1 : i + 1 + n]
        i += 1 + n
        try:
            s = chunk.decode("utf-8")
        except UnicodeDecodeError:
            continue
        key, sep, value = s.partition("=")
        if sep:
            pairs.append((key.lower(), value))
    return pairs


def _usable_addr(maddr: str, peer_id: str) -> str | None:
    """``maddr`` ending in /p2p/<peer_id>, or None if it names another peer,
    is not multiaddr text, or its host cannot be reached from another machine."""
    try:
        parts = multiaddr_parts(maddr)
        full = with_peer_id(maddr, peer_id)
    except ValueError:
        return None
    return full if _host_usable(parts) else None


def _host_usable(parts: list[str]) -> bool:
    if parts[0] in ("ip4", "ip6"):
        return is_reachable_ip(parts[1])
    return parts[1] not in ("localhost",)


def _local_ipv4(interface_ip: str | None) -> list[str]:
    if interface_ip is not None:
        return [interface_ip]
    return [ip for ip in interface_ipv4_addrs() if is_reachable_ip(ip)]


def _advertisement(
    peer_id: str, listen_addrs: list[str], interface_ip: str | None
) -> tuple[list[str], int, list[str]]:
    """(IPv4 addresses for A records, TCP port, dnsaddr multiaddrs)."""
    ips: list[str] = []
    maddrs: list[str] = []
    port: int | None = None
    for addr in listen_addrs:
        try:
            parts = multiaddr_parts(addr)
        except ValueError:
            continue
        if parts[0] == "ip4" and len(parts) >= 4 and parts[2] == "tcp":
            if port is None:
                port = int(parts[3])
            hosts = _local_ipv4(interface_ip) if parts[1] == "0.0.0.0" else [parts[1]]
            for host in hosts:
                if not is_reachable_ip(host):
                    continue
                if host not in ips:
                    ips.append(host)
                full = _usable_addr("/" + "/".join(["ip4", host, *parts[2:]]), peer_id)
                if full is not None and full not in maddrs:
                    maddrs.append(full)
        elif parts[0] in ("ip6", "dns", "dns4", "dns6"):
            full = _usable_addr(addr, peer_id)
            if full is not None and full not in maddrs:
                maddrs.append(full)
    if port is None:
        raise ValueError(f"mdns: no /ip4/.../tcp/... listen address in {listen_addrs!r}")
    return ips, port, maddrs


class _Discovery:
    """State of one serve_mdns call; everything here runs in the trio thread."""

    def __init__(
        self,
        zc: Zeroconf,
        stype: str,
        peer_id: str,
        network: str,
        on_found: Callable[[str, list[str]], None],
    ) -> None:
        self.zc = zc
        self.stype = stype
        self.peer_id = peer_id
        self.network = network
        self.on_found = on_found
        self.reported: dict[str, tuple[str, tuple[str, ...]]] = {}  # name -> (peer, addrs)
        self.requesting: set[str] = set()

    def evaluate(self, name: str, *, force: bool = False) -> bool:
        """Read what the cache holds for name and report it; True if complete."""
        try:
            info = ServiceInfo(self.stype, name)
            complete = bool(info.load_from_cache(self.zc))
            found = self._parse(info)
        except Exception as exc:  # a malformed name or record must not stop discovery
            log.debug("mdns: ignoring %r: %r", name, exc)
            return True
        if found is None:
            return complete
        peer, addrs = found
        previous = self.reported.get(name)
        if not force and previous == (peer, addrs):
            return complete
        self.reported[name] = (peer, addrs)
        try:
            self.on_found(peer, list(addrs))
        except Exception:
            log.exception("mdns: on_found(%s) raised", peer)
        return complete

    def _parse(self, info: ServiceInfo) -> tuple[str, tuple[str, ...]] | None:
        pairs = _decode_txt(info.text)
        if not pairs:
            return None  # no TXT yet: cannot check the network
        networks = [v for k, v in pairs if k == "network"]
        if networks != [self.network]:
            return None
        dnsaddrs = [v for k, v in pairs if k == "dnsaddr"][:MAX_ADDRS]
        ids = [v for k, v in pairs if k == "id"]
        peer: str | None = ids[0] if ids else None
        if peer is None:  # js-libp2p style: the first dnsaddr naming a peer decides
            peer = next((peer_id_of(a) for a in dnsaddrs if has_peer_id(a)), None)
        if not peer or peer == self.peer_id:
            return None
        addrs: list[str] = []
        port = info.port
        if port:
            for host in info.parsed_addresses(IPVersion.V4Only)[:MAX_ADDRS]:
                if is_reachable_ip(host):
                    addrs.append(with_peer_id(f"/ip4/{host}/tcp/{port}", peer))
        for text in dnsaddrs:
            full = _usable_addr(text, peer)
            if full is not None and full not in addrs:
                addrs.append(full)
        if not addrs:
            return None
        return peer, tuple(addrs)

    async def request(self, name: str) -> None:
        """Ask the network for SRV/TXT/A of name, then report what arrived."""
        try:
            info = ServiceInfo(self.stype, name)
            await trio.to_thread.run_sync(info.request, self.zc, RESOLVE_TIMEOUT_MS)
        except Exception as exc:  # EventLoopBlocked, zeroconf closing, ...
            log.debug("mdns: resolving %s failed: %r", name, exc)
        finally:
            self.requesting.discard(name)
        self.evaluate(name)


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
    """Announce this node and report peers of the same network until cancelled."""
    stype = service_type(network)
    ips, port, maddrs = _advertisement(peer_id, listen_addrs, interface_ip)
    label = _truncate_label(peer_id)
    txt = _encode_txt([f"id={peer_id}", f"network={network}", *(f"dnsaddr={m}" for m in maddrs)])
    info = ServiceInfo(
        stype,
        f"{label}.{stype}",
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
        browser = ServiceBrowser(zc, stype, handlers=[on_change])
        registered = bool(ips or maddrs)
        if registered:
            await trio.to_thread.run_sync(
                partial(zc.register_service, info, allow_name_change=True)
            )
            log.info("mdns: registered %s on %s (%s)", info.name, stype, ", ".join(maddrs))
        else:
            log.warning("mdns: no LAN address to advertise in %s; browsing only", listen_addrs)
        disc = _Discovery(zc, stype, peer_id, network, on_found)
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_refresh, zc, info, registered, disc, refresh_interval)
            async for name, change in recv:
                if change is ServiceStateChange.Removed:
                    disc.reported.pop(name, None)
                    continue
                complete = disc.evaluate(name)
                if (
                    not complete
                    and name not in disc.requesting
                    and len(disc.requesting) < MAX_RESOLVING
                ):
                    disc.requesting.add(name)
                    nursery.start_soon(disc.request, name)
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
            disc.evaluate(name, force=True)


def _shutdown(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
    """Blocking: stop the browser thread, send goodbyes, stop zeroconf's loop thread."""
    try:
        if browser is not None:
            browser.cancel()
    finally:
        zc.close()
