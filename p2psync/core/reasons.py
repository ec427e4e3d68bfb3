"""The labels the core gives to what happened, defined once.

Metrics, logs and the peer policy all use these enums; because they are
`StrEnum`s they are also the exact label values exported to Prometheus.
"""

from __future__ import annotations

from enum import StrEnum


class Source(StrEnum):
    """Where entries being persisted came from."""

    LOCAL = "local"  # written by this node
    LIVE = "live"  # a live broadcast
    BACKFILL = "backfill"  # an anti-entropy batch


class MessageKind(StrEnum):
    """The kind of a sync message the engine asks to send."""

    RECON = "recon"
    WANT = "want"
    FORK_PROOF = "fork_proof"
    BATCH = "batch"
    ACK = "ack"
    QUERY = "query"
    QUERY_REPLY = "query_reply"


class Reason(StrEnum):
    """Why the core refused an entry or a message (RemoteError.reason)."""

    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    VERSION = "version"
    UNKNOWN_KIND = "unknown_kind"
    BITMAP = "bitmap"
    UNEXPECTED = "unexpected"  # a valid message on a topic where it has no place
    SIGNATURE = "signature"
    CHAIN = "chain"
    FORK = "fork"
    NOT_AUTHOR = "not_author"
    BAD_OP = "bad_op"
    NOT_ALLOWED = "not_allowed"
    ACK_TIMEOUT = "ack_timeout"
    FORKED = "forked"  # an entry of a proven-forked origin at or past the fork
    BAD_PROOF = "bad_proof"  # a fork proof that proves nothing
    STALLED = "stalled"  # a round that made no progress while the peer had more
    AHEAD = "ahead"  # a seq MAX_AHEAD or more past the origin's held prefix: later, in order
    BUDGET = "budget"  # the delivering peer spent its budget (BudgetExceeded scores it down)
    STORE_FULL = "store_full"  # --max-store-mb reached: other origins' entries wait


class Blame(StrEnum):
    """Who is at fault for a refusal, so the driver knows whom to penalise.

    DELIVERER: the peer that handed us the bytes built them wrong; no honest
    node sends such bytes, so it is scored down.
    ORIGIN: the entry is well formed but its signer broke a rule (a fork, an
    op on someone else's recipe, an origin outside the allow-list); an honest
    relay may carry it, so the deliverer is not penalised.
    NOBODY: a loss or a timeout, or a defect nobody can be proven to have made
    (a bad signature may be a relay's corruption or a forger's).
    """

    DELIVERER = "deliverer"
    ORIGIN = "origin"
    NOBODY = "nobody"


BLAME_OF: dict[Reason, Blame] = {
    Reason.MALFORMED: Blame.DELIVERER,
    Reason.OVERSIZED: Blame.DELIVERER,
    Reason.VERSION: Blame.DELIVERER,
    Reason.UNKNOWN_KIND: Blame.DELIVERER,
    Reason.BITMAP: Blame.DELIVERER,
    Reason.UNEXPECTED: Blame.DELIVERER,
    Reason.SIGNATURE: Blame.NOBODY,
    Reason.CHAIN: Blame.NOBODY,
    Reason.FORK: Blame.ORIGIN,
    Reason.NOT_AUTHOR: Blame.ORIGIN,
    Reason.BAD_OP: Blame.ORIGIN,
    Reason.NOT_ALLOWED: Blame.ORIGIN,
    Reason.ACK_TIMEOUT: Blame.NOBODY,
    Reason.FORKED: Blame.ORIGIN,
    Reason.BAD_PROOF: Blame.DELIVERER,
    Reason.STALLED: Blame.NOBODY,
    Reason.AHEAD: Blame.NOBODY,
    Reason.BUDGET: Blame.NOBODY,  # the penalty comes with BudgetExceeded, once
    Reason.STORE_FULL: Blame.NOBODY,
}


class Drop(StrEnum):
    """Why the node itself dropped a message (labels of messages_dropped_total).

    Together with `Reason` (refusals decided by the core) these are every
    reason label the node exports; the network layer adds its own
    measured drops (`publish_*`, router drops) under their own names.
    """

    SEND_FAILED = "send_failed"  # no ready session, or its outbox was full
    LIVE_NOT_SENT = "live_not_sent"  # nobody to tell, or the live outbox was full
    STORE_FAILED = "store_failed"  # the database refused a commit
    WRONG_SENDER = "wrong_sender"  # a message on a pair topic signed by a third peer
    PEER_REFUSED = "peer_refused"  # a connection from a peer we do not sync with
    PEER_BANNED = "peer_banned"  # a peer cut off for misbehaving
    QUERY_REPLY_NOT_SENT = "query_reply_not_sent"
    PUBLISH_QUEUE_FULL = "publish_queue_full"
    PUBLISH_MESH_PENDING = "publish_mesh_pending"
    PUBLISH_NO_PEERS = "publish_no_peers"
    PUBLISH_OVERSIZED = "publish_oversized"
