"""Identities: Ed25519 keys, libp2p peer ids, and recipe ids.

An origin is named inside entries by its raw 32-byte Ed25519 public key; to
people and to libp2p it is the peer id, which for Ed25519 keys simply embeds
that key (identity multihash of the protobuf-encoded public key). Both
directions are pure functions, so the core never needs libp2p.
"""

from __future__ import annotations

import hashlib
import struct

import base58
from nacl.signing import SigningKey

PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
RECIPE_ID_BYTES = 10

# protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}
_PROTOBUF_ED25519_PREFIX = b"\x08\x01\x12\x20"
# multihash: identity code (0x00), length 36
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"
_PEER_ID_PREFIX = _IDENTITY_MULTIHASH_PREFIX + _PROTOBUF_ED25519_PREFIX


class InvalidPeerId(ValueError):
    """A peer id string that does not name an Ed25519 libp2p key."""


def public_key_from_seed(seed: bytes) -> bytes:
    return bytes(SigningKey(seed).verify_key)


def peer_id_from_public_key(public_key: bytes) -> str:
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise InvalidPeerId(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return base58.b58encode(_PEER_ID_PREFIX + public_key).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes:
    try:
        raw = base58.b58decode(peer_id.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidPeerId(f"not base58: {peer_id!r}") from exc
    if len(raw) != len(_PEER_ID_PREFIX) + PUBLIC_KEY_BYTES or not raw.startswith(_PEER_ID_PREFIX):
        raise InvalidPeerId(f"not an Ed25519 libp2p peer id: {peer_id!r}")
    return raw[len(_PEER_ID_PREFIX) :]


def peer_id_from_seed(seed: bytes) -> str:
    return peer_id_from_public_key(public_key_from_seed(seed))


def make_recipe_id(author: bytes, create_seq: int) -> str:
    """The id of the recipe created by `author`'s entry number `create_seq`.

    Binding the id to its author lets every node check, from one entry alone
    and in any arrival order, that an op on a recipe comes from its author.
    """
    digest = hashlib.blake2b(
        author + struct.pack(">Q", create_seq),
        digest_size=RECIPE_ID_BYTES,
        person=b"p2psync-recipe",
    )
    return digest.hexdigest()
