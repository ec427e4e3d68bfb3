"""libp2p mDNS records (net/mdns_records.py) and how net/mdns.py reads them out
of zeroconf's cache; packets are built and parsed in memory, nothing is sent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey
from zeroconf import Zeroconf
from zeroconf._cache import DNSCache
from zeroconf._dns import DNSPointer, DNSText
from zeroconf._protocol.incoming import DNSIncoming
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_PTR, _TYPE_TXT

from p2psync.core.ids import peer_id_from_public_key
from p2psync.net.mdns import MAX_INSTANCES, _Discovery
from p2psync.net.mdns_records import (
    MAX_ADDRS,
    SERVICE_TYPE,
    MdnsPeer,
    advertised_addrs,
    encode_txt,
    random_peer_name,
    read_peer,
    txt_strings,
)


def pid(i: int) -> str:
    return peer_id_from_public_key(bytes(SigningKey((i + 1).to_bytes(32)).verify_key))


ME, JS, OTHER = pid(0), pid(1), pid(2)


def dnsaddr(ip: str, port: int, peer: str | None = JS) -> str:
    tail = f"/p2p/{peer}" if peer else ""
    return f"dnsaddr=/ip4/{ip}/tcp/{port}{tail}"


# ---------------------------------------------------------------- TXT strings


def test_txt_strings_round_trip_and_overlong_or_undecodable_ones_are_skipped() -> None:
    assert txt_strings(encode_txt(["a=1", "", "dnsaddr=/ip4/1.2.3.4/tcp/1"])) == [
        "a=1",
        "",
        "dnsaddr=/ip4/1.2.3.4/tcp/1",
    ]
    assert encode_txt(["x" * 256, "ok"]) == b"\x02ok"  # 256 bytes cannot be a TXT string
    assert txt_strings(b"\x02\xff\xfe\x02ok") == ["ok"]
    assert txt_strings(b"\x09short") == ["short"]  # a truncated last string: what is there


def test_js_shape_one_txt_record_per_address() -> None:
    records = [
        encode_txt([dnsaddr("10.0.0.2", 4001)]),
        encode_txt([dnsaddr("127.0.0.1", 4001)]),  # loopback
        encode_txt([dnsaddr("0.0.0.0", 4001)]),  # unspecified
        encode_txt([dnsaddr("10.0.0.9", 1, OTHER)]),  # names another peer
        encode_txt([f"dnsaddr=/ip4/10.0.0.2/udp/4001/quic-v1/p2p/{JS}"]),  # not TCP
        encode_txt([f"dnsaddr=/ip4/10.0.0.2/tcp/4001/ws/p2p/{JS}"]),  # not plain TCP
        encode_txt(["dnsaddr=not a multiaddr"]),
        encode_txt([dnsaddr("10.0.0.2", 4002)]),
        encode_txt([dnsaddr("10.0.0.2", 4001)]),  # a repeat
        encode_txt([dnsaddr("192.168.1.5", 4003, None)]),  # no /p2p/: it is this peer's
    ]
    assert read_peer(records, ME) == MdnsPeer(
        JS,
        (
            f"/ip4/10.0.0.2/tcp/4001/p2p/{JS}",
            f"/ip4/10.0.0.2/tcp/4002/p2p/{JS}",
            f"/ip4/192.168.1.5/tcp/4003/p2p/{JS}",
        ),
        None,
    )


def test_spec_shape_one_record_with_every_string_and_our_network_hint() -> None:
    record = encode_txt(["p2psync=home", dnsaddr("10.0.0.2", 4001), "DNSADDR=/dns4/nas.lan/tcp/9"])
    found = read_peer([record], ME)
    assert found == MdnsPeer(
        JS, (f"/ip4/10.0.0.2/tcp/4001/p2p/{JS}", f"/dns4/nas.lan/tcp/9/p2p/{JS}"), "home"
    )


def test_the_first_dnsaddr_naming_a_peer_decides_who_it_is() -> None:
    records = [
        encode_txt([dnsaddr("10.0.0.2", 4001, None)]),  # names nobody
        encode_txt([dnsaddr("10.0.0.3", 4001, OTHER)]),
        encode_txt([dnsaddr("10.0.0.2", 4001, JS)]),
    ]
    assert read_peer(records, ME) == MdnsPeer(
        OTHER,
        (f"/ip4/10.0.0.2/tcp/4001/p2p/{OTHER}", f"/ip4/10.0.0.3/tcp/4001/p2p/{OTHER}"),
        None,
    )


def test_no_peer_ourselves_or_no_usable_address_is_nothing() -> None:
    assert read_peer([], ME) is None
    assert read_peer([encode_txt(["p2psync=home"])], ME) is None
    assert read_peer([encode_txt([dnsaddr("10.0.0.2", 4001, None)])], ME) is None
    assert read_peer([encode_txt([dnsaddr("10.0.0.2", 4001, ME)])], ME) is None
    assert read_peer([encode_txt([dnsaddr("127.0.0.1", 4001)])], ME) is None


def test_conflicting_network_hints_count_as_none() -> None:
    record = encode_txt([dnsaddr("10.0.0.2", 4001), "p2psync=home", "p2psync=work"])
    found = read_peer([record], ME)
    assert found is not None and found.network is None
    same_twice = encode_txt([dnsaddr("10.0.0.2", 4001), "p2psync=home", "p2psync=home"])
    found = read_peer([same_twice], ME)
    assert found is not None and found.network == "home"


def test_only_the_first_max_addrs_dnsaddrs_are_read() -> None:
    records = [encode_txt([dnsaddr("10.0.1.1", 1000 + i)]) for i in range(MAX_ADDRS + 10)]
    found = read_peer(records, ME)
    assert found is not None and len(found.addrs) == MAX_ADDRS
    assert found.addrs[-1] == f"/ip4/10.0.1.1/tcp/{1000 + MAX_ADDRS - 1}/p2p/{JS}"


# ---------------------------------------------------------------- what we announce


def test_advertised_addrs_expand_unspecified_and_drop_loopback() -> None:
    listen = [f"/ip4/0.0.0.0/tcp/4001/p2p/{ME}", f"/ip4/127.0.0.1/tcp/4001/p2p/{ME}"]
    ips, port, maddrs = advertised_addrs(ME, listen, ["10.0.0.1", "192.168.1.2"])
    assert (ips, port) == (["10.0.0.1", "192.168.1.2"], 4001)
    assert maddrs == [f"/ip4/10.0.0.1/tcp/4001/p2p/{ME}", f"/ip4/192.168.1.2/tcp/4001/p2p/{ME}"]
    assert advertised_addrs(ME, [f"/ip4/127.0.0.1/tcp/5/p2p/{ME}"], ["10.0.0.1"]) == ([], 5, [])
    with pytest.raises(ValueError, match="no /ip4"):
        advertised_addrs(ME, ["/ip4/10.0.0.1/udp/5"], [])


def test_peer_names_are_random_32_lower_case_alphanumerics() -> None:
    names = {random_peer_name() for _ in range(20)}
    assert len(names) == 20
    assert all(len(n) == 32 and n.isalnum() and n == n.lower() for n in names)


# ---------------------------------------------------------------- zeroconf's cache


def _packet(name: str, rdatas: list[bytes], section: str) -> bytes:
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, 120, name), 0)
    for rdata in rdatas:
        record = DNSText(name, _TYPE_TXT, _CLASS_IN, 120, rdata)
        if section == "answers":
            out.add_answer_at_time(record, 0)
        else:
            out.add_additional_answer(record)
    (packet,) = out.packets()
    return packet


class _Seen:
    def __init__(self) -> None:
        self.found: list[tuple[str, list[str]]] = []
        self.sent: list[DNSOutgoing] = []

    def discovery(self, packets: list[bytes], network: str = "home") -> _Discovery:
        cache = DNSCache()
        for packet in packets:
            cache.async_add_records(DNSIncoming(packet).answers())
        zc = cast(Zeroconf, SimpleNamespace(cache=cache, send=self.sent.append))
        return _Discovery(zc, f"us.{SERVICE_TYPE}", ME, network, self.on_found)

    def on_found(self, peer: str, addrs: list[str]) -> None:
        self.found.append((peer, addrs))


@pytest.mark.parametrize("section", ["answers", "additionals"])
def test_every_cached_txt_record_is_read_answers_and_additionals_alike(section: str) -> None:
    name = f"rand0mjsname.{SERVICE_TYPE}"
    rdatas = [encode_txt([dnsaddr("10.0.0.2", port)]) for port in (4001, 4002, 4003)]
    seen = _Seen()
    disc = seen.discovery([_packet(name, rdatas, section)])
    disc.evaluate(name)
    addrs = [f"/ip4/10.0.0.2/tcp/{port}/p2p/{JS}" for port in (4001, 4002, 4003)]
    assert seen.found == [(JS, addrs)]
    disc.evaluate(name)  # nothing new: not reported again
    disc.evaluate(name, refresh=True)  # the periodic refresh: reported again
    assert seen.found == [(JS, addrs), (JS, addrs)]


def test_a_hint_naming_another_network_is_skipped_and_our_own_instance_ignored() -> None:
    theirs, ours = f"theirs.{SERVICE_TYPE}", f"us.{SERVICE_TYPE}"
    seen = _Seen()
    disc = seen.discovery(
        [
            _packet(theirs, [encode_txt([dnsaddr("10.0.0.2", 1), "p2psync=work"])], "answers"),
            _packet(ours, [encode_txt([dnsaddr("10.0.0.1", 1, OTHER)])], "answers"),
        ]
    )
    disc.evaluate(theirs)
    disc.evaluate(ours)
    assert seen.found == []
    assert disc.reported[theirs].network == "work"  # remembered, never dialed


def test_a_ptr_without_txt_asks_for_the_txt_behind_a_ptr_question() -> None:
    name = f"quiet.{SERVICE_TYPE}"
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, 120, name), 0)
    seen = _Seen()
    disc = seen.discovery(out.packets())

    async def main() -> None:
        disc.evaluate(name)
        disc.evaluate(name)  # asked a moment ago: not again yet
        await trio.sleep(2.5)
        disc.evaluate(name)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen.found == [] and len(seen.sent) == 2
    questions: list[Any] = DNSIncoming(seen.sent[0].packets()[0]).questions
    assert [(q.name, q.type) for q in questions] == [(SERVICE_TYPE, _TYPE_PTR), (name, _TYPE_TXT)]


def test_a_flood_of_instance_names_is_bounded_and_a_refresh_asks_nothing() -> None:
    names = [f"flood{i}.{SERVICE_TYPE}" for i in range(MAX_INSTANCES + 300)]
    seen = _Seen()
    disc = seen.discovery([])

    async def main() -> None:
        for name in names:
            disc.evaluate(name)  # a PTR without TXT: asked once each
        assert len(disc.asked) == MAX_INSTANCES
        sent = len(seen.sent)
        for name in list(disc.asked):
            disc.evaluate(name, refresh=True)  # what the periodic refresh does
        assert len(seen.sent) == sent  # expired names are forgotten, not asked again

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert not disc.asked and len(seen.sent) == len(names)

    peers = [pid(i) for i in range(10, MAX_INSTANCES + 60)]
    rdatas = [encode_txt([dnsaddr("10.0.0.2", 4001, peer)]) for peer in peers]
    packets = [_packet(f"p{i}.{SERVICE_TYPE}", [r], "answers") for i, r in enumerate(rdatas)]
    disc = seen.discovery(packets)
    for i in range(len(rdatas)):
        disc.evaluate(f"p{i}.{SERVICE_TYPE}")
    assert len(disc.reported) == MAX_INSTANCES
