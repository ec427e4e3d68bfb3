"""The peer policy, sans I/O: whom to dial, whom to sync with, whom to ban.

Like the sync engine (h11's shape), it does no I/O and reads no clock: the
driver (`node/dialing.py` in the daemon, `tests/sim/policy.py` in the
simulator) hands it events with the monotonic time they happened and carries
out the actions each call returns, in order. Every entry point returns
`list[PolicyAction]`; `tick(now)` (twice a second in the daemon) fires what
is due: dials after a tie-break or a backoff, resumed sessions.

It owns the peer table (`ls p`, /api/v0/peers), the allow-list, strikes, bans that
grow for repeat offenders, dial backoff (jittered by the `rng` it is given, never
shrinking while failures go on), static peers re-dialed forever, lost peers
re-dialed a while, discovered peers dialed once per discovery (smaller id first),
sessions resumed while a peer stays connected, peers of other networks cut off and
left alone (`core/foreign.py`; strikes and bans: `core/offences.py`). Per-peer state
is freed when a peer leaves; the table keeps static peers and the `history` most
recent others. docs/ARCHITECTURE.md ("Peer policy") tells the rules in full.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2psync.core.foreign import ForeignPeers
from p2psync.core.ids import InvalidPeerId, public_key_from_peer_id
from p2psync.core.offences import Offences

SOURCE_PRIORITY = {"static": 0, "local": 1, "mdns": 2, "relay": 3, "inbound": 4}
MAX_ADDRS = 8  # newest addresses kept per peer

# Why a connection is refused or cut (Disconnect.reason).
REFUSED_NOT_ALLOWED = "not_allowed"
REFUSED_KEY = "not_ed25519"
REFUSED_BANNED = "banned"
CUT_BANNED = "banned"
CUT_UNRESPONSIVE = "unresponsive"
CUT_FOREIGN = "foreign_network"
CUT_NO_PUBSUB = "no_pubsub"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    strike_window: float = 10.0  # seconds
    strikes_to_ban: int = 20  # offences within the window that get a peer banned
    ban_seconds: float = 120.0  # a first ban; doubles for each repeat
    ban_max: float = 3600.0
    forgive_after: float = 3600.0  # clean seconds after a ban that reset the ladder
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    tie_break_delay: float = 2.0
    lost_redials: int = 12
    resume_delay: float = 0.5
    history: int = 256  # disconnected non-static peers kept for `ls p`
    max_offenders: int = 4096  # peers whose strikes, bans or networks are remembered
    foreign_seconds: float = 3600.0  # a peer of another network is not dialed again for this
    unknown_seconds: float = 120.0  # nor one showing no network, doubling per repeat (foreign.py)


@dataclass(frozen=True, slots=True)
class Dial:  # try the addresses in turn, then report dial_succeeded or dial_failed
    peer_id: str
    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Disconnect:
    peer_id: str
    reason: str
    refused: bool = False  # an incoming connection we do not accept (peer_refused)


@dataclass(frozen=True, slots=True)
class StartSession:
    peer_id: str


@dataclass(frozen=True, slots=True)
class StopSession:
    peer_id: str


@dataclass(frozen=True, slots=True)
class Ban:  # log once and count; a Disconnect follows
    peer_id: str
    until: float
    seconds: float
    reason: str  # the last offence
    strikes: int
    window: float


@dataclass(frozen=True, slots=True)
class Notice:  # something worth a log line
    message: str
    warning: bool = False


PolicyAction = Dial | Disconnect | StartSession | StopSession | Ban | Notice


@dataclass(slots=True)
class PeerRecord:
    peer_id: str
    source: str  # static | local | mdns | relay | inbound: the most specific seen
    addrs: list[str] = field(default_factory=list)
    static_addr: str | None = None
    state: str = "known"  # known | connecting | connected | backing_off | failed | foreign
    connected: bool = False
    syncs_ok: int = 0
    syncs_failed: int = 0
    total_sync_seconds: float = 0.0
    last_sync_ms: int | None = None  # wall clock of the last good round
    last_seen: float = 0.0
    # While it is around; reset when it leaves.
    session: bool = False
    dialing: bool = False
    dial_at: float | None = None
    resume_at: float | None = None
    failures: int = 0  # consecutive failures (dials, or connections with no good round)
    delay: float = 0.0  # the last backoff delay: the next is never shorter
    not_before: float = 0.0  # no dial before this (backoff after a failure)
    redials: int = 0  # dials left for a lost non-static peer

    @property
    def static(self) -> bool:
        return self.static_addr is not None


def is_ed25519_peer(peer_id: str) -> bool:
    try:
        public_key_from_peer_id(peer_id)
    except InvalidPeerId:
        return False
    return True


class PeerPolicy:
    def __init__(
        self,
        me: str,
        rng: random.Random,
        *,
        allow: Iterable[str] = (),
        config: PolicyConfig | None = None,
        network: str = "default",
    ) -> None:
        self.me = me
        self.config = cfg = config or PolicyConfig()
        self.allow = frozenset(allow)
        self.network = network
        self._rng = rng
        self._peers: dict[str, PeerRecord] = {}
        self._offences = Offences(cfg)
        self._foreign = ForeignPeers(cfg.foreign_seconds, cfg.max_offenders, cfg.unknown_seconds)

    # ------------------------------------------------------------ queries

    def allowed(self, peer_id: str) -> bool:
        return not self.allow or peer_id in self.allow

    def banned(self, peer_id: str, now: float) -> bool:
        return self._offences.banned(peer_id, now)

    def banned_until(self, peer_id: str) -> float:
        return self._offences.banned_until(peer_id)

    def foreign(self, peer_id: str, now: float) -> bool:
        return self._foreign.get(peer_id, now) is not None

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def records(self) -> list[PeerRecord]:
        return sorted(self._peers.values(), key=lambda r: r.peer_id)

    def connected_ids(self) -> list[str]:
        return [p.peer_id for p in self._peers.values() if p.connected]

    def backoff(self, failures: int) -> float:
        """Exponential and capped, jittered over the upper half of the ceiling."""
        cfg = self.config
        ceiling = min(cfg.backoff_max, cfg.backoff_base * (2 ** min(failures, 16)))
        return float(ceiling / 2 + self._rng.random() * ceiling / 2)

    # ------------------------------------------------------------ events

    def add_static(self, peer_id: str, multiaddr: str, now: float) -> list[PolicyAction]:
        """A --peer: keep it connected for as long as we run."""
        if peer_id == self.me or not self.allowed(peer_id):
            why = "it is this node" if peer_id == self.me else "it is not in the allow list"
            return [Notice(f"not dialing {multiaddr}: {why}", warning=True)]
        record = self._learn(peer_id, [multiaddr], "static", now)
        record.static_addr = multiaddr
        record.dial_at = now
        return self._poll(record, now)

    def discovered(
        self, peer_id: str, addrs: list[str], source: str, now: float
    ) -> list[PolicyAction]:
        """Discovery (same-host files, mDNS) saw the peer: dial it unless we are."""
        if peer_id == self.me or not self.allowed(peer_id) or self.banned(peer_id, now):
            return []
        if not is_ed25519_peer(peer_id):
            return []
        record = self._learn(peer_id, addrs, source, now)
        if self.foreign(peer_id, now):
            record.state = "foreign"  # not ours: no dial while we remember it (_poll)
        elif not (record.connected or record.dialing or record.dial_at is not None):
            # Both sides usually discover each other at once: the smaller id
            # dials first, the other only if nothing happened meanwhile.
            delay = 0.0 if self.me < peer_id else self.config.tie_break_delay
            record.dial_at = max(now + delay, record.not_before)
        actions = self._poll(record, now)
        self._trim()
        return actions

    def connected(self, peer_id: str, addr: str | None, now: float) -> list[PolicyAction]:
        """A connection to the peer is up (ours or theirs): accept it or refuse it."""
        refusal = self._refusal(peer_id, now)
        if refusal is not None:  # all its connections close: it is gone
            record = self._peers.get(peer_id)
            stops = self._drop(record, now) if record is not None else []
            return [Disconnect(peer_id, refusal, refused=True), *stops]
        record = self._learn(peer_id, [addr] if addr else [], "inbound", now)
        record.connected = True
        record.state = "foreign" if self.foreign(peer_id, now) else "connected"
        record.dial_at = None
        record.redials = 0
        return self._start_session(record, now)  # none for a foreign peer

    def network_learned(self, peer_id: str, network: str | None, now: float) -> list[PolicyAction]:
        """After connecting: the p2psync network the peer is in (None: it runs none)."""
        record = self._peers.get(peer_id)
        if network == self.network:
            self._foreign.clear(peer_id)
            if record is None or not record.connected:
                return []
            record.state = "connected"
            return self._start_session(record, now)
        if network is None and record is not None and record.static:
            return []  # asked for by name: a guess is not enough to cut it off
        entry = self._foreign.mark(peer_id, network, now)
        actions: list[PolicyAction] = [Notice(f"peer {peer_id} is in {entry.describe()}")]
        if record is not None:
            if record.connected:
                actions.append(Disconnect(peer_id, CUT_FOREIGN))
            actions += self._drop(record, now)  # no strike: it is elsewhere, not hostile
            record.state = "foreign"
            record.redials = 0
            record.dial_at = entry.until if record.static else None
        return actions

    def disconnected(self, peer_id: str, now: float) -> list[PolicyAction]:
        """The peer's last connection closed."""
        record = self._peers.get(peer_id)
        if record is None or not (record.connected or record.session):
            return []
        actions: list[PolicyAction] = [StopSession(peer_id)] if record.session else []
        if record.connected:
            record.connected = False
            record.last_seen = now
            record.resume_at = None
            if record.static:
                # Back at once, unless it keeps dropping us without a good round.
                self._schedule_retry(record, now)
            elif record.redials == 0:  # free what only mattered while it was around
                record.state = "foreign" if self.foreign(peer_id, now) else "known"
                record.dial_at = None
        self._trim()
        return actions

    def dial_succeeded(self, peer_id: str, now: float) -> list[PolicyAction]:
        if (record := self._peers.get(peer_id)) is not None:
            record.dialing = False
            self._trim()
        return []

    def dial_failed(self, peer_id: str, now: float) -> list[PolicyAction]:
        record = self._peers.get(peer_id)
        if record is None or not record.dialing:
            return []
        record.dialing = False
        if record.connected:
            return []  # it dialed us meanwhile
        if record.static or record.redials > 0:
            self._schedule_retry(record, now)
        else:
            record.failures += 1
            record.delay = max(record.delay, self.backoff(record.failures))
            record.not_before = now + record.delay
            record.state = "failed"  # until discovery reports it again
        self._trim()
        return []

    def peer_lost(self, peer_id: str, reason: str, now: float) -> list[PolicyAction]:
        """The peer stopped answering (or sent an unreadable stream): cut, then re-dial."""
        actions: list[PolicyAction] = [Disconnect(peer_id, reason)]
        if (record := self._peers.get(peer_id)) is None:
            return actions
        actions += self._drop(record, now)
        if not record.static:
            record.redials = self.config.lost_redials
        self._schedule_retry(record, now, count=False)
        self._trim()
        return actions

    def offence(self, peer_id: str, reason: str, now: float) -> list[PolicyAction]:
        """The peer sent what only a broken or hostile node sends; enough of it bans."""
        if peer_id == self.me or self.banned(peer_id, now):
            return []
        ban = self._offences.strike(peer_id, now)
        if ban is None:
            return []
        actions: list[PolicyAction] = [
            Ban(peer_id, ban.until, ban.seconds, reason, ban.strikes, self.config.strike_window),
            Disconnect(peer_id, CUT_BANNED),
        ]
        if (record := self._peers.get(peer_id)) is not None:
            actions += self._drop(record, now)  # no more syncing with it, from now on
            record.state = "backing_off" if record.static else "known"
            record.redials = 0
            record.dial_at = ban.until if record.static else None
            record.not_before = ban.until
        return actions

    def round_finished(
        self, peer_id: str, ok: bool, seconds: float, wall_ms: int, now: float
    ) -> list[PolicyAction]:
        record = self._peers.get(peer_id)
        if record is None:
            return []
        if ok:
            record.syncs_ok += 1
            record.total_sync_seconds += seconds
            record.last_sync_ms = wall_ms
            record.failures = 0  # a good peer: its next loss is retried at once
            record.delay = 0.0
            record.not_before = 0.0
        else:
            record.syncs_failed += 1
        return []

    def session_ended(self, peer_id: str, now: float) -> list[PolicyAction]:
        """The peer's session is over; resume one soon if the peer is still connected."""
        record = self._peers.get(peer_id)
        if record is None or not record.session:
            return []
        record.session = False
        if record.connected:
            record.resume_at = now + self.config.resume_delay
        self._trim()
        return []

    def tick(self, now: float) -> list[PolicyAction]:
        """Fire what is due: dials and resumed sessions; forget old offences."""
        self._offences.forget(now)
        for peer_id in self._foreign.expire(now):
            if (record := self._peers.get(peer_id)) is not None and record.state == "foreign":
                record.state = "connected" if record.connected else "known"
        actions: list[PolicyAction] = []
        for record in list(self._peers.values()):
            if record.resume_at is not None and record.resume_at <= now:
                record.resume_at = None
                actions += self._start_session(record, now)
            actions += self._poll(record, now)
        return actions

    # ------------------------------------------------------------ inside

    def _refusal(self, peer_id: str, now: float) -> str | None:
        if not self.allowed(peer_id):
            return REFUSED_NOT_ALLOWED
        if not is_ed25519_peer(peer_id):
            return REFUSED_KEY
        if self.banned(peer_id, now):
            return REFUSED_BANNED
        return None

    def _learn(self, peer_id: str, addrs: list[str], source: str, now: float) -> PeerRecord:
        """Record addresses for a peer; the most specific source wins."""
        record = self._peers.get(peer_id)
        if record is None:
            record = self._peers[peer_id] = PeerRecord(peer_id, source)
        elif SOURCE_PRIORITY.get(source, 9) < SOURCE_PRIORITY.get(record.source, 9):
            record.source = source
        for addr in addrs:
            if addr in record.addrs:
                record.addrs.remove(addr)
            record.addrs.append(addr)
        if record.static_addr is not None and record.static_addr not in record.addrs[-MAX_ADDRS:]:
            record.addrs.remove(record.static_addr)
            record.addrs.append(record.static_addr)  # never pushed out
        del record.addrs[:-MAX_ADDRS]
        record.last_seen = now
        return record

    def _start_session(self, record: PeerRecord, now: float) -> list[PolicyAction]:
        if (
            record.session
            or not record.connected
            or not self.allowed(record.peer_id)
            or self.banned(record.peer_id, now)
            or self.foreign(record.peer_id, now)
        ):
            return []
        record.session = True
        return [StartSession(record.peer_id)]

    def _drop(self, record: PeerRecord, now: float) -> list[PolicyAction]:
        """We cut the peer off: it counts as gone now, not when the close is reported."""
        record.connected = False
        record.resume_at = None
        record.last_seen = now
        return [StopSession(record.peer_id)] if record.session else []

    def _schedule_retry(self, record: PeerRecord, now: float, *, count: bool = True) -> None:
        """Dial again after a backoff that never shrinks while failures go on."""
        if count:
            record.failures += 1
        record.delay = max(record.delay, self.backoff(record.failures))
        record.not_before = max(record.not_before, now + record.delay)
        record.dial_at = max(record.not_before, self.banned_until(record.peer_id))
        record.state = "backing_off"

    def _poll(self, record: PeerRecord, now: float) -> list[PolicyAction]:
        """A Dial if one is due and may go now."""
        if record.dial_at is None or record.dial_at > now or record.dialing:
            return []
        if record.connected or not self.allowed(record.peer_id):
            record.dial_at = None
            return []
        if self.banned(record.peer_id, now):
            record.dial_at = self.banned_until(record.peer_id) if record.static else None
            return []
        if (foreign := self._foreign.get(record.peer_id, now)) is not None:
            record.dial_at = foreign.until if record.static else None
            return []
        record.dial_at = None
        record.dialing = True
        record.state = "connecting"
        if not record.static and record.redials > 0:
            record.redials -= 1
        first = [record.static_addr] if record.static_addr else []
        rest = [a for a in reversed(record.addrs) if a != record.static_addr]
        return [Dial(record.peer_id, tuple(first + rest))]

    def _trim(self) -> None:
        """Keep static and active peers, and only the newest `history` of the rest."""
        idle = [
            r
            for r in self._peers.values()
            if not (r.static or r.connected or r.session or r.dialing)
        ]
        excess = len(idle) - self.config.history
        if excess > 0:
            idle.sort(key=lambda r: (r.dial_at is not None, r.last_seen))
            for record in idle[:excess]:
                del self._peers[record.peer_id]
