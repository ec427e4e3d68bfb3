"""Items, fingerprints and range reconciliation (items.py, reconcile.py).

The reconciliation is driven here as a pure two-party exchange, no engine:
A asks with `whole_range`, B `answer`s, A `follow_up`s, until nothing is
pending. Every message goes through encode/decode, so what one side builds
is what the other side's decoder accepts.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from pyroaring import BitMap64

from p2psync.core import protocol, reconcile
from p2psync.core.actions import Accepted, Persist
from p2psync.core.entry import ZERO_HASH, Entry, sign_entry
from p2psync.core.ids import make_recipe_id
from p2psync.core.items import (
    FINGERPRINT_MODULUS,
    MAX_BOUND,
    MIN_BOUND,
    NOT_FORKED,
    Item,
    ItemIndex,
)
from p2psync.core.ops import Op, RecipeFields, encode_op
from p2psync.core.progress import MAX_AHEAD, Progress, contiguous_prefix
from p2psync.core.protocol import (
    FROM_RESPONDER,
    MAX_MESSAGE_BYTES,
    Claim,
    DoneRange,
    FingerprintRange,
    ItemsRange,
    Recon,
    Want,
)
from p2psync.core.reasons import Source
from p2psync.core.reconcile import (
    FANOUT,
    LEAF_ITEMS,
    MAX_ANSWER_ITEMS,
    Pending,
    answer,
    claim_for,
    follow_up,
    pack_claims,
    pack_ranges,
    whole_range,
)
from p2psync.store.memory import MemoryStore

HLC0 = 1_800_000_000_000 << 16

# ------------------------------------------------------------------ real entries

KEYS = [SigningKey(bytes([0x60 + i]) * 32) for i in range(6)]
ORIGINS = [bytes(k.verify_key) for k in KEYS]
CHAIN_LENGTH = 30


def _chain(key: SigningKey, n: int, *, fork_from: int | None = None) -> list[Accepted]:
    """n signed create entries; from `fork_from` on, a different (forked) content."""
    origin = bytes(key.verify_key)
    prev, out = ZERO_HASH, []
    for seq in range(n):
        name = f"dish {seq}" if fork_from is None or seq < fork_from else f"other dish {seq}"
        op = Op("create", make_recipe_id(origin, seq), None, RecipeFields(name, "eggs", "mix"))
        entry = sign_entry(key, seq, prev, HLC0 + seq, encode_op(op))
        prev = entry.hash()
        out.append(Accepted(entry, op))
    return out


CHAINS = {origin: _chain(key, CHAIN_LENGTH) for origin, key in zip(ORIGINS, KEYS, strict=True)}


@dataclass
class Holder:
    """A node's holdings: progress, and a memory store with the entries committed."""

    progress: Progress = field(default_factory=Progress)
    store: MemoryStore = field(default_factory=MemoryStore)

    def commit(self, accepted: Iterable[Accepted]) -> None:
        batch = tuple(accepted)
        for a in batch:
            self.progress.add(a.entry.origin, [a.entry.seq])
        touched = {a.entry.origin for a in batch}
        progress = {o: BitMap64(self.progress.held(o)) for o in touched}
        self.store.commit(Persist(batch, progress, Source.BACKFILL, "peer"))

    def index(self) -> ItemIndex:
        return ItemIndex(self.progress, self.store)


def _holder(held: Mapping[bytes, Iterable[int]], chains: Mapping[bytes, list[Accepted]] = CHAINS):
    holder = Holder()
    holder.commit(chains[origin][seq] for origin, seqs in held.items() for seq in seqs)
    return holder


def _entry(origin: bytes, seq: int) -> Entry:
    return CHAINS[origin][seq].entry


SAMPLE = {
    ORIGINS[0]: range(10),
    ORIGINS[1]: [0, 1, 2, 5, 7, 20],
    ORIGINS[2]: [3, 4],
    ORIGINS[3]: [0],
    ORIGINS[4]: range(CHAIN_LENGTH),
}


def _all_bounds(index: ItemIndex) -> list[bytes]:
    keys = sorted(index.origins())
    between = [bytes(k[:-1]) + bytes([k[-1] ^ 1]) for k in keys]  # bounds that are not origins
    return sorted({MIN_BOUND, MAX_BOUND, *keys, *between})


