"""py-libp2p asks for the host's addresses for every RPC; we build them once a second."""

from __future__ import annotations

from typing import Any

from p2psync.net import gossip


class _Host:
    def __init__(self) -> None:
        self.builds = 0

    def get_addrs(self) -> list[str]:
        self.builds += 1
        return [] if self.builds == 1 else [f"/ip4/10.0.0.1/tcp/{self.builds}"]


def test_the_address_list_is_built_once_per_ttl_not_per_rpc(monkeypatch: Any) -> None:
    clock = [100.0]
    monkeypatch.setattr(gossip.time, "monotonic", lambda: clock[0])
    host = _Host()
    gossip._remember_addrs(host)  # type: ignore[arg-type]
    assert host.get_addrs() == []  # not listening yet: never kept
    assert host.get_addrs() == ["/ip4/10.0.0.1/tcp/2"]
    for _ in range(100):  # one per RPC sent
        assert host.get_addrs() == ["/ip4/10.0.0.1/tcp/2"]
    assert host.builds == 2
    clock[0] += gossip.ADDRS_TTL
    assert host.get_addrs() == ["/ip4/10.0.0.1/tcp/3"]  # a new address shows within the TTL
    assert host.builds == 3
