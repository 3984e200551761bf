"""Fixed-point numbers in the ring Z_2^64.

A real v is stored as the two's-complement integer round(v * 2^f) mod 2^64, f the
fraction bits (default 16). Representable: |v| < 2^(63-f) (2^47 = 1.4e14 for f=16),
step 2^-f. Encoding a value outside that range, NaN or inf raises
FixedPointOverflow; nothing saturates silently. Decoding reads the ring element as a
signed int64 and divides by 2^f, exact to the last fraction bit for negative values
too (float64 holds every integer below 2^53).

Products must stay well inside the ring before truncation: x*y*2^(2f) < 2^62
(|x*y| < 2^30 for f=16), see docs/mpc.md for the truncation bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from veilpay.errors import FixedPointOverflow, InvalidInput

__all__ = ["FixedPoint"]


@dataclass(frozen=True)
class FixedPoint:
    frac_bits: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.frac_bits <= 40:
            raise InvalidInput("frac_bits must be between 1 and 40")

    @property
    def scale(self) -> float:
        return float(1 << self.frac_bits)

    @property
    def max_abs(self) -> float:
        """Largest magnitude that encodes (exclusive)."""
        return float(2 ** (63 - self.frac_bits))

    def encode(self, values: ArrayLike) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise FixedPointOverflow("NaN or infinite value cannot be encoded")
        scaled = np.rint(v * self.scale)
        if scaled.size and np.max(np.abs(scaled)) >= 2.0**63:
            raise FixedPointOverflow(
                f"value outside the fixed-point range |v| < 2^{63 - self.frac_bits} (f={self.frac_bits})"
            )
        return scaled.astype(np.int64).view(np.uint64)

    def decode(self, ring: np.ndarray) -> np.ndarray:
        signed = np.asarray(ring, dtype=np.uint64).view(np.int64)
        # Split so that integers beyond 2^53 still decode to the nearest double.
        hi = (signed >> self.frac_bits).astype(np.float64)
        lo = (signed & ((1 << self.frac_bits) - 1)).astype(np.float64)
        return hi + lo / self.scale

    @staticmethod
    def encode_int(values: ArrayLike) -> np.ndarray:
        v = np.asarray(values)
        if v.dtype.kind == "f":
            if not np.all(np.isfinite(v)) or not np.all(v == np.rint(v)):
                raise InvalidInput("integer input holds non-integer values")
            if v.size and np.max(np.abs(v)) >= 2.0**63:
                raise FixedPointOverflow("integer outside the int64 range")
        return v.astype(np.int64).view(np.uint64)

    @staticmethod
    def decode_int(ring: np.ndarray) -> np.ndarray:
        return np.asarray(ring, dtype=np.uint64).view(np.int64).copy()
