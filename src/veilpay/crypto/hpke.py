"""HPKE (RFC 9180, base mode) from ``cryptography.hazmat.primitives.hpke``, for field
encryption from one partner to another.

Two suites: ``x25519`` (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM) by
default, and ``mlkem768-x25519`` (the hybrid post-quantum KEM ML-KEM-768 + X25519,
HKDF-SHA256, AES-256-GCM). ``info`` binds each ciphertext to its context (field
group, payment, recipient, key version), so a ciphertext cut from one payment does
not open in another."""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from veilpay.errors import ConfigError, DecryptionError

__all__ = ["SUITES", "HpkeOpenError", "HpkePrivateKey", "HpkePublicKey"]

SUITES = ("x25519", "mlkem768-x25519")
_X = 32
_MLKEM_PUB = 1184
_MLKEM_SEED = 64


class HpkeOpenError(DecryptionError):
    """A ciphertext that does not open under this key and context."""


def _suite(name: str) -> hpke.Suite:
    if name == "x25519":
        return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    if name == "mlkem768-x25519":
        return hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    raise ConfigError(f"unknown HPKE suite {name!r}; known: {', '.join(SUITES)}")


def _check_suite(name: str) -> str:
    _suite(name)
    return name


class HpkePublicKey:
    def __init__(self, suite: str, raw: bytes) -> None:
        self.suite = _check_suite(suite)
        self._raw = bytes(raw)
        try:
            if suite == "x25519":
                if len(raw) != _X:
                    raise ValueError("length")
                self._key: object = x25519.X25519PublicKey.from_public_bytes(raw)
            else:
                if len(raw) != _MLKEM_PUB + _X:
                    raise ValueError("length")
                self._key = hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUB]),
                    x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUB:]))
        except ValueError as exc:
            raise ConfigError(f"not an HPKE {suite} public key") from exc

    def to_bytes(self) -> bytes:
        return self._raw

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        """``enc || ciphertext`` for this key, bound to ``info``."""
        return _suite(self.suite).encrypt(plaintext, self._key, info=info)  # type: ignore[arg-type]


class HpkePrivateKey:
    def __init__(self, suite: str, raw: bytes) -> None:
        self.suite = _check_suite(suite)
        self._raw = bytes(raw)
        try:
            if suite == "x25519":
                if len(raw) != _X:
                    raise ValueError("length")
                xk = x25519.X25519PrivateKey.from_private_bytes(raw)
                self._key: object = xk
                self._pub = xk.public_key().public_bytes_raw()
            else:
                if len(raw) != _MLKEM_SEED + _X:
                    raise ValueError("length")
                mk = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED])
                xk = x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED:])
                self._key = hpke.MLKEM768X25519PrivateKey(mk, xk)
                self._pub = mk.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        except ValueError as exc:
            raise ConfigError(f"not an HPKE {suite} private key") from exc

    @classmethod
    def generate(cls, suite: str = "x25519") -> HpkePrivateKey:
        xraw = x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        if _check_suite(suite) == "x25519":
            return cls(suite, xraw)
        return cls(suite, mlkem.MLKEM768PrivateKey.generate().private_bytes_raw() + xraw)

    def to_bytes(self) -> bytes:
        return self._raw

    def public(self) -> HpkePublicKey:
        return HpkePublicKey(self.suite, self._pub)

    def open(self, sealed: bytes, info: bytes) -> bytes:
        try:
            return _suite(self.suite).decrypt(sealed, self._key, info=info)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - any failure to open is the same answer
            raise HpkeOpenError("ciphertext does not open with this key and context") from exc

    def __repr__(self) -> str:
        return f"HpkePrivateKey({self.suite}, <secret>)"
