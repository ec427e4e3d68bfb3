"""Strikes and bans, sans I/O: the ladder the peer policy bans misbehaving peers by.

Offences within a sliding `strike_window` count as strikes; `strikes_to_ban`
of them ban the peer for `ban_seconds`, doubling for each repeat up to
`ban_max`; `forgive_after` clean seconds after a ban reset the ladder. At
most `max_offenders` peers are remembered (the oldest not banned right now
goes first). The numbers live in `peer_policy.PolicyConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from p2psync.core.peer_policy import PolicyConfig


class NewBan(NamedTuple):
    until: float
    seconds: float
    strikes: int  # strikes within the window that led to it


@dataclass(slots=True)
class _Offender:
    strikes: list[float] = field(default_factory=list)
    banned_until: float = 0.0
    level: int = 0  # bans so far, unless forgiven


class Offences:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._offenders: dict[str, _Offender] = {}

    def banned(self, peer_id: str, now: float) -> bool:
        offender = self._offenders.get(peer_id)
        return offender is not None and offender.banned_until > now

    def banned_until(self, peer_id: str) -> float:
        offender = self._offenders.get(peer_id)
        return offender.banned_until if offender is not None else 0.0

    def strike(self, peer_id: str, now: float) -> NewBan | None:
        """Count one offence; the ban it earns, if it earns one."""
        cfg = self.config
        offender = self._offender(peer_id)
        offender.strikes = [t for t in offender.strikes if now - t < cfg.strike_window]
        offender.strikes.append(now)
        if len(offender.strikes) < cfg.strikes_to_ban:
            return None
        strikes = len(offender.strikes)
        offender.strikes = []
        if offender.level and now - offender.banned_until >= cfg.forgive_after:
            offender.level = 0
        seconds = min(cfg.ban_max, cfg.ban_seconds * 2**offender.level)
        offender.level += 1
        offender.banned_until = now + seconds
        return NewBan(offender.banned_until, seconds, strikes)

    def forget(self, now: float) -> None:
        """Drop old strikes, and peers with nothing left against them."""
        cfg = self.config
        for peer_id, offender in list(self._offenders.items()):
            recent = [t for t in offender.strikes if now - t < cfg.strike_window]
            offender.strikes = recent
            if not recent and now - offender.banned_until >= cfg.forgive_after:
                del self._offenders[peer_id]

    def _offender(self, peer_id: str) -> _Offender:
        offender = self._offenders.pop(peer_id, None) or _Offender()
        self._offenders[peer_id] = offender  # the most recent offender last
        if len(self._offenders) > self.config.max_offenders:
            # The oldest offender not banned right now goes first.
            victim = next(
                (p for p, o in self._offenders.items() if not o.banned_until),
                next(iter(self._offenders)),
            )
            del self._offenders[victim]
        return offender
