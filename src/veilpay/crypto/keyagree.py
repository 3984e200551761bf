"""Pairwise seed agreement: X25519 Diffie-Hellman, then HKDF-SHA256.

Each party makes a fresh X25519 key per session and sends the public half over the
(already mutually authenticated) channel; both ends of a pair derive the same
32-byte seed, bound to the session id and the two party names in sorted order.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veilpay.errors import InvalidInput

__all__ = ["SeedAgreement"]


class SeedAgreement:
    """One party's ephemeral X25519 key for agreeing seeds with its peers."""

    __slots__ = ("_key",)

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SeedAgreement:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SeedAgreement:
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def __repr__(self) -> str:
        return "SeedAgreement(<private>)"

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def derive(self, peer_public: bytes, session: bytes, me: str, peer: str) -> bytes:
        """The seed shared with ``peer``; raises InvalidInput for a malformed or low-order key."""
        if len(peer_public) != 32:
            raise InvalidInput("an X25519 public key is 32 bytes")
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except (ValueError, InvalidKey) as exc:  # all-zero output: small-order point
            raise InvalidInput("peer sent a low-order X25519 public key") from exc
        first, second = sorted((me, peer))
        info = b"veilpay/pair-seed/" + first.encode() + b"/" + second.encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=session, info=info).derive(shared)
