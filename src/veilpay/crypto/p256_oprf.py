"""An oblivious PRF on NIST P-256 for unbalanced PSI: F_k(id) = x([k] H(id)).

The client blinds with a fresh scalar r, the server raises to its long-lived key k,
and the client unblinds with r^-1 mod n, getting x([k] H(id)) without the server
seeing id and without learning k. X25519 cannot do this: its scalars are clamped, so
r^-1 cannot be applied (docs/psi.md). P-256 has prime order n (cofactor 1), and
`cryptography`'s ECDH takes any scalar in [1, n) and returns the x-coordinate only.

- Points travel as 32-byte big-endian x-coordinates (SEC1 compressed without the
  prefix byte). x([k]P) = x([k](-P)), so working up to sign is consistent, exactly as
  X25519's u-only ladder.
- Every point that arrives is decoded with `from_encoded_point`, which refuses x
  values that are not on the curve (no invalid-curve inputs reach a secret scalar).
  The identity has no such encoding.
- Hash to curve: try-and-increment over SHA-256(lp(SHA-256(lp(dst) lp(salt))) lp(id)
  lp(counter)), taking the first counter whose value is an x on the curve (about
  half are). It is not constant time in the number of tries; it only ever runs on
  the hashing party's own ids, and the tries count is not sent.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from veilpay.crypto.points import POINT, InvalidPointError
from veilpay.errors import InvalidInput

__all__ = ["P256_ORDER", "OprfKey", "check_p256_points", "hash_to_p256"]

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_CURVE = ec.SECP256R1()


def _lp(part: bytes) -> bytes:
    return struct.pack("<I", len(part)) + part


def _decode(x: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, b"\x02" + x)


def hash_to_p256(ids: Sequence[bytes], salt: bytes, dst: bytes) -> np.ndarray:
    """(n, 32) uint8 array of x-coordinates of points on P-256, one per id."""
    base = hashlib.sha256(_lp(hashlib.sha256(_lp(dst) + _lp(salt)).digest()))
    out = []
    for ident in ids:
        head = _lp(ident)
        for counter in range(1 << 16):
            h = base.copy()
            h.update(head + _lp(counter.to_bytes(4, "little")))
            x = h.digest()
            if int.from_bytes(x, "big") >= P256_P:
                continue
            try:
                _decode(x)
            except ValueError:
                continue
            out.append(x)
            break
        else:  # 2^-65536: not reachable, but never return a wrong-length array
            raise InvalidInput("no curve point found for an id")
    return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(len(ids), POINT).copy()


def check_p256_points(points: np.ndarray) -> None:
    """Shape and range of an (n, 32) array of x-coordinates (on-curve is checked when
    a point is used)."""
    if points.dtype != np.uint8 or points.ndim != 2 or points.shape[1] != POINT:
        raise InvalidInput(f"points must be an (n, 32) uint8 array, got {points.dtype} {points.shape}")


class OprfKey:
    """A scalar in [1, n) on P-256. ``generate`` for a fresh one, ``inverse`` for the
    unblinding scalar, ``raw`` (32 bytes, big-endian) to store or hand to a worker."""

    curve_id = 2

    def __init__(self, scalar: int) -> None:
        if not 1 <= scalar < P256_ORDER:
            raise InvalidInput("a P-256 scalar must be in [1, n)")
        self._scalar = scalar
        self._key = ec.derive_private_key(scalar, _CURVE)

    @classmethod
    def generate(cls) -> OprfKey:
        return cls(1 + secrets.randbelow(P256_ORDER - 1))

    @classmethod
    def from_raw(cls, raw: bytes) -> OprfKey:
        if len(raw) != 32:
            raise InvalidInput("a stored P-256 key is 32 bytes")
        return cls(int.from_bytes(raw, "big"))

    def raw(self) -> bytes:
        return self._scalar.to_bytes(32, "big")

    def inverse(self) -> OprfKey:
        return OprfKey(pow(self._scalar, -1, P256_ORDER))

    def __repr__(self) -> str:
        return "OprfKey(<secret>)"

    def check(self, points: np.ndarray) -> None:
        check_p256_points(points)

    def _blind_bytes(self, data: bytes, start: int) -> bytes:
        """x([k]P) for each 32-byte x in ``data``; an x not on the curve is refused."""
        out = []
        exchange, ecdh = self._key.exchange, ec.ECDH()
        for i in range(0, len(data), POINT):
            try:
                point = _decode(data[i : i + POINT])
            except ValueError as exc:
                raise InvalidPointError(start + i // POINT, "not an x-coordinate on P-256") from exc
            out.append(exchange(ecdh, point))
        return b"".join(out)

    def blind(self, points: np.ndarray) -> np.ndarray:
        check_p256_points(points)
        return np.frombuffer(self._blind_bytes(points.tobytes(), 0), dtype=np.uint8).reshape(-1, POINT).copy()
