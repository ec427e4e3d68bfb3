"""Gossipsub topic names for one p2psync network.

Every topic of a network shares the prefix ``/p2psync/<network>/v4/`` so that
separate recipe books on one LAN (``--network``) never see each other's
traffic, and a future wire format can move to ``v5`` side by side.

- ``live_topic(network)``: every node publishes each new operation here.
- ``sync_topic(network, a, b)``: anti-entropy between exactly two peers; the
  name is built from the sorted pair, so both ends compute the same string
  without agreeing on who goes first.
- ``query_topic(network)``: ``ls r all`` requests, answered to the asker only.
- ``networks_of(topics)``: which networks a peer is in, from its subscriptions.
- ``pair_members(topic)``: the two peers of a sync topic (None for any other).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

VERSION = "v4"  # follows protocol.PROTOCOL_VERSION: nodes of two versions never share a topic
_NETWORK_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_network_name(name: str) -> str:
    """``name`` if it is a valid network name (``--network``), else ValueError.

    1-64 of ``A-Z a-z 0-9 . _ -``: the name goes into topic names, the mDNS
    TXT record and a folder name, and no "/" may let two networks share a
    topic (network "a/b" vs. network "a" + suffix "b"); "." and ".." would
    name the discovery folder's own or parent directory.
    """
    if not _NETWORK_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"invalid network name {name!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return name


def _check_part(kind: str, value: str) -> str:
    # A "/" inside a component would let two different inputs map to one
    # topic name (peer "a/b" vs. peer "a" + suffix "b").
    if not value or "/" in value or any(ch.isspace() for ch in value):
        raise ValueError(f"invalid {kind} {value!r}: must be non-empty, no '/' or spaces")
    return value


def topic_prefix(network: str) -> str:
    return f"/p2psync/{check_network_name(network)}/{VERSION}"


def live_topic(network: str) -> str:
    return f"{topic_prefix(network)}/live"


def sync_topic(network: str, peer_a: str, peer_b: str) -> str:
    a = _check_part("peer id", peer_a)
    b = _check_part("peer id", peer_b)
    if a == b:
        raise ValueError(f"a sync topic needs two different peers, got {a!r} twice")
    low, high = sorted((a, b))
    return f"{topic_prefix(network)}/sync/{low}/{high}"


def query_topic(network: str) -> str:
    return f"{topic_prefix(network)}/query"


_LIVE_TOPIC = re.compile(r"/p2psync/([A-Za-z0-9._-]{1,64})/(v[0-9]{1,4})/live")


def networks_of(topics: Iterable[str]) -> list[str]:
    """The p2psync networks whose live topic is among ``topics`` (a peer's
    subscriptions), sorted: ``"<name>"`` for this protocol version and
    ``"<name>/<version>"`` for another, which shares no topic with us either."""
    found: set[str] = set()
    for topic in topics:
        if (match := _LIVE_TOPIC.fullmatch(topic)) is not None:
            name, version = match.groups()
            found.add(name if version == VERSION else f"{name}/{version}")
    return sorted(found)


_SYNC_TOPIC = re.compile(r"/p2psync/[A-Za-z0-9._-]{1,64}/v[0-9]{1,4}/sync/([^/\s]+)/([^/\s]+)")


def pair_members(topic: str) -> tuple[str, str] | None:
    """The two peer ids a sync topic is for, or None if ``topic`` is not one
    (of any network or protocol version)."""
    match = _SYNC_TOPIC.fullmatch(topic)
    return None if match is None else (match.group(1), match.group(2))
