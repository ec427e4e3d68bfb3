"""A live entry's signature is verified once on a node, and only its exact bytes pass."""

from __future__ import annotations

import pytest
from nacl.signing import VerifyKey

from p2psync.core import protocol
from p2psync.core.actions import Persist
from p2psync.core.entry import CheckedSignatures, entry_hash
from p2psync.core.reasons import Reason
from p2psync.node.validation import TopicChecks
from tests.unit.test_core_engine import Node, X, chain, kinds, rejected


@pytest.fixture
def verifies(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The messages VerifyKey.verify was asked to check."""
    calls: list[bytes] = []
    real = VerifyKey.verify

    def counted(self: VerifyKey, smessage: bytes, signature: bytes | None = None) -> bytes:
        calls.append(smessage)
        return real(self, smessage, signature)

    monkeypatch.setattr(VerifyKey, "verify", counted)
    return calls


def test_a_live_entry_the_validator_verified_is_not_verified_again(verifies: list[bytes]) -> None:
    node = Node(1)
    checks = TopicChecks(node.engine.inner.checked_signatures)
    entry = chain(X, 1)[0]
    assert checks.live(protocol.encode(protocol.Live((entry.raw,)))) is None
    assert len(verifies) == 1
    (persist,) = kinds(node.live(entry), Persist)
    assert [a.entry.raw for a in persist.entries] == [entry.raw]
    assert len(verifies) == 1  # the engine checked it again before: 2 in all


def test_only_the_bytes_that_verified_pass(verifies: list[bytes]) -> None:
    node = Node(1)
    checks = TopicChecks(node.engine.inner.checked_signatures)
    entry = chain(X, 1)[0]
    assert checks.live(protocol.encode(protocol.Live((entry.raw,)))) is None
    forged = bytearray(entry.raw)
    forged[-5] ^= 0x01  # same origin, seq and op: another signature
    actions = node.live(bytes(forged))
    assert rejected(actions) == {Reason.SIGNATURE}
    assert not kinds(actions, Persist)
    assert not node.engine.holds(entry.origin, 0)
    assert len(verifies) == 2


def test_the_record_keeps_the_newest_hashes(verifies: list[bytes]) -> None:
    checked = CheckedSignatures(capacity=2)
    entries = chain(X, 3)
    for entry in entries:
        checked.verify(entry, entry_hash(entry.raw))
    assert len(checked) == 2 and len(verifies) == 3
    assert entry_hash(entries[0].raw) not in checked
    checked.verify(entries[2], entry_hash(entries[2].raw))
    assert len(verifies) == 3
    checked.verify(entries[0], entry_hash(entries[0].raw))  # forgotten: verified again
    assert len(verifies) == 4