def test_items_describe_what_is_held() -> None:
    index = _holder(SAMPLE).index()
    assert len(index) == len(SAMPLE)
    item = index.get(ORIGINS[1])
    assert item is not None
    assert (item.prefix, set(item.beyond), item.forked_at) == (3, {5, 7, 20}, NOT_FORKED)
    assert item.head == _entry(ORIGINS[1], 2).hash()
    assert item.count() == 6
    item = index.get(ORIGINS[2])
    assert item is not None and (item.prefix, item.head, set(item.beyond)) == (0, ZERO_HASH, {3, 4})
    item = index.get(ORIGINS[4])
    assert item is not None and item.prefix == CHAIN_LENGTH and not item.beyond
    assert item.head == _entry(ORIGINS[4], CHAIN_LENGTH - 1).hash()
    assert index.get(ORIGINS[5]) is None


def test_fingerprint_is_the_sum_of_item_digests() -> None:
    index = _holder(SAMPLE).index()
    bounds = _all_bounds(index)
    for lower, upper in itertools.combinations(bounds, 2):
        items = list(index.items(lower, upper))
        assert all(lower <= i.origin < upper for i in items)
        assert [i.origin for i in items] == sorted(i.origin for i in items)
        fp = index.fingerprint(lower, upper)
        assert fp.count == len(items)
        assert fp.value == sum(i.digest() for i in items) % FINGERPRINT_MODULUS
    empty = index.fingerprint(bounds[1], bounds[1])
    assert (empty.value, empty.count) == (0, 0)
    whole = whole_range(index)
    assert (whole.lower, whole.upper, whole.count) == (MIN_BOUND, MAX_BOUND, len(SAMPLE))


def test_equal_holdings_have_equal_fingerprints() -> None:
    one = _holder(SAMPLE)
    other = Holder()  # the same entries, arriving in another order and grouping
    pairs = [(o, s) for o, seqs in SAMPLE.items() for s in seqs]
    random.Random(3).shuffle(pairs)
    for start in range(0, len(pairs), 7):
        other.commit(CHAINS[o][s] for o, s in pairs[start : start + 7])
    a, b = one.index(), other.index()
    bounds = _all_bounds(a)
    for lower, upper in itertools.combinations(bounds, 2):
        assert a.fingerprint(lower, upper) == b.fingerprint(lower, upper)
    assert answer(b, [whole_range(a)]) == [DoneRange(MIN_BOUND, MAX_BOUND)]


@pytest.mark.parametrize("fork_seq", [9, 4, 0])
def test_a_fork_at_the_same_prefix_changes_the_fingerprint(fork_seq: int) -> None:
    """Two nodes hold 10 entries of one origin, differing in content from `fork_seq`."""
    origin = ORIGINS[0]
    forked_chains = {**CHAINS, origin: _chain(KEYS[0], CHAIN_LENGTH, fork_from=fork_seq)}
    assert forked_chains[origin][fork_seq].entry.raw != _entry(origin, fork_seq).raw
    a = _holder(SAMPLE).index()
    b = _holder(SAMPLE, forked_chains).index()
    ours, theirs = a.get(origin), b.get(origin)
    assert ours is not None and theirs is not None
    assert (ours.prefix, ours.beyond) == (theirs.prefix, theirs.beyond) == (10, BitMap64())
    assert ours.head != theirs.head
    fa, fb = a.fingerprint(MIN_BOUND, MAX_BOUND), b.fingerprint(MIN_BOUND, MAX_BOUND)
    assert fa.count == fb.count and fa.value != fb.value
    for other in ORIGINS[1:5]:  # every other item is the same
        assert a.get(other) == b.get(other)
    # Reconciling finds it, and the claim asks for all of B's prefix, so that
    # the first entry that differs (where the fork starts) is proven.
    outcome = exchange(a, b)
    assert [c.origin for c in outcome.claims] == [origin]
    claim = outcome.claims[0]
    assert (claim.prefix, claim.beyond, claim.want_proof) == (0, BitMap64(), False)
    assert set(claim.missing_from(BitMap64(range(10)))) == set(range(10))


