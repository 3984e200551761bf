"""AES-128-CTR pseudo-random generator for shares, masks and correlated randomness.

A `Prg` is a keystream: every draw consumes the next bytes of AES-CTR under a 128-bit
key derived (HKDF-SHA256) from a seed of at least 16 bytes. Two parties holding the
same seed draw the same arrays in the same order, which is how the dealer and PRSS
avoid sending randomness. OpenSSL's AES-NI path makes this ~2 GB/s per core.
"""

from __future__ import annotations

import secrets

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veilpay.errors import InvalidInput

__all__ = ["Prg", "derive_seed", "label_digest", "random_seed"]

SEED_BYTES = 32
_CHUNK = 1 << 24  # bytes encrypted per call: bounds the zero buffer


def random_seed() -> bytes:
    """A fresh seed from the OS entropy source."""
    return secrets.token_bytes(SEED_BYTES)


def derive_seed(seed: bytes, label: str) -> bytes:
    """An independent seed for ``label``, derived from ``seed`` with HKDF-SHA256."""
    if len(seed) < 16:
        raise InvalidInput("a seed needs at least 16 bytes")
    return HKDF(
        algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=b"veilpay/seed/" + label.encode()
    ).derive(seed)


class Prg:
    """Deterministic keystream; never share one instance between threads."""

    __slots__ = ("_enc", "_zeros")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes | bytearray) or len(seed) < 16:
            raise InvalidInput("a PRG seed must be at least 16 bytes")
        material = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"veilpay/prg/aes128-ctr"
        ).derive(bytes(seed))
        cipher = Cipher(algorithms.AES(material[:16]), modes.CTR(material[16:]))
        self._enc = cipher.encryptor()
        self._zeros = bytes(0)

    @classmethod
    def from_key_iv(cls, key: bytes, iv: bytes) -> Prg:
        """Raw AES-CTR keystream under ``key`` from counter block ``iv`` (for
        known-answer tests against SP 800-38A)."""
        prg = cls.__new__(cls)
        prg._enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        prg._zeros = b""
        return prg

    def __repr__(self) -> str:
        return "Prg(<keyed>)"

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Overwrite the C-contiguous array ``out`` with keystream bytes and return it."""
        if not out.flags.c_contiguous:
            raise InvalidInput("Prg.fill needs a C-contiguous array")
        view = out.reshape(-1).view(np.uint8)
        view[:] = np.frombuffer(self.bytes(view.size), dtype=np.uint8)
        return out

    def _draw(self, nbytes: int) -> np.ndarray:
        # update_into writes straight into our buffer (it wants block_size-1 spare
        # bytes), saving the copy that update() + frombuffer would cost.
        buf = np.empty(nbytes + 16, dtype=np.uint8)
        pos = 0
        while pos < nbytes:
            step = min(_CHUNK, nbytes - pos)
            if len(self._zeros) < step:
                self._zeros = bytes(max(step, min(_CHUNK, 1 << 20)))
            self._enc.update_into(memoryview(self._zeros)[:step], memoryview(buf)[pos : pos + step + 15])  # type: ignore[arg-type]
            pos += step
        return buf[:nbytes]

    def uint64(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform ring elements of Z_2^64."""
        size = int(np.prod(shape, dtype=np.int64))
        return self._draw(size * 8).view(np.uint64).reshape(shape)

    def bytes(self, n: int) -> bytes:
        return self._enc.update(bytes(n))

    def bits(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform bits as uint64 0/1 values."""
        return self.uint64(shape) & np.uint64(1)


def label_digest(label: str, size: int = 16) -> bytes:
    """A public, deterministic identifier from a name (SHA-256, truncated): not a key."""
    if not 1 <= size <= 32:
        raise InvalidInput("label_digest size must be 1..32 bytes")
    h = hashes.Hash(hashes.SHA256())
    h.update(label.encode())
    return h.finalize()[:size]
