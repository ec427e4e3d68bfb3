"""Signatures of a BATCH checked ahead of the engine, where another core can do it.

A backfill BATCH is authenticated by its hash links plus the Ed25519
signatures of the entries at checkpoints (one seq in 16) and of each run's
last entry (acceptance.py). Those checks were 12 % of a joining node's
busy samples (issue 13, round 13). PyNaCl lets go of the GIL while it
checks, so a worker thread can check the next BATCH while the event loop
applies this one; what verified is noted in the engine's
`CheckedSignatures`, which then skips it.

Only the entries the engine would check are checked here, and at most
`MAX_CHECKS` a message (node/batch_checks.py also checks only BATCHes of a
round of ours): junk costs at most that, about one check per 150 bytes,
as LIVE entries could already. Nothing is trusted from this step but
"these exact bytes carry a valid signature" (the hash covers the
signature): every other check stays with the engine.
"""

from __future__ import annotations

from nacl.signing import VerifyKey

from p2psync.core.entry import (
    HEADER_BYTES,
    MIN_ENTRY_BYTES,
    decode_entry,
    entry_hash,
    entry_link,
    verify_signature,
)
from p2psync.core.errors import RemoteError
from p2psync.core.forks import is_checkpoint
from p2psync.core.protocol import BATCH, PROTOCOL_VERSION, Batch, decode

# An honest BATCH of 1 000 entries of 4 origins has 62 checkpoints and 4 lasts.
MAX_CHECKS = 128
# Smaller batches are checked by the engine: the hop to a thread costs more.
MIN_ENTRIES = 32


def is_backfill_batch(data: bytes) -> bool:
    """Whether `data` may be a BATCH worth checking ahead (from its header and size)."""
    return (
        len(data) >= MIN_ENTRIES * MIN_ENTRY_BYTES
        and data[0] == PROTOCOL_VERSION
        and data[1] == BATCH
    )


def verified_in_batch(data: bytes) -> list[bytes]:
    """The hashes of the entries of the BATCH `data` whose signature verified,
    among those the engine would check; [] for anything else (the engine
    reports what is wrong with it). Blocking: meant for a worker thread."""
    try:
        message = decode(data)
    except RemoteError:
        return []
    if not isinstance(message, Batch) or len(message.entries) < MIN_ENTRIES:
        return []
    verified: list[bytes] = []
    keys: dict[bytes, VerifyKey] = {}
    for raw in _to_check(message.entries):
        try:
            entry = decode_entry(raw)
            verify_signature(entry, keys)
        except RemoteError:
            continue
        verified.append(entry_hash(raw))
    return verified


def _to_check(raws: tuple[bytes, ...]) -> list[bytes]:
    """Checkpoints, then the last entry of each origin, up to MAX_CHECKS."""
    chosen: list[bytes] = []
    last_of: dict[bytes, tuple[int, bytes]] = {}  # origin -> (seq, raw)
    for raw in raws:
        if len(raw) < HEADER_BYTES:
            continue
        origin, seq, _ = entry_link(raw)
        if is_checkpoint(seq):
            chosen.append(raw)
            if len(chosen) >= MAX_CHECKS:
                return chosen
        last_of[origin] = (seq, raw)  # batches run in seq order: the later one wins
    for seq, raw in last_of.values():
        if len(chosen) >= MAX_CHECKS:
            break
        if not is_checkpoint(seq):
            chosen.append(raw)
    return chosen
