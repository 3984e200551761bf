"""Commutative blinding on X25519 for ECDH-PSI: hash ids to u-coordinates, raise them
to a per-session secret scalar.

Why it is sound (docs/psi.md has the long form):
- X25519(k, u) is the x-only Montgomery ladder of RFC 7748 with k clamped (bit 255
  cleared, bit 254 set, low 3 bits cleared: a multiple of the cofactor 8). For any u
  the ladder computes the u-coordinate of [k]P where P is one of the two points with
  that u, on the curve or on its quadratic twist; [a]([b]P) = [ab]P = [b]([a]P), and
  the u-coordinate of -Q equals that of Q, so blinding commutes: the DDH-style ECDH-PSI
  argument (Meadows 1986; Huberman-Franklin-Hogg 1999) goes through.
- Half of all hashed u land on the twist. Curve25519 is twist-secure (the twist's
  large prime subgroup has order about 2^252), so the discrete-log hardness holds there
  as well; clamping removes the small-order components on both.
- A u of small order (or one whose clamped multiple is the identity) gives the all-
  zero output, which `cryptography` refuses; we turn that into `InvalidPoint` rather
  than ever comparing zeros. Non-canonical inputs (u >= 2^255 - 19, or the top bit
  set) are refused before use, so one point has one encoding.
- Hash to u: SHA-512 over a domain-separation tag, the session salt and the id (each
  length-prefixed), first 32 bytes, top bit cleared and reduced below p by rejection-
  free folding (values >= p, probability 2^-250, are rehashed with a counter).

Work is split over worker processes (`python -m veilpay.crypto._blind_worker`, kept
for a whole session by `BlindingPool`): the binding holds the GIL during the scalar
multiplication (measured: 2 threads 34 us/op, 1 thread 29 us/op), so threads do not
help. Workers get the key once, then framed batches of raw point bytes on stdin, and
answer raw bytes on stdout; nothing pickled crosses.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from veilpay.crypto.points import POINT, InvalidPointError
from veilpay.crypto.pool import BlindingPool
from veilpay.errors import InvalidInput

__all__ = ["POINT", "BlindingKey", "InvalidPointError", "check_points", "hash_to_points"]

P25519 = 2**255 - 19
_P_BYTES = P25519.to_bytes(32, "little")
_COUNTER0 = struct.pack("<I", 4) + bytes(4)  # lp(counter 0)


def _lp(part: bytes) -> bytes:
    return struct.pack("<I", len(part)) + part


def hash_to_points(ids: Sequence[bytes], salt: bytes, dst: bytes) -> np.ndarray:
    """(n, 32) uint8 array of canonical u-coordinates, one per id:
    SHA-512(lp(SHA-512(lp(dst) lp(salt))) lp(id) lp(counter)), first 32 bytes, top bit
    cleared; a value >= p (probability 2^-250) is rehashed with the next counter."""
    base = hashlib.sha512(_lp(hashlib.sha512(_lp(dst) + _lp(salt)).digest()))
    digests = []
    for ident in ids:
        h = base.copy()
        h.update(_lp(ident) + _COUNTER0)
        digests.append(h.digest()[:POINT])
    out = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(ids), POINT).copy()
    out[:, 31] &= 0x7F
    for i in _not_reduced(out):
        for counter in range(1, 1 << 32):
            h = base.copy()
            h.update(_lp(ids[i]) + _lp(counter.to_bytes(4, "little")))
            digest = bytearray(h.digest()[:POINT])
            digest[31] &= 0x7F
            if int.from_bytes(digest, "little") < P25519:
                out[i] = np.frombuffer(bytes(digest), dtype=np.uint8)
                break
    return out


def _not_reduced(points: np.ndarray) -> np.ndarray:
    """Rows (top bit already clear) whose u is >= 2^255 - 19: bytes 1..30 all 0xff,
    byte 31 0x7f, byte 0 >= 0xed."""
    return np.flatnonzero((points[:, 31] == 0x7F) & (points[:, 1:31] == 0xFF).all(axis=1) & (points[:, 0] >= 0xED))


def check_points(points: np.ndarray) -> None:
    """Refuse a batch that is not (n, 32) uint8 canonical u-coordinates."""
    if points.dtype != np.uint8 or points.ndim != 2 or points.shape[1] != POINT:
        raise InvalidInput(f"points must be an (n, 32) uint8 array, got {points.dtype} {points.shape}")
    if not len(points):
        return
    top = points[:, 31] & 0x80
    if top.any():
        raise InvalidPointError(int(np.argmax(top != 0)), "top bit set (non-canonical encoding)")
    suspect = _not_reduced(points)
    if len(suspect):
        raise InvalidPointError(int(suspect[0]), "u-coordinate not reduced below 2^255 - 19")


class BlindingKey:
    """A fresh secret scalar for one PSI session; ``blind`` raises points to it."""

    curve_id = 1

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def from_raw(cls, raw: bytes) -> BlindingKey:
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def raw(self) -> bytes:
        return self._key.private_bytes_raw()

    def check(self, points: np.ndarray) -> None:
        check_points(points)

    @classmethod
    def generate(cls) -> BlindingKey:
        return cls(X25519PrivateKey.from_private_bytes(secrets.token_bytes(32)))

    def __repr__(self) -> str:
        return "BlindingKey(<secret>)"

    def _blind_bytes(self, data: bytes, start: int) -> bytes:
        """[k]u for each 32-byte u in ``data`` (already checked canonical)."""
        exchange = self._key.exchange
        from_bytes = X25519PublicKey.from_public_bytes
        try:
            return b"".join([exchange(from_bytes(data[i : i + POINT])) for i in range(0, len(data), POINT)])
        except ValueError:  # all-zero shared secret: a small-order input; find which
            for i in range(len(data) // POINT):
                try:
                    exchange(from_bytes(data[i * POINT : (i + 1) * POINT]))
                except ValueError as exc:
                    raise InvalidPointError(start + i, "small-order point (all-zero result)") from exc
            raise

    def _blind_range(self, points: np.ndarray, start: int) -> np.ndarray:
        out = self._blind_bytes(points.tobytes(), start)
        return np.frombuffer(out, dtype=np.uint8).reshape(len(points), POINT).copy()

    def blind(self, points: np.ndarray, workers: int | None = None, min_per_worker: int = 20000) -> np.ndarray:
        """[k]u for every row of an (n, 32) point array; a large batch is split over
        ``workers`` processes (default: every core)."""
        check_points(points)
        n = len(points)
        workers = max(1, min(workers or os.cpu_count() or 1, n // min_per_worker))
        if workers == 1:
            return self._blind_range(points, 0)
        bounds = np.linspace(0, n, workers + 1).astype(int)
        with BlindingPool(self, workers) as pool:
            parts = [pool.submit(points[lo:hi], int(lo)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
            return np.concatenate([f.result() for f in parts])
