"""What the gossipsub router lets through on each of our topics.

These checks run as topic validators, before libp2p delivers a message to
us or forwards it to anyone: a message that does not decode, or a LIVE
entry whose signature fails, goes no further than the peer that sent it,
and that peer (the forwarder, not the key that signed the envelope) is to
blame. The engine still checks everything again; this only keeps garbage
off the mesh and puts the blame where it belongs.
"""

from __future__ import annotations

from nacl.signing import VerifyKey

from p2psync.core import protocol
from p2psync.core.entry import CheckedSignatures, decode_entry, entry_hash
from p2psync.core.errors import RemoteError
from p2psync.core.query import Query
from p2psync.core.reasons import Reason


class TopicChecks:
    """The per-topic checks, sharing one cache of verified origin keys.

    `checked`: the engine's record of entries that verified
    (`SyncEngine.checked_signatures`). A live entry that verifies here is
    noted in it, so the engine does not check its signature again.
    """

    def __init__(self, checked: CheckedSignatures | None = None) -> None:
        self._verify_keys: dict[bytes, VerifyKey] = {}
        self._checked = CheckedSignatures() if checked is None else checked

    def live(self, data: bytes) -> Reason | None:
        """A LIVE message whose entries are well formed, each signed by its origin."""
        try:
            message = protocol.decode(data)
            if not isinstance(message, protocol.Live):
                return Reason.UNEXPECTED
            run = [(decode_entry(raw), entry_hash(raw)) for raw in message.entries]
            self._checked.verify_run(run, self._verify_keys)
        except RemoteError as exc:
            return exc.reason
        return None

    def pair(self, data: bytes) -> Reason | None:
        """Any sync message but LIVE, well formed (the engine checks the rest)."""
        try:
            message = protocol.decode(data)
        except RemoteError as exc:
            return exc.reason
        return Reason.UNEXPECTED if isinstance(message, protocol.Live) else None

    def query(self, data: bytes) -> Reason | None:
        try:
            message = protocol.decode(data)
        except RemoteError as exc:
            return exc.reason
        return None if isinstance(message, Query) else Reason.UNEXPECTED
