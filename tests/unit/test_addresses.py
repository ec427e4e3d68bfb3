"""One rule per concept: loopback hosts, peer ids in multiaddrs, network names."""

from __future__ import annotations

import pytest

from p2psync.net.addresses import has_peer_id, is_loopback, peer_id_of, split_peer_addr
from p2psync.net.topics import check_network_name

PEER = "12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org", ""])
def test_hosts_that_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_peer_id_is_the_trailing_p2p_part() -> None:
    addr = f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"
    assert has_peer_id(addr)
    assert peer_id_of(addr) == PEER
    assert split_peer_addr(addr) == ("/ip4/10.0.0.1/tcp/4001", PEER)


@pytest.mark.parametrize("addr", ["/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.1/tcp/4001/p2p/0OIl"])
def test_addresses_without_a_valid_peer_id(addr: str) -> None:
    assert not has_peer_id(addr)
    with pytest.raises(ValueError):
        peer_id_of(addr)


@pytest.mark.parametrize("name", ["default", "home-2", "a.b_c"])
def test_valid_network_names(name: str) -> None:
    assert check_network_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "x" * 65])
def test_invalid_network_names(name: str) -> None:
    with pytest.raises(ValueError):
        check_network_name(name)