def test_refresh_follows_new_seqs() -> None:
    holder = _holder(SAMPLE)
    index = holder.index()
    origin = ORIGINS[1]  # holds 0, 1, 2, 5, 7, 20
    history = [index.fingerprint(MIN_BOUND, MAX_BOUND)]

    def add(seqs: list[int]) -> Item:
        holder.commit(CHAINS[origin][s] for s in seqs)
        index.refresh(origin)
        item = index.get(origin)
        assert item is not None
        history.append(index.fingerprint(MIN_BOUND, MAX_BOUND))
        assert history[-1] != history[-2]
        assert history[-1] == holder.index().fingerprint(MIN_BOUND, MAX_BOUND)  # as if rebuilt
        return item

    item = add([25])
    assert (item.prefix, set(item.beyond)) == (3, {5, 7, 20, 25})
    item = add([3, 4])  # the gap fills: the prefix runs on through 5
    assert (item.prefix, set(item.beyond)) == (6, {7, 20, 25})
    assert item.head == _entry(origin, 5).hash()
    item = add([6])
    assert (item.prefix, set(item.beyond)) == (8, {20, 25})
    assert item.head == _entry(origin, 7).hash()
    # A new origin enters the index, in order.
    holder.commit(CHAINS[ORIGINS[5]][:2])
    index.refresh(ORIGINS[5])
    assert len(index) == len(SAMPLE) + 1
    assert index.fingerprint(MIN_BOUND, MAX_BOUND) == holder.index().fingerprint(
        MIN_BOUND, MAX_BOUND
    )


def test_refresh_takes_known_hashes_before_the_commit() -> None:
    holder = _holder(SAMPLE)
    index = holder.index()
    origin = ORIGINS[3]  # holds seq 0
    new = [CHAINS[origin][1], CHAINS[origin][2]]
    holder.progress.add(origin, [1, 2])  # accepted; the Persist is not committed yet
    index.refresh(origin, {a.entry.seq: a.entry_hash() for a in new})
    item = index.get(origin)
    assert item is not None and (item.prefix, item.head) == (3, new[1].entry_hash())
    before = index.fingerprint(MIN_BOUND, MAX_BOUND)
    holder.store.commit(Persist(tuple(new), {}, Source.BACKFILL, "peer"))
    assert holder.index().fingerprint(MIN_BOUND, MAX_BOUND) == before


def test_a_head_not_yet_readable_is_retried_on_use() -> None:
    holder = _holder(SAMPLE)
    index = holder.index()
    origin = ORIGINS[3]
    holder.progress.add(origin, [1])  # held, but neither committed nor handed over
    index.refresh(origin)
    new = CHAINS[origin][1]
    holder.store.commit(Persist((new,), {}, Source.BACKFILL, "peer"))
    item = index.get(origin)
    assert item is not None and (item.prefix, item.head) == (2, new.entry_hash())
    assert index.fingerprint(MIN_BOUND, MAX_BOUND) == holder.index().fingerprint(
        MIN_BOUND, MAX_BOUND
    )


def test_an_answer_never_carries_an_item_its_peer_refuses() -> None:
    holder = _holder(SAMPLE)
    index = holder.index()
    holder.progress.add(ORIGINS[3], [1])  # its commit is still in flight
    index.refresh(ORIGINS[3])
    replies = answer(index, [FingerprintRange(MIN_BOUND, MAX_BOUND, 0, 0)])
    protocol.decode(protocol.encode(Recon(1, FROM_RESPONDER, tuple(replies))))


def test_set_forked_hides_seqs_from_the_fork_on() -> None:
    holder = _holder(SAMPLE)
    index = holder.index()
    origin = ORIGINS[1]  # holds 0, 1, 2, 5, 7, 20
    before = index.get(origin)
    index.set_forked(origin, 6)
    item = index.get(origin)
    assert item is not None and before is not None
    assert (item.prefix, set(item.beyond), item.forked_at) == (3, {5}, 6)
    assert item.digest() != before.digest()
    assert index.forked_at(origin) == 6
    index.set_forked(origin, 2)
    item = index.get(origin)
    assert item is not None and (item.prefix, set(item.beyond), item.forked_at) == (2, set(), 2)
    assert item.head == _entry(origin, 1).hash()
    # Nothing of it counts, but the item stays: it is how peers learn of the proof.
    index.set_forked(origin, 0)
    item = index.get(origin)
    assert item is not None and len(index) == len(SAMPLE)
    assert (item.prefix, item.head, set(item.beyond), item.forked_at) == (0, ZERO_HASH, set(), 0)
    assert item.count() == 0
    # Likewise for an origin we never held anything of.
    index.set_forked(ORIGINS[5], 4)
    item = index.get(ORIGINS[5])
    assert item is not None and (item.prefix, item.forked_at) == (0, 4)
    assert len(index) == len(SAMPLE) + 1
    replies = answer(index, [FingerprintRange(MIN_BOUND, MAX_BOUND, 0, 0)])
    decoded = protocol.decode(protocol.encode(Recon(1, FROM_RESPONDER, tuple(replies))))
    assert isinstance(decoded, Recon)


