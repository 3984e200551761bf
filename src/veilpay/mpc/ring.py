"""Arithmetic in Z_2^64 on uint64 numpy arrays (numpy wraps mod 2^64).

`ring_matmul` is exact modulo 2^64 but runs on the float64 BLAS. Each operand is cut
into three signed limbs at weights 1, 2^22 and 2^42: |A0| <= 2^21 (22 bits),
|A1| <= 2^19 (20 bits), |A2| <= 2^21 (22 bits). Limb pairs of weight 2^64 or more
vanish mod 2^64, which leaves six limb products; Karatsuba's trick makes them five
GEMMs:

    P00 = A0 B0,  P11 = A1 B1,  S = (A0 + A1)(B0 + B1),  X = A0 B2 + A2 B0
    A B = P00 + 2^22 (S - P00 - P11) + 2^44 P11 + 2^42 X   (mod 2^64)

Summed over k <= 1024 terms every GEMM stays within 2^53, so each is exact in
float64: |S| <= (2^21 + 2^19)^2 * 2^10 < 1.6 * 2^52 and |X| <= 2 * 2^42 * 2^10 =
2^53. A longer k is cut into blocks of 1024. numpy's own uint64 matmul has no BLAS
and is about 55x slower than one float64 GEMM.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ring_matmul", "split_limbs"]

_THIN = 20
_MAX_K = 1024  # see the bounds above
_SMALL = 64 * 64 * 64  # below this many multiply-adds numpy's own loop is faster
_BIAS = np.uint64((1 << 21) + (1 << 41))  # centres limb 0 (22 bits) and limb 1 (20 bits)
_MASK0 = np.uint64((1 << 22) - 1)
_MASK1 = np.uint64((1 << 20) - 1)
_22 = np.uint64(22)
_42 = np.uint64(42)
_44 = np.uint64(44)


def split_limbs(a: np.ndarray) -> list[np.ndarray]:
    """a == l0 + 2^22 l1 + 2^42 l2 (mod 2^64) with float64 limbs, -2^21 <= l0 < 2^21,
    -2^19 <= l1 < 2^19 and -2^21 <= l2 < 2^21. Adding 2^21 + 2^41 before masking
    centres the low limbs; the carry it leaves in the high part, read as a signed
    22-bit number, is what makes the identity hold."""
    t = a + _BIAS
    u = t & _MASK0
    l0 = u.view(np.int64).astype(np.float64)
    l0 -= float(1 << 21)
    np.right_shift(t, _22, out=u)
    u &= _MASK1
    l1 = u.view(np.int64).astype(np.float64)
    l1 -= float(1 << 19)
    top = t.view(np.int64)
    top >>= 42  # arithmetic shift: the signed top 22 bits
    return [l0, l1, top.astype(np.float64)]


def _add_shifted(out: np.ndarray, f: np.ndarray, shift: np.uint64) -> None:
    """out += int(f) << shift (mod 2^64) for an exact integer-valued float64 f."""
    i = f.astype(np.int64).view(np.uint64)
    i <<= shift
    out += i


def ring_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a @ b) mod 2^64 for uint64 2-D arrays, exact."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"ring_matmul needs (m,k) @ (k,n), got {a.shape} @ {b.shape}")
    m, k = a.shape
    n = b.shape[1]
    if m * k * n <= _SMALL or m * k * n <= _THIN * (m * k + k * n + m * n):
        # Small or thin (e.g. matrix-vector): splitting the operands into limbs costs
        # more than numpy's plain integer product (measured crossover near 20-30).
        return a @ b
    out = _block_product(a[:, :_MAX_K], b[:_MAX_K])
    for start in range(_MAX_K, k, _MAX_K):
        out += _block_product(a[:, start : start + _MAX_K], b[start : start + _MAX_K])
    return out


def _block_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a @ b) mod 2^64 for an inner dimension of at most 1024."""
    a0, a1, a2 = split_limbs(np.ascontiguousarray(a))
    b0, b1, b2 = split_limbs(np.ascontiguousarray(b))
    p00 = a0 @ b0
    p11 = a1 @ b1
    s = (a0 + a1) @ (b0 + b1)
    x = a0 @ b2
    x += a2 @ b0
    s -= p00  # exact: every value is an integer below 2^53
    s -= p11
    out = p00.astype(np.int64).view(np.uint64)
    _add_shifted(out, s, _22)
    _add_shifted(out, p11, _44)
    _add_shifted(out, x, _42)
    return out
