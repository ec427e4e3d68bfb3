"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.e2e.helpers import NodeProcess


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    """Nodes a test starts (via helpers.start_node); killed when it ends."""
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.stop(signal.SIGKILL)
