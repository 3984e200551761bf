"""Keyed PRF tokens (HMAC-SHA256) and constant-time comparison.

An MPP turns a customer's account id into a pseudonymous token with a key only it
holds: stable per MPP (the network can count velocity per token) and unlinkable
across MPPs (another MPP's key gives an unrelated token for the same person)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from veilpay.crypto.signing import b64e
from veilpay.errors import ConfigError

__all__ = ["TokenKey", "ct_equal", "hmac_sha256", "random_id"]


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def ct_equal(a: bytes | str, b: bytes | str) -> bool:
    """Constant-time equality for secrets (tokens, digests, passwords)."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


def random_id(prefix: str, nbytes: int = 16) -> str:
    """An unguessable identifier from OS entropy, e.g. ``pay_…``."""
    return f"{prefix}{secrets.token_hex(nbytes)}"


class TokenKey:
    """The MPP's customer-token key: 32 bytes from OS entropy."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError("a token key is 32 bytes")
        self._key = bytes(key)

    @classmethod
    def generate(cls) -> TokenKey:
        return cls(secrets.token_bytes(32))

    def to_bytes(self) -> bytes:
        return self._key

    def token(self, issuer: str, customer_id: str) -> str:
        """``tk_`` + base64url(HMAC-SHA256(key, issuer | customer id)), 256-bit."""
        msg = b"veilpay/customer-token/v1\x00" + issuer.encode() + b"\x00" + customer_id.encode()
        return "tk_" + b64e(hmac_sha256(self._key, msg))

    def __repr__(self) -> str:
        return "TokenKey(<secret>)"
