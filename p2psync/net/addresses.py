"""Multiaddr text, IP addresses and this machine's interfaces, in one place.

Only string and ``ipaddress`` work here (no py-libp2p, no ``multiaddr``
package), so the CLI can check ``--peer`` without loading libp2p.

A multiaddr names its peer with a trailing ``/p2p/<peer id>`` (``/ipfs/`` is
the legacy spelling of the same protocol); py-libp2p dials only such
addresses (``info_from_p2p_addr`` wants ``p2p`` as the last protocol). So
``/ip4/10.0.0.2/tcp/4001/p2p/12D3KooW...`` splits into the transport address
``/ip4/10.0.0.2/tcp/4001`` and the peer id ``12D3KooW...``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

import ifaddr

__all__ = [
    "DIAL_ADDR_FORM",
    "HOST_PROTOCOLS",
    "TcpPeerAddr",
    "has_peer_id",
    "interface_ipv4_addrs",
    "is_loopback",
    "is_loopback_multiaddr",
    "is_reachable_ip",
    "multiaddr_parts",
    "parse_tcp_peer_addr",
    "peer_id_of",
    "split_peer_addr",
    "tcp_multiaddr",
    "with_peer_id",
]

PEER_PROTOCOLS = ("p2p", "ipfs")
HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")
DIAL_ADDR_FORM = "/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT/p2p/PEER_ID"
# A peer id in text: base58btc (what py-libp2p reads), no separators.
_PEER_ID_TEXT = re.compile(r"[1-9A-HJ-NP-Za-km-z]{1,128}")
_DNS_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?")


# --- hosts and IPs ------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (``[::1]`` too); False for any other name."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname may resolve anywhere; assume the worst


def is_loopback_multiaddr(maddr: str) -> bool:
    """True for ``/ip4/127.../...`` and ``/ip6/::1/...``; False for names and anything else."""
    try:
        parts = multiaddr_parts(maddr)
    except ValueError:
        return False
    return parts[0] in ("ip4", "ip6") and is_loopback(parts[1])


def is_reachable_ip(host: str) -> bool:
    """True for an IP another machine may reach us at: not unspecified,
    loopback or multicast. False for names and unparsable text."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast)


def interface_ipv4_addrs() -> list[str]:
    """This machine's IPv4 addresses: LAN ones first, loopback last, always 127.0.0.1."""
    found: set[ipaddress.IPv4Address] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):  # IPv6 entries are tuples
                found.add(ipaddress.IPv4Address(ip.ip))
    found.add(ipaddress.IPv4Address("127.0.0.1"))
    ordered = sorted(found, key=lambda a: (a.is_loopback, a))
    return [str(a) for a in ordered if not a.is_unspecified]


# --- multiaddr text -------------------------------------------------------------


def multiaddr_parts(maddr: str) -> list[str]:
    """``"/ip4/1.2.3.4/tcp/1"`` -> ``["ip4", "1.2.3.4", "tcp", "1"]``.

    ValueError unless the text starts with ``/`` and has at least one
    protocol and value.
    """
    if not maddr.startswith("/"):
        raise ValueError(f"not a multiaddr (must start with '/'): {maddr!r}")
    parts = maddr.strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"not a multiaddr (no protocol and value): {maddr!r}")
    return parts


def tcp_multiaddr(host: str, port: int) -> str:
    """``/ip4/HOST/tcp/PORT`` (or ``/ip6/...``) for a listen address; ValueError if bad."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen host must be an IP address, got {host!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen port must be 0..65535, got {port}")
    return f"/ip{ip.version}/{ip}/tcp/{port}"


def split_peer_addr(maddr: str) -> tuple[str, str]:
    """``(transport address, peer id)`` of a multiaddr ending in ``/p2p/<peer id>``.

    The transport address is ``""`` when the multiaddr is only
    ``/p2p/<peer id>``. ValueError when there is no trailing peer part or
    the peer id is not base58 text.
    """
    parts = multiaddr_parts(maddr)
    if parts[-2] not in PEER_PROTOCOLS:
        raise ValueError(f"no /p2p/<peer id> at the end of {maddr!r}")
    peer_id = parts[-1]
    if not _PEER_ID_TEXT.fullmatch(peer_id):
        raise ValueError(f"malformed peer id {peer_id!r} in {maddr!r}")
    transport = parts[:-2]
    return ("/" + "/".join(transport) if transport else ""), peer_id


def peer_id_of(maddr: str) -> str:
    """The peer id a multiaddr ends with (``.../p2p/<peer id>``); ValueError if none."""
    return split_peer_addr(maddr)[1]


def has_peer_id(maddr: str) -> bool:
    """Whether ``maddr`` ends in a well-formed ``/p2p/<peer id>`` (so it can be dialed)."""
    try:
        split_peer_addr(maddr)
    except ValueError:
        return False
    return True


def with_peer_id(maddr: str, peer_id: str) -> str:
    """``maddr`` ending in ``/p2p/<peer_id>``: appended if it names no peer.

    ValueError if it names another peer or is not multiaddr text.
    """
    parts = multiaddr_parts(maddr)
    if parts[-2] in PEER_PROTOCOLS:
        named = parts[-1]
        if named != peer_id:
            raise ValueError(f"{maddr!r} names peer {named}, not {peer_id}")
        return "/" + "/".join(parts)
    return "/" + "/".join([*parts, "p2p", peer_id])


class TcpPeerAddr(NamedTuple):
    """A dialable ``/<protocol>/<host>/tcp/<port>/p2p/<peer id>``."""

    protocol: str  # one of HOST_PROTOCOLS
    host: str
    port: int
    peer_id: str  # as written; the caller decides which key types it accepts


def parse_tcp_peer_addr(text: str) -> TcpPeerAddr:
    """The strict form a user may type (``--peer``); ValueError with a one-line reason.

    Exactly ``DIAL_ADDR_FORM``: the IP must match its protocol's version, a
    DNS name must be a valid host name and the port 1..65535.
    """
    address = text.strip()
    expected = f"expected {DIAL_ADDR_FORM}"
    parts = address.split("/")
    if len(parts) != 7 or parts[0] != "" or parts[3] != "tcp" or parts[5] != "p2p":
        raise ValueError(f"{expected}, got {address!r}")
    protocol, host, port, peer_id = parts[1], parts[2], parts[4], parts[6]
    if protocol not in HOST_PROTOCOLS:
        raise ValueError(f"{expected}, got {protocol!r} in {address!r}")
    if protocol in ("ip4", "ip6"):
        try:
            parsed_host = ipaddress.ip_address(host)
        except ValueError:
            parsed_host = None
        if parsed_host is None or parsed_host.version != int(protocol[-1]):
            raise ValueError(f"not an {protocol} address: {host!r} in {address!r}")
    elif not _DNS_NAME.fullmatch(host):
        raise ValueError(f"not a host name: {host!r} in {address!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"tcp port must be 1..65535: {port!r} in {address!r}")
    return TcpPeerAddr(protocol, host, int(port), peer_id)
