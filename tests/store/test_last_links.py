"""The last entry committed per origin links without a query (store/last_links.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from pyroaring import BitMap64

import p2psync.core.recipe_book as recipe_book
from p2psync.core.actions import Accepted, Persist
from p2psync.core.entry import sign_entry
from p2psync.core.reasons import Source
from p2psync.store.last_links import LastLinks
from p2psync.store.memory import MemoryStore
from p2psync.store.sqlite import SqliteStore
from tests.store.store_helper import entry_stream, persists

SEED = 7


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore.open(tmp_path / "store.db") as opened:
        yield opened


def _statements(store: SqliteStore) -> list[str]:
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    return seen


def test_the_last_entry_of_each_origin_links_without_a_query(store: SqliteStore) -> None:
    accepted = list(itertools.islice(entry_stream(SEED), 600))
    memory = MemoryStore()
    for persist in persists(accepted, batch=1, source=Source.LIVE):  # live ops, one by one
        store.commit(persist)
        memory.commit(persist)
    last: dict[bytes, int] = {}
    for item in accepted:
        last[item.entry.origin] = item.entry.seq
    seen = _statements(store)
    for origin, seq in last.items():
        assert store.entry_links(origin, [seq]) == memory.entry_links(origin, [seq])
    assert seen == []
    origin, seq = next(iter(last.items()))
    assert store.entry_links(origin, [seq - 1]) == memory.entry_links(origin, [seq - 1])
    assert store.entry_links(origin, [seq - 1, seq]) == memory.entry_links(origin, [seq - 1, seq])
    assert len(seen) == 2  # anything but the last entry alone asks the log


def test_an_entry_refused_by_the_log_is_not_taken_for_the_stored_one(tmp_path: Path) -> None:
    # A commit whose row was there already keeps the row; its links, not the
    # new entry's, are the ones to answer with.
    accepted = list(itertools.islice(entry_stream(SEED, authors=1), 20))
    with SqliteStore.open(tmp_path / "store.db") as store:
        for persist in persists(accepted):
            store.commit(persist)
    with SqliteStore.open(tmp_path / "store.db") as store:  # nothing noted in memory yet
        stored = accepted[-1].entry
        key = SigningKey(bytes([SEED, 0]) * 16)
        assert bytes(key.verify_key) == stored.origin
        other = sign_entry(key, stored.seq, stored.prev, stored.hlc + 1, b'{"k":"unknown"}')
        assert other.raw != stored.raw
        held = {stored.origin: BitMap64(range(stored.seq + 1))}
        store.commit(Persist((Accepted(other, None),), held, Source.BACKFILL, "peer"))
        assert store.entry_links(stored.origin, [stored.seq]) == {
            stored.seq: (stored.hash(), stored.prev)
        }
        assert store.read_raw(stored.origin, [stored.seq]) == {stored.seq: stored.raw}
    # The simulator's store keeps the first row too.
    memory = MemoryStore()
    for persist in persists(accepted):
        memory.commit(persist)
    size = memory.size_bytes()
    memory.commit(Persist((Accepted(other, None),), held, Source.BACKFILL, "peer"))
    assert memory.read_raw(stored.origin, [stored.seq]) == {stored.seq: stored.raw}
    assert memory.entry_links(stored.origin, [stored.seq]) == {
        stored.seq: (stored.hash(), stored.prev)
    }
    assert memory.size_bytes() == size


def test_a_failed_commit_leaves_the_copies_as_they_were(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = list(itertools.islice(entry_stream(SEED, authors=1), 40))
    first, second = persists(accepted, batch=20)
    store.commit(first)

    def failing_merge(*args: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(recipe_book, "merge", failing_merge)
    with pytest.raises(RuntimeError, match="boom"):
        store.commit(second)
    origin, held_last, lost_last = accepted[0].entry.origin, 19, 39
    seen = _statements(store)
    assert store.entry_links(origin, [held_last]) == {
        held_last: (accepted[19].entry.hash(), accepted[19].entry.prev)
    }
    assert seen == []
    assert store.entry_links(origin, [lost_last]) == {}  # asked the log, which lacks it


def test_the_copies_start_over_past_their_capacity() -> None:
    accepted = list(itertools.islice(entry_stream(SEED, authors=5), 50))
    links = LastLinks(capacity=3)
    links.committed(accepted)
    held = [item for item in accepted if links.links(item.entry.origin, [item.entry.seq])]
    assert 0 < len({item.entry.origin for item in held}) <= 3