def test_a_fork_only_the_responder_knows_is_asked_for() -> None:
    held = {_origin(i): BitMap64(range(10)) for i in range(200)}
    a = synthetic_index(held)
    b = synthetic_index({o: BitMap64(s) for o, s in held.items()})
    b.set_forked(_origin(7), 3)  # B holds a proof: seqs 3.. of origin 7 do not count
    b.set_forked(_origin(10**6), 0)  # and one for an origin A never heard of
    outcome = exchange(a, b)
    claims = {c.origin: c for c in outcome.claims}
    assert set(claims) == {_origin(7), _origin(10**6)}
    assert claims[_origin(7)] == Claim(_origin(7), 9, BitMap64(), True)
    assert claims[_origin(10**6)] == Claim(_origin(10**6), 0, BitMap64(), True)
    # The other way round, B has nothing to ask A for: A's extra seqs are past B's fork.
    assert exchange(b, a).claims == []


# ------------------------------------------------------------------ synthetic holdings


class SyntheticLog:
    """A LogReader whose entry hashes depend on (origin, seq) and, past a fork, a variant."""

    def __init__(self, forks: Mapping[bytes, int] | None = None) -> None:
        self.forks = dict(forks or {})

    def entry_links(self, origin: bytes, seqs: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
        out = {}
        for seq in seqs:
            variant = b"\x01" if seq >= self.forks.get(origin, NOT_FORKED) else b"\x00"
            out[seq] = (b"h" + origin[:22] + variant + seq.to_bytes(8, "big"), b"")
        return out

    def read_raw(self, origin: bytes, seqs: Iterable[int]) -> dict[int, bytes]:
        return {}


def _origin(n: int) -> bytes:
    # Spread over the key space (like public keys), never zero.
    return (n * 0x9E3779B97F4A7C15 % 2**64).to_bytes(8, "big") * 3 + (n + 1).to_bytes(8, "big")


def synthetic_index(
    held: Mapping[bytes, Iterable[int] | BitMap64], forks: Mapping[bytes, int] | None = None
) -> ItemIndex:
    progress = Progress({o: s if isinstance(s, BitMap64) else BitMap64(s) for o, s in held.items()})
    return ItemIndex(progress, SyntheticLog(forks))


@dataclass
class Outcome:
    claims: list[Claim]
    rounds: int  # question/answer round trips
    questions: list[list[protocol.Range]]  # A's questions, per round
    answers: list[list[protocol.Range]]  # B's answers, per round
    messages: int
    answer_items: list[int] = field(default_factory=list)  # items in each answer() call


def _wire(ranges: list[protocol.Range], flags: int) -> list[tuple[protocol.Range, ...]]:
    """Pack ranges into RECON messages, check they fit, and decode them as the peer does."""
    received = []
    for group in pack_ranges(ranges):
        data = protocol.encode(Recon(7, flags, group))
        assert len(data) <= MAX_MESSAGE_BYTES
        decoded = protocol.decode(data)
        assert isinstance(decoded, Recon) and decoded.ranges == group
        received.append(decoded.ranges)
    return received


def exchange(a: ItemIndex, b: ItemIndex, max_rounds: int = 40) -> Outcome:
    """A reconciles with B, every message through the wire; A's claims and the counts."""
    pending = Pending()
    question = whole_range(a)
    pending.add(question.lower, question.upper)
    questions: list[protocol.Range] = [question]
    outcome = Outcome([], 0, [], [], 0)
    while questions:
        outcome.rounds += 1
        assert outcome.rounds <= max_rounds, "reconciliation does not terminate"
        outcome.questions.append(questions)
        next_questions: list[protocol.Range] = []
        answered: list[protocol.Range] = []
        for message in _wire(questions, 0):
            outcome.messages += 1
            replies = answer(b, message)
            answered.extend(replies)
            outcome.answer_items.append(
                sum(len(r.items) for r in replies if isinstance(r, ItemsRange))
            )
            for reply_message in _wire(replies, FROM_RESPONDER):
                outcome.messages += 1
                asked, claims = follow_up(a, pending, reply_message)
                next_questions.extend(asked)
                outcome.claims.extend(claims)
        outcome.answers.append(answered)
        questions = next_questions
    assert not pending, "a range A asked about was never answered"
    for group in pack_claims(outcome.claims):  # the WANTs fit, and decode
        data = protocol.encode(Want(7, True, group))
        assert len(data) <= MAX_MESSAGE_BYTES
        assert protocol.decode(data) == Want(7, True, group)
    return outcome


def _check_claims(
    outcome: Outcome, a_held: Mapping[bytes, BitMap64], b_held: Mapping[bytes, BitMap64]
) -> None:
    """Without forks: a claim exactly where B holds a seq A lacks, asking for just that."""
    origins = [c.origin for c in outcome.claims]
    assert len(origins) == len(set(origins)), "an origin claimed twice"
    empty = BitMap64()
    lacking = {o for o, held in b_held.items() if held - a_held.get(o, empty)}
    assert set(origins) == lacking
    for claim in outcome.claims:
        ours = a_held.get(claim.origin, empty)
        theirs = b_held[claim.origin]
        prefix = contiguous_prefix(ours)
        assert claim.prefix == max(0, prefix - 1)
        assert not claim.want_proof
        # B sends what A lacks, and its version of A's last prefix seq (a fork check).
        expected = (theirs - ours) | (theirs & BitMap64([prefix - 1] if prefix else []))
        assert claim.missing_from(theirs) == expected


_CHANGES = ["only", "drop", "add", "extend", "truncate", "other"]


def _shape(rng: random.Random) -> BitMap64:
    held = BitMap64()
    prefix = rng.choice([0, 1, 2, 3, 17, 100])
    if prefix:
        held.add_range(0, prefix)
    held.update(prefix + rng.randint(1, 60) for _ in range(rng.choice([0, 0, 0, 1, 3])))
    if rng.random() < 0.1:
        held.add(prefix + MAX_AHEAD // 2)  # far past the prefix, as a holding may be
    return held


def _change(held: BitMap64, change: str, arg: int) -> BitMap64 | None:
    """Another holding of the same origin (None: not held at all)."""
    held = BitMap64(held)
    top = int(held.max()) + 1 if held else 0
    if change == "only":
        return None
    if change == "drop" and held:
        held.discard(list(held)[arg % len(held)])
    elif change == "add":
        held.add(arg % 150)
    elif change == "extend":
        held.add_range(top, top + 1 + arg % 4)
    elif change == "truncate" and held:
        held.remove_range(arg % top, top)
    else:
        held = BitMap64(range(arg % 7)) | BitMap64([arg + 10])
    return held


@st.composite
def holdings_pairs(draw: st.DrawFn) -> tuple[dict[bytes, BitMap64], dict[bytes, BitMap64]]:
    """Two nodes' holdings over up to 300 origins, mostly alike, differing here and there.

    The alike bulk comes from a seeded generator (cheap to draw); the differences
    are drawn one by one where it matters, so a failure shrinks to a few of them.
    """
    n = draw(st.integers(0, 300))
    rng = random.Random(draw(st.integers(0, 2**16)))
    bases = [_shape(rng) for _ in range(n)]
    changes: dict[int, tuple[str, str, int]] = {}
    if n and draw(st.booleans()):  # many differences, at random
        rate = draw(st.sampled_from([0.02, 0.3, 1.0]))
        for i in range(n):
            if rng.random() < rate:
                changes[i] = (rng.choice("ab"), rng.choice(_CHANGES), rng.randrange(1000))
    if n:
        spec = st.tuples(
            st.integers(0, n - 1),
            st.sampled_from("ab"),
            st.sampled_from(_CHANGES),
            st.integers(0, 1000),
        )
        for i, side, change, arg in draw(st.lists(spec, max_size=6)):
            changes[i] = (side, change, arg)
    a: dict[bytes, BitMap64] = {}
    b: dict[bytes, BitMap64] = {}
    for i, base in enumerate(bases):
        ours: BitMap64 | None = base
        theirs: BitMap64 | None = BitMap64(base)
        if i in changes:
            side, change, arg = changes[i]
            if side == "a":
                ours = _change(base, change, arg)
            else:
                theirs = _change(base, change, arg)
        if ours is not None:
            a[_origin(i)] = ours
        if theirs is not None:
            b[_origin(i)] = theirs
    return a, b


@settings(max_examples=60, deadline=None)
@given(holdings_pairs())
def test_reconciliation_claims_exactly_what_is_lacking(
    pair: tuple[dict[bytes, BitMap64], dict[bytes, BitMap64]],
) -> None:
    a_held, b_held = pair
    a, b = synthetic_index(a_held), synthetic_index(b_held)
    for one, other, one_held, other_held in ((a, b, a_held, b_held), (b, a, b_held, a_held)):
        outcome = exchange(one, other)
        _check_claims(outcome, one_held, other_held)
        assert outcome.rounds <= 2  # <= 300 origins: at most one split, then items
    in_sync = all(
        a_held.get(o, BitMap64()) == b_held.get(o, BitMap64()) for o in {*a_held, *b_held}
    )
    if in_sync:
        outcome = exchange(a, b)
        assert outcome.rounds == 1 and outcome.answers == [[DoneRange(MIN_BOUND, MAX_BOUND)]]


def _many(n: int, prefix: int = 5) -> dict[bytes, BitMap64]:
    return {_origin(i): BitMap64(range(prefix)) for i in range(n)}


@pytest.fixture(scope="module")
def three_thousand() -> dict[bytes, BitMap64]:
    return _many(3000)


@pytest.mark.parametrize(
    "difference",
    ["b-has-one-more-seq", "b-has-a-new-origin", "a-has-one-more-seq", "a-has-a-new-origin",
     "b-has-a-far-seq", "fork"],
)  # fmt: skip
def test_one_difference_among_thousands_takes_few_rounds(
    three_thousand: dict[bytes, BitMap64], difference: str
) -> None:
    a_held = {o: BitMap64(s) for o, s in three_thousand.items()}
    b_held = {o: BitMap64(s) for o, s in three_thousand.items()}
    target = _origin(1234)
    forks: dict[bytes, int] = {}
    if difference == "b-has-one-more-seq":
        b_held[target].add(5)
    elif difference == "b-has-a-new-origin":
        b_held[_origin(10**6)] = BitMap64([0, 1])
    elif difference == "a-has-one-more-seq":
        a_held[target].add(5)
    elif difference == "a-has-a-new-origin":
        a_held[_origin(10**6)] = BitMap64([0])
    elif difference == "b-has-a-far-seq":
        b_held[target].add(5 + MAX_AHEAD - 1)  # the furthest past its prefix a holding reaches
    else:
        forks[target] = 4  # B's entry 4 of `target` is another one than A's
    a, b = synthetic_index(a_held), synthetic_index(b_held, forks)
    outcome = exchange(a, b)
    assert outcome.rounds <= 8
    assert outcome.rounds == 3  # 3000 -> 16 ranges of ~190 -> 16 of ~12 -> items
    assert all(len(q) <= 1 for q in outcome.questions)  # only the differing range is asked again
    claimed = [c.origin for c in outcome.claims]
    if difference.startswith("b-has") or difference == "fork":
        assert len(claimed) == 1
        if difference != "fork":
            _check_claims(outcome, a_held, b_held)
        else:
            assert claimed == [target] and outcome.claims[0].prefix == 0
    else:
        assert claimed == []
    # Answers stay small: one split of FANOUT ranges, or one leaf of items.
    for replies in outcome.answers:
        items = sum(len(r.items) for r in replies if isinstance(r, ItemsRange))
        assert len(replies) <= FANOUT and items <= LEAF_ITEMS


@pytest.fixture(scope="module")
def twenty_thousand() -> tuple[dict[bytes, BitMap64], ItemIndex]:
    held = _many(20_000, prefix=3)
    return held, synthetic_index({o: BitMap64(s) for o, s in held.items()})


def test_twenty_thousand_origins_in_sync_take_one_round_trip(
    twenty_thousand: tuple[dict[bytes, BitMap64], ItemIndex],
) -> None:
    held, b = twenty_thousand
    a = synthetic_index(held)
    started = time.perf_counter()
    outcome = exchange(a, b)
    assert time.perf_counter() - started < 1.0
    assert outcome.rounds == 1 and outcome.messages == 2
    assert outcome.questions == [[whole_range(a)]]
    assert outcome.answers == [[DoneRange(MIN_BOUND, MAX_BOUND)]]
    assert outcome.claims == []
    question = protocol.encode(Recon(1, protocol.REPLY_WANTED, (whole_range(a),)))
    reply = protocol.encode(Recon(1, FROM_RESPONDER, (DoneRange(MIN_BOUND, MAX_BOUND),)))
    assert len(question) < 64 and len(reply) < 16


def test_a_newcomer_gets_everything_in_messages_that_fit() -> None:
    """A holds nothing; B's items (with sizeable bitmaps) are cut to fit messages."""
    rng = random.Random(5)
    b_held = {}
    for i in range(2000):
        held = BitMap64(range(rng.randrange(1, 50)))
        held.update(rng.sample(range(100, 5000), 250))  # ~500 bytes of beyond each
        b_held[_origin(i)] = held
    b = synthetic_index(b_held)
    a = synthetic_index({})
    assert whole_range(a) == FingerprintRange(MIN_BOUND, MAX_BOUND, 0, 0)
    outcome = exchange(a, b)
    assert outcome.rounds == 1  # nothing held: all items at once, within MAX_ANSWER_ITEMS
    assert outcome.messages > 2  # the answer took several messages
    _check_claims(outcome, {}, b_held)
    assert all(c.prefix == 0 and not c.beyond for c in outcome.claims)


def test_a_large_newcomer_answer_stays_within_its_budget() -> None:
    b_held = _many(MAX_ANSWER_ITEMS + 2000, prefix=1)
    b = synthetic_index(b_held)
    replies = answer(b, [whole_range(synthetic_index({}))])  # too many: split
    assert len(replies) == FANOUT and all(isinstance(r, FingerprintRange) for r in replies)
    outcome = exchange(synthetic_index({}), b)
    assert outcome.rounds == 3  # whole range; its 16 parts (12 as items); the rest
    assert 0 < max(outcome.answer_items) <= MAX_ANSWER_ITEMS
    _check_claims(outcome, {}, b_held)


def test_one_question_costs_at_most_max_answer_items(
    twenty_thousand: tuple[dict[bytes, BitMap64], ItemIndex],
) -> None:
    _, b = twenty_thousand
    keys = sorted(b.origins())
    bounds = [MIN_BOUND, *keys[LEAF_ITEMS::LEAF_ITEMS], MAX_BOUND]
    questions = [FingerprintRange(lo, hi, 0, 1) for lo, hi in itertools.pairwise(bounds)]
    (group,) = pack_ranges(questions)  # one ~55 kB message
    replies = answer(b, group)
    items = sum(len(r.items) for r in replies if isinstance(r, ItemsRange))
    assert items <= MAX_ANSWER_ITEMS
    # What did not fit comes back as B's fingerprint of the same range, to ask again.
    assert [(r.lower, r.upper) for r in replies] == [(q.lower, q.upper) for q in group]


def test_reconciliation_under_a_tight_answer_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer is capped, yet the exchange ends with every difference claimed."""
    monkeypatch.setattr(reconcile, "MAX_ANSWER_ITEMS", 100)
    a_held = _many(2000, prefix=2)
    b_held = {o: BitMap64(range(3 if i % 2 else 2)) for i, o in enumerate(a_held)}
    outcome = exchange(synthetic_index(a_held), synthetic_index(b_held))
    assert max(outcome.answer_items) <= 100
    assert outcome.rounds <= 40
    _check_claims(outcome, a_held, b_held)
    assert len(outcome.claims) == 1000


def test_answers_to_ranges_never_asked_are_ignored() -> None:
    b = synthetic_index({_origin(i): [0, 1] for i in range(10)})
    a = synthetic_index({})
    pending = Pending()
    lower, upper = sorted(b.origins())[2], sorted(b.origins())[5]
    pending.add(lower, upper)
    stray = [
        ItemsRange(MIN_BOUND, lower, tuple(b.items(MIN_BOUND, lower))),
        ItemsRange(lower, MAX_BOUND, tuple(b.items(lower, MAX_BOUND))),  # wider than asked
        FingerprintRange(upper, MAX_BOUND, 1, 1),
    ]
    assert follow_up(a, pending, stray) == ([], [])
    assert pending
    asked, claims = follow_up(a, pending, [ItemsRange(lower, upper, tuple(b.items(lower, upper)))])
    assert asked == [] and [c.origin for c in claims] == sorted(b.origins())[2:5]
    assert not pending
    # Once answered, the same range is not taken twice.
    assert follow_up(a, pending, [ItemsRange(lower, upper, tuple(b.items(lower, upper)))]) == (
        [],
        [],
    )


def test_pending_settles_pieces_of_what_was_asked() -> None:
    k = [bytes([n]) * 32 for n in range(1, 6)]
    pending = Pending()
    pending.add(k[0], k[4])
    assert not pending.settle(MIN_BOUND, k[1])
    assert pending.settle(k[1], k[2])  # a middle piece: two remain
    assert pending.settle(k[0], k[1]) and pending.settle(k[3], k[4])
    assert pending and not pending.settle(k[1], k[2])
    assert pending.settle(k[2], k[3])
    assert not pending


def test_split_tiles_the_range_into_equal_parts() -> None:
    index = synthetic_index({_origin(i): [0] for i in range(1000)})
    keys = sorted(index.origins())
    rng = random.Random(9)
    cases = [(MIN_BOUND, MAX_BOUND), (keys[10], keys[500]), (keys[0], keys[-1])]
    cases += [tuple(sorted(rng.sample(keys, 2))) for _ in range(30)]
    for lower, upper in cases:
        whole = index.fingerprint(lower, upper)
        for parts in (2, FANOUT, 100):
            bounds = index.split(lower, upper, parts)
            assert bounds[0] == lower and bounds[-1] == upper
            assert all(x < y for x, y in itertools.pairwise(bounds))
            pieces = [index.fingerprint(x, y) for x, y in itertools.pairwise(bounds)]
            assert sum(p.count for p in pieces) == whole.count
            assert sum(p.value for p in pieces) % FINGERPRINT_MODULUS == whole.value
            joined = [i for x, y in itertools.pairwise(bounds) for i in index.items(x, y)]
            assert joined == list(index.items(lower, upper))
            if whole.count >= parts:
                sizes = [p.count for p in pieces]
                assert len(sizes) == parts and max(sizes) - min(sizes) <= 1


def test_answer_modes() -> None:
    b = synthetic_index({_origin(i): [0, 1] for i in range(LEAF_ITEMS * 4)})
    a_same = synthetic_index({_origin(i): [0, 1] for i in range(LEAF_ITEMS * 4)})
    a_small = synthetic_index({_origin(i): [0, 1] for i in range(3)})
    # Same: done. Different and large: a split. Nothing held by A: all items.
    assert answer(b, [whole_range(a_same)]) == [DoneRange(MIN_BOUND, MAX_BOUND)]
    split = answer(b, [whole_range(a_small)])
    assert len(split) == FANOUT and all(isinstance(r, FingerprintRange) for r in split)
    assert split[0].lower == MIN_BOUND and split[-1].upper == MAX_BOUND
    (everything,) = answer(b, [whole_range(synthetic_index({}))])
    assert isinstance(everything, ItemsRange) and len(everything.items) == LEAF_ITEMS * 4
    # A small range: its items, even when empty on B's side.
    keys = sorted(b.origins())
    (leaf,) = answer(b, [FingerprintRange(keys[0], keys[LEAF_ITEMS], 1, 1)])
    assert isinstance(leaf, ItemsRange) and len(leaf.items) == LEAF_ITEMS
    (nothing,) = answer(synthetic_index({}), [whole_range(a_small)])
    assert nothing == ItemsRange(MIN_BOUND, MAX_BOUND, ())
    # Anything but a fingerprint is not a question.
    assert answer(b, [DoneRange(MIN_BOUND, MAX_BOUND), ItemsRange(MIN_BOUND, MAX_BOUND, ())]) == []


# ------------------------------------------------------------------ claim_for


def _it(prefix: int, beyond: Iterable[int] = (), forked_at: int = NOT_FORKED, head: int = 1):
    head_hash = ZERO_HASH if prefix == 0 else bytes([head]) * 32
    return Item(ORIGINS[0], prefix, head_hash, BitMap64(beyond), forked_at)


def test_claim_for() -> None:
    # Nothing of it held: claim nothing, so B sends all.
    claim = claim_for(None, _it(3))
    assert claim == Claim(ORIGINS[0], 0, BitMap64(), False)
    # Theirs holds nothing more, same head: no claim.
    assert claim_for(_it(5, [9]), _it(5, [9])) is None
    assert claim_for(_it(5, [9]), _it(3)) is None
    assert claim_for(_it(5, [9]), _it(0, [9])) is None
    # Theirs holds more: a claim of our prefix minus its last seq, and our beyond.
    claim = claim_for(_it(5, [9]), _it(6))
    assert claim == Claim(ORIGINS[0], 4, BitMap64([9]), False)
    assert claim_for(_it(0, [9]), _it(0, [4])) == Claim(ORIGINS[0], 0, BitMap64([9]), False)
    # Same prefix, another head: a fork somewhere in it; claimed to get all of theirs.
    assert claim_for(_it(5), _it(5, head=2)) == Claim(ORIGINS[0], 0, BitMap64(), False)
    # They know of a fork we do not: ask for the proof, even with nothing more to get.
    claim = claim_for(_it(5), _it(3, forked_at=3))
    assert claim == Claim(ORIGINS[0], 4, BitMap64(), True)
    assert claim_for(None, _it(3, forked_at=3)) == Claim(ORIGINS[0], 0, BitMap64(), True)
    # We know of a fork below what they hold: what lies past it is not wanted.
    assert claim_for(_it(3, forked_at=3), _it(9)) is None
    assert claim_for(_it(3, forked_at=4), _it(9)) == Claim(ORIGINS[0], 2, BitMap64(), False)
    assert claim_for(_it(3, forked_at=3), _it(3, forked_at=3)) is None
