"""What p2psync writes into libp2p mDNS records and reads out of them; no I/O.

libp2p's mDNS spec (libp2p/specs, discovery/mdns.md, r2) in short: the
service is ``_p2p._udp.local``; a peer answers the question
``_p2p._udp.local PTR`` with ``_p2p._udp.local PTR <peer-name>._p2p._udp.local``
(the peer name a random string, not the peer id) and TXT strings
``dnsaddr=<multiaddr>/p2p/<peer id>``, one per address, in one TXT record or
several. js-libp2p sends one TXT record per address, as answers, and no SRV
or A; zeroconf (this module's user) one TXT record holding every string, as
an additional next to SRV and A. So a reader must take the strings of every
TXT record of the instance, answers and additionals alike, and must not
need SRV or A.

p2psync adds one TXT string of its own, ``p2psync=<network>``: a hint that
lets two p2psync networks on one LAN skip each other without dialing. Other
implementations ignore it (they only read ``dnsaddr=``); a peer without it
is dialed and its network learned from the topics it subscribes to.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass

from p2psync.net.addresses import has_peer_id, is_reachable_ip, multiaddr_parts, peer_id_of

__all__ = [
    "MAX_ADDRS",
    "NETWORK_KEY",
    "SERVICE_TYPE",
    "MdnsPeer",
    "advertised_addrs",
    "encode_txt",
    "random_peer_name",
    "read_peer",
    "txt_strings",
]

SERVICE_TYPE = "_p2p._udp.local."  # the spec's service name, as zeroconf spells it
DNSADDR_KEY = "dnsaddr"
NETWORK_KEY = "p2psync"  # TXT "p2psync=<network>": which p2psync network we are in
PEER_NAME_CHARS = 32  # the spec: random lower-case alphanumerics, at least 32
MAX_TXT_STRING = 255  # one TXT character-string, bytes
MAX_ADDRS = 32  # dnsaddrs read per peer; the tail of longer lists is ignored
_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")
_PEER_NAME_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True, slots=True)
class MdnsPeer:
    peer_id: str
    addrs: tuple[str, ...]  # dialable, each ending in /p2p/<peer_id>
    network: str | None  # its p2psync= hint; None if it sent none (or several)


def random_peer_name() -> str:
    """A fresh instance label: 32 random lower-case letters and digits."""
    return "".join(secrets.choice(_PEER_NAME_ALPHABET) for _ in range(PEER_NAME_CHARS))


def encode_txt(strings: Iterable[str]) -> bytes:
    """TXT rdata: each string as a length-prefixed character-string.

    A string over 255 bytes cannot be encoded and is left out (as js-libp2p
    leaves out a dnsaddr that long).
    """
    out = bytearray()
    for text in strings:
        raw = text.encode("utf-8")
        if len(raw) > MAX_TXT_STRING:
            continue
        out.append(len(raw))
        out += raw
    return bytes(out)


def txt_strings(rdata: bytes) -> list[str]:
    """The character-strings of one TXT rdata; undecodable ones are skipped."""
    strings: list[str] = []
    i = 0
    while i < len(rdata):
        n = rdata[i]
        chunk = rdata[i + 1 : i + 1 + n]
        i += 1 + n
        try:
            strings.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return strings


def _pairs(rdatas: Iterable[bytes]) -> list[tuple[str, str]]:
    """``key=value`` strings of every record, in order, keys lower-cased."""
    pairs: list[tuple[str, str]] = []
    for rdata in rdatas:
        for text in txt_strings(rdata):
            key, sep, value = text.partition("=")
            if sep:
                pairs.append((key.lower(), value))
    return pairs


def _dialable(maddr: str, peer_id: str) -> str | None:
    """``/<ip4|ip6|dns*>/<host>/tcp/<port>/p2p/<peer_id>`` for a TCP address of
    that peer another machine can reach; None for anything else (another
    peer's address, loopback or unspecified hosts, transports we cannot dial)."""
    try:
        parts = multiaddr_parts(maddr)
    except ValueError:
        return None
    if len(parts) == 6 and parts[4] in ("p2p", "ipfs"):
        if parts[5] != peer_id:
            return None
        parts = parts[:4]
    if len(parts) != 4 or parts[0] not in _HOST_PROTOCOLS or parts[2] != "tcp":
        return None
    if not parts[3].isdigit() or not 0 < int(parts[3]) <= 65535:
        return None
    host = parts[1]
    if parts[0] in ("ip4", "ip6") and not is_reachable_ip(host):
        return None
    if parts[0].startswith("dns") and host.lower() in ("localhost", ""):
        return None
    return f"/{parts[0]}/{host}/tcp/{int(parts[3])}/p2p/{peer_id}"


def read_peer(rdatas: Iterable[bytes], me: str) -> MdnsPeer | None:
    """The peer the TXT records of one instance describe, or None.

    ``rdatas``: the raw rdata of every TXT record of the instance, in the
    order they arrived. As in js-libp2p, the first ``dnsaddr=`` that names a
    peer decides who it is; dnsaddrs naming another peer are dropped, as are
    the ones ``_dialable`` refuses. None when no usable address is left or
    the peer is ``me``.
    """
    pairs = _pairs(rdatas)
    dnsaddrs = [value for key, value in pairs if key == DNSADDR_KEY][:MAX_ADDRS]
    peer = next((peer_id_of(a) for a in dnsaddrs if has_peer_id(a)), None)
    if peer is None or peer == me:
        return None
    addrs: list[str] = []
    for text in dnsaddrs:
        full = _dialable(text, peer)
        if full is not None and full not in addrs:
            addrs.append(full)
    if not addrs:
        return None
    hints = {value for key, value in pairs if key == NETWORK_KEY}
    network = hints.pop() if len(hints) == 1 else None
    return MdnsPeer(peer, tuple(addrs), network)


def advertised_addrs(
    peer_id: str, listen_addrs: list[str], local_ips: list[str]
) -> tuple[list[str], int, list[str]]:
    """(IPv4 addresses for A records, TCP port for SRV, dnsaddr multiaddrs).

    ``0.0.0.0`` expands to ``local_ips``; loopback and unspecified addresses
    are never advertised. ValueError if no listen address is ``/ip4/.../tcp``.
    """
    ips: list[str] = []
    maddrs: list[str] = []
    port: int | None = None
    for addr in listen_addrs:
        try:
            parts = multiaddr_parts(addr)
        except ValueError:
            continue
        if len(parts) < 4 or parts[2] != "tcp":
            continue
        if parts[0] == "ip4" and port is None:
            port = int(parts[3])
        hosts = local_ips if parts[0] == "ip4" and parts[1] == "0.0.0.0" else [parts[1]]
        for host in hosts:
            full = _dialable(f"/{parts[0]}/{host}/tcp/{parts[3]}", peer_id)
            if full is None:
                continue
            if parts[0] == "ip4" and host not in ips:
                ips.append(host)
            if full not in maddrs:
                maddrs.append(full)
    if port is None:
        raise ValueError(f"mdns: no /ip4/.../tcp/... listen address in {listen_addrs!r}")
    return ips, port, maddrs
