"""The checks the gossipsub router runs before it delivers or forwards (issue 12)."""

from __future__ import annotations

from nacl.signing import SigningKey

from p2psync.core import protocol
from p2psync.core.entry import ZERO_HASH, sign_entry
from p2psync.core.query import Query
from p2psync.core.reasons import Reason
from p2psync.node.validation import TopicChecks

KEY = SigningKey(b"\x31" * 32)
GOOD = sign_entry(KEY, 0, ZERO_HASH, 1, b"{}").raw


def test_live_topic_lets_through_only_signed_live_entries() -> None:
    checks = TopicChecks()
    assert checks.live(protocol.encode(protocol.Live((GOOD,)))) is None
    forged = GOOD[:-1] + bytes([GOOD[-1] ^ 1])
    assert checks.live(protocol.encode(protocol.Live((forged,)))) is Reason.SIGNATURE
    assert checks.live(protocol.encode(protocol.Live((b"short",)))) is Reason.MALFORMED
    assert checks.live(b"\x02\x01" + GOOD) is Reason.VERSION
    assert checks.live(protocol.encode(Query(1))) is Reason.UNEXPECTED


def test_pair_topic_refuses_live_and_undecodable_messages() -> None:
    checks = TopicChecks()
    assert checks.pair(protocol.encode(protocol.Ack(1, 2))) is None
    assert checks.pair(protocol.encode(protocol.Live((GOOD,)))) is Reason.UNEXPECTED
    assert checks.pair(bytes([protocol.PROTOCOL_VERSION, 0x42])) is Reason.UNKNOWN_KIND


def test_query_topic_takes_queries_only() -> None:
    checks = TopicChecks()
    assert checks.query(protocol.encode(Query(7))) is None
    assert checks.query(protocol.encode(protocol.Ack(1, 2))) is Reason.UNEXPECTED
    assert checks.query(b"") is Reason.MALFORMED
