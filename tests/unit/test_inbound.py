"""A message the engine fails on costs the message, never the daemon."""

from __future__ import annotations

import logging

import pytest

from p2psync.core.actions import Action, Dropped
from p2psync.core.reasons import Drop, Reason
from p2psync.node.inbound import engine_verdict
from tests.sim.simulator import SimObserver


def test_an_engine_failure_drops_the_message_and_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = SimObserver()

    def failing() -> list[Action]:
        raise TypeError("unhashable type: 'list'")

    with caplog.at_level(logging.ERROR):
        assert engine_verdict("peer-x", failing, observer) == []
    assert observer.dropped_reasons.get(Drop.INTERNAL_ERROR) == 1
    assert "peer-x" in caplog.text and "TypeError" in caplog.text  # with its traceback


def test_the_engine_verdict_passes_through_and_cancellation_is_not_swallowed() -> None:
    observer = SimObserver()
    actions: list[Action] = [Dropped("peer-x", Reason.MALFORMED, "bad")]
    assert engine_verdict("peer-x", lambda: actions, observer) is actions
    assert not observer.dropped_reasons

    def interrupted() -> list[Action]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine_verdict("peer-x", interrupted, observer)
