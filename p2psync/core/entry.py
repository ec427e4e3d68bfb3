"""Signed, hash-chained log entries and their version-1 binary encoding.

    offset  size  field
    0       1     version (1)
    1       32    origin: Ed25519 public key of the author
    33      8     seq, big endian, from 0 per origin
    41      32    prev: blake2b-256 of the origin's entry seq-1 (zeros for seq 0)
    73      8     hlc, big endian
    81      2     op length n, big endian (at most MAX_OP_BYTES)
    83      n     op (canonical orjson, see ops.py)
    83+n    64    Ed25519 signature by origin over bytes [0, 83+n)

The hash of an entry is blake2b-256 over all its bytes, signature included,
so the signature of the last entry of a contiguous run authenticates every
entry before it through the prev links: a run costs one verify, not one per
entry. Hashes are taken over the bytes as received, never re-encoded.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from p2psync.core.errors import RemoteError
from p2psync.core.ops import MAX_OP_BYTES
from p2psync.core.reasons import Reason

ENTRY_VERSION = 1
HASH_BYTES = 32
SIG_BYTES = 64
ZERO_HASH = bytes(HASH_BYTES)
_HEADER = struct.Struct(">B32sQ32sQH")
HEADER_BYTES = _HEADER.size  # 83
MIN_ENTRY_BYTES = HEADER_BYTES + SIG_BYTES
MAX_ENTRY_BYTES = HEADER_BYTES + MAX_OP_BYTES + SIG_BYTES
MAX_SEQ = (1 << 48) - 1


def entry_hash(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=HASH_BYTES).digest()


def entry_link(raw: bytes) -> tuple[bytes, int, bytes]:
    """(origin, seq, prev) of an entry of at least HEADER_BYTES, unchecked."""
    _, origin, seq, prev, _, _ = _HEADER.unpack_from(raw)
    return origin, seq, prev


class Entry(NamedTuple):
    origin: bytes
    seq: int
    prev: bytes
    hlc: int
    op: bytes
    raw: bytes  # the exact encoded bytes, signature included

    @property
    def signed_part(self) -> bytes:
        return self.raw[:-SIG_BYTES]

    @property
    def signature(self) -> bytes:
        return self.raw[-SIG_BYTES:]

    def hash(self) -> bytes:
        return entry_hash(self.raw)


def sign_entry(key: SigningKey, seq: int, prev: bytes, hlc: int, op: bytes) -> Entry:
    origin = bytes(key.verify_key)
    head = _HEADER.pack(ENTRY_VERSION, origin, seq, prev, hlc, len(op)) + op
    raw = head + key.sign(head).signature
    return Entry(origin, seq, prev, hlc, op, raw)


def decode_entry(raw: bytes) -> Entry:
    """Parse the structure of one entry (no signature or link check)."""
    size = len(raw)
    if size < MIN_ENTRY_BYTES:
        raise RemoteError(f"entry of {size} bytes is too short", reason=Reason.MALFORMED)
    if size > MAX_ENTRY_BYTES:
        raise RemoteError(
            f"entry of {size} bytes exceeds {MAX_ENTRY_BYTES}", reason=Reason.OVERSIZED
        )
    version, origin, seq, prev, hlc, op_len = _HEADER.unpack_from(raw)
    if version != ENTRY_VERSION:
        raise RemoteError(f"unknown entry version {version}", reason=Reason.VERSION)
    if HEADER_BYTES + op_len + SIG_BYTES != size:
        raise RemoteError("entry length does not match its op length", reason=Reason.MALFORMED)
    if seq > MAX_SEQ:
        raise RemoteError(f"entry seq {seq} is out of range", reason=Reason.MALFORMED)
    if seq == 0 and prev != ZERO_HASH:
        raise RemoteError(
            "first entry of an origin must have a zero prev hash", reason=Reason.CHAIN
        )
    return Entry(origin, seq, prev, hlc, raw[HEADER_BYTES : HEADER_BYTES + op_len], raw)


def verify_signature(entry: Entry, key_cache: dict[bytes, VerifyKey] | None = None) -> None:
    key = key_cache.get(entry.origin) if key_cache is not None else None
    if key is None:
        try:
            key = VerifyKey(entry.origin)
        except Exception as exc:  # nacl raises several types for a bad point
            raise RemoteError(
                "entry origin is not an Ed25519 key", reason=Reason.SIGNATURE
            ) from exc
    try:
        key.verify(entry.signed_part, entry.signature)
    except BadSignatureError as exc:
        raise RemoteError(
            f"bad signature on entry seq {entry.seq} of origin {entry.origin.hex()[:16]}",
            reason=Reason.SIGNATURE,
        ) from exc
    # Cached only once it verified something: a forger's random origins cost nothing.
    if key_cache is not None and len(key_cache) < 100_000:
        key_cache.setdefault(entry.origin, key)


class CheckedSignatures:
    """The hashes of entries whose signature verified here, the newest kept.

    A live entry is verified twice on a node: by the live topic's validator,
    before gossipsub forwards it, and again by the engine. An Ed25519 check
    is the dearest step of both (3.5 % of a node's CPU in a 16-node burst, the
    second half of it wasted). The hash is blake2b-256 over the entry's exact
    bytes, signature included, so only the bytes that verified pass; any
    other entry is verified as before. Holding `capacity` hashes (32 bytes
    each) covers a live group (256 entries) many times; a backlog past it
    (1 024 LIVEs of up to 64) only costs a second check.
    """

    def __init__(self, capacity: int = 16_384) -> None:
        self._capacity = capacity
        self._hashes: dict[bytes, None] = {}

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def verify(
        self, entry: Entry, digest: bytes, key_cache: dict[bytes, VerifyKey] | None = None
    ) -> None:
        """`verify_signature`, unless the entry of hash `digest` passed it here.

        `digest` must be `entry_hash(entry.raw)` (callers have it already): any
        other value would record a verdict under the wrong bytes.
        """
        if digest in self._hashes:
            return
        verify_signature(entry, key_cache)
        self._note(digest)

    def verify_run(
        self, entries: list[tuple[Entry, bytes]], key_cache: dict[bytes, VerifyKey] | None = None
    ) -> None:
        """`verify` each (entry, digest) of a LIVE run, the last first, and note
        them only once all verified: a refused run leaves no trace. Last first
        because the hash links bind the run to it: genuine entries replayed
        with a forgery appended cost one check, not one each."""
        for entry, digest in reversed(entries):
            if digest not in self._hashes:
                verify_signature(entry, key_cache)
        for _, digest in entries:
            self._note(digest)

    def note_verified(self, digests: list[bytes]) -> None:
        """Hashes of entries whose signature verified before they reached the
        engine (`batch_signatures.verified_in_batch`, in a worker thread)."""
        for digest in digests:
            self._note(digest)

    def _note(self, digest: bytes) -> None:
        if digest in self._hashes:
            return
        if len(self._hashes) >= self._capacity:
            del self._hashes[next(iter(self._hashes))]  # the oldest
        self._hashes[digest] = None
