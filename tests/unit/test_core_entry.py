"""Signed, hash-chained entries: encoding, hashing, tamper and bound checks."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2psync.core.entry import (
    HEADER_BYTES,
    MAX_ENTRY_BYTES,
    MAX_SEQ,
    MIN_ENTRY_BYTES,
    SIG_BYTES,
    ZERO_HASH,
    decode_entry,
    entry_hash,
    sign_entry,
    verify_signature,
)
from p2psync.core.errors import RemoteError
from p2psync.core.ops import MAX_OP_BYTES

KEY = SigningKey(b"\x11" * 32)
OTHER = SigningKey(b"\x22" * 32)
OP = b'{"k":"create","id":"0123456789abcdef0123","n":"x","g":"y","i":"z"}'


def _entry(seq: int = 0, prev: bytes = ZERO_HASH, hlc: int = 12345, op: bytes = OP):
    return sign_entry(KEY, seq, prev, hlc, op)


def test_sign_decode_round_trip() -> None:
    first = _entry()
    second = sign_entry(KEY, 1, first.hash(), 99, b"{}")
    for original in (first, second):
        decoded = decode_entry(original.raw)
        assert decoded == original
        assert decoded.origin == bytes(KEY.verify_key)
        assert decoded.raw == original.raw
        verify_signature(decoded)
    assert decode_entry(second.raw).prev == first.hash()
    assert len(first.raw) == HEADER_BYTES + len(OP) + SIG_BYTES


@settings(max_examples=40, deadline=None)
@given(
    seq=st.integers(0, MAX_SEQ),
    hlc=st.integers(0, 2**64 - 1),
    op=st.binary(max_size=300),
    prev=st.binary(min_size=32, max_size=32),
)
def test_round_trip_any_fields(seq: int, hlc: int, op: bytes, prev: bytes) -> None:
    prev = ZERO_HASH if seq == 0 else prev
    entry = sign_entry(KEY, seq, prev, hlc, op)
    decoded = decode_entry(entry.raw)
    assert (decoded.seq, decoded.prev, decoded.hlc, decoded.op) == (seq, prev, hlc, op)
    verify_signature(decoded, {})


def test_hash_covers_signature() -> None:
    entry = _entry()
    assert entry.hash() == entry_hash(entry.raw)
    other_sig = bytearray(entry.raw)
    other_sig[-1] ^= 0x01
    assert entry_hash(bytes(other_sig)) != entry.hash()
    # Same signed part, a different (valid) signer would give a different signature
    # and therefore a different hash even though seq/prev/hlc/op match.
    assert entry_hash(entry.signed_part) != entry.hash()


def test_tampering_any_byte_is_detected() -> None:
    entry = _entry(seq=3, prev=b"\x07" * 32)
    cache: dict = {}
    for index in range(len(entry.raw)):
        tampered = bytearray(entry.raw)
        tampered[index] ^= 0x40
        with pytest.raises(RemoteError) as info:
            verify_signature(decode_entry(bytes(tampered)), cache)
        assert info.value.reason in {"signature", "malformed", "version", "chain", "oversized"}


def test_wrong_signer_is_a_signature_error() -> None:
    entry = _entry()
    # Claim KEY's origin but sign with OTHER.
    forged = entry.signed_part + OTHER.sign(entry.signed_part).signature
    with pytest.raises(RemoteError) as info:
        verify_signature(decode_entry(forged))
    assert info.value.reason == "signature"


def test_origin_that_is_not_a_curve_point_is_a_signature_error() -> None:
    entry = _entry()
    raw = bytearray(entry.raw)
    raw[1:33] = b"\xff" * 32
    with pytest.raises(RemoteError) as info:
        verify_signature(decode_entry(bytes(raw)), {})
    assert info.value.reason == "signature"


def test_wrong_version_is_refused() -> None:
    raw = bytearray(_entry().raw)
    raw[0] = 2
    with pytest.raises(RemoteError) as info:
        decode_entry(bytes(raw))
    assert info.value.reason == "version"


def test_seq_zero_needs_zero_prev() -> None:
    entry = sign_entry(KEY, 0, b"\x01" * 32, 1, OP)  # validly signed, but wrong
    with pytest.raises(RemoteError) as info:
        decode_entry(entry.raw)
    assert info.value.reason == "chain"


def test_seq_beyond_max_is_refused() -> None:
    entry = sign_entry(KEY, MAX_SEQ + 1, b"\x01" * 32, 1, OP)
    with pytest.raises(RemoteError) as info:
        decode_entry(entry.raw)
    assert info.value.reason == "malformed"


def test_oversized_entry_is_refused() -> None:
    entry = sign_entry(KEY, 1, b"\x01" * 32, 1, b"x" * (MAX_OP_BYTES + 1))
    assert len(entry.raw) > MAX_ENTRY_BYTES
    with pytest.raises(RemoteError) as info:
        decode_entry(entry.raw)
    assert info.value.reason == "oversized"
    biggest = sign_entry(KEY, 1, b"\x01" * 32, 1, b"x" * MAX_OP_BYTES)
    assert decode_entry(biggest.raw).op == b"x" * MAX_OP_BYTES


def test_length_mismatch_and_short_input_are_malformed() -> None:
    raw = _entry().raw
    for bad in (raw[:-1], raw + b"\x00", b"", raw[: MIN_ENTRY_BYTES - 1]):
        with pytest.raises(RemoteError) as info:
            decode_entry(bad)
        assert info.value.reason == "malformed"
    # Declared op length disagreeing with the real size.
    lying = bytearray(raw)
    struct.pack_into(">H", lying, HEADER_BYTES - 2, len(OP) + 1)
    with pytest.raises(RemoteError):
        decode_entry(bytes(lying))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MIN_ENTRY_BYTES + 64))
def test_decode_arbitrary_bytes_raises_only_remote_error(data: bytes) -> None:
    try:
        entry = decode_entry(data)
    except RemoteError:
        return
    with pytest.raises(RemoteError):
        verify_signature(entry)


@settings(max_examples=200, deadline=None)
@given(
    origin=st.binary(min_size=32, max_size=32),
    seq=st.integers(0, 2**64 - 1),
    prev=st.binary(min_size=32, max_size=32),
    hlc=st.integers(0, 2**64 - 1),
    op=st.binary(max_size=100),
    sig=st.binary(min_size=64, max_size=64),
)
def test_well_framed_garbage_raises_only_remote_error(
    origin: bytes, seq: int, prev: bytes, hlc: int, op: bytes, sig: bytes
) -> None:
    raw = struct.pack(">B32sQ32sQH", 1, origin, seq, prev, hlc, len(op)) + op + sig
    try:
        entry = decode_entry(raw)
    except RemoteError as exc:
        assert exc.reason in {"malformed", "chain"}
        return
    assert entry.op == op and entry.seq == seq
    with pytest.raises(RemoteError) as info:
        verify_signature(entry, {})
    assert info.value.reason == "signature"
