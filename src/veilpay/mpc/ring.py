"""Arithmetic in Z_2^64 on uint64 numpy arrays (numpy wraps mod 2^64).

`ring_matmul` is exact modulo 2^64 but runs on the float64 BLAS: each operand is cut
into three signed limbs of at most 22 bits (|limb| <= 2^21) at weights 1, 2^22, 2^44.
Limb pairs of weight 2^66 or more vanish mod 2^64, which leaves six limb products;
Karatsuba's trick makes them five GEMMs:

    P00 = A0 B0,  P11 = A1 B1,  S = (A0 + A1)(B0 + B1),  X = A0 B2 + A2 B0
    A B = P00 + 2^22 (S - P00 - P11) + 2^44 (P11 + X)   (mod 2^64)

|A0 + A1| <= 2^22, so S summed over k <= 512 terms stays within 2^53 and every GEMM
is exact in float64. numpy's own uint64 matmul has no BLAS and is about 55x slower
than one float64 GEMM.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ring_matmul", "split_limbs"]

_LIMB = 22
_THIN = 20
_MAX_K = 512  # 512 * 2^22 * 2^22 = 2^53: S is exact
_SMALL = 64 * 64 * 64  # below this many multiply-adds numpy's own loop is faster
_HALF = np.uint64(1 << (_LIMB - 1))
_MASK = np.uint64((1 << _LIMB) - 1)
_SHIFT1 = np.uint64(_LIMB)
_SHIFT2 = np.uint64(2 * _LIMB)


def split_limbs(a: np.ndarray) -> list[np.ndarray]:
    """a == l0 + 2^22 l1 + 2^44 l2 (mod 2^64) with float64 limbs, |l0|, |l1| <= 2^21 and
    -2^21 <= l2 < 2^20. Adding 2^21 before masking centres the low limbs; the carry it
    leaves in the high part is what makes the identity hold."""
    limbs = []
    t = a + _HALF
    for _ in range(2):
        low = (t & _MASK).view(np.int64).astype(np.float64)
        low -= float(1 << (_LIMB - 1))
        limbs.append(low)
        t >>= _SHIFT1
        t += _HALF
    t -= _HALF
    limbs.append(t.view(np.int64).astype(np.float64))
    return limbs


def _to_ring(x: np.ndarray) -> np.ndarray:
    return x.astype(np.int64).view(np.uint64)


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
    out = np.zeros((m, n), dtype=np.uint64)
    for start in range(0, k, _MAX_K):
        a0, a1, a2 = split_limbs(np.ascontiguousarray(a[:, start : start + _MAX_K]))
        b0, b1, b2 = split_limbs(np.ascontiguousarray(b[start : start + _MAX_K]))
        p00 = _to_ring(a0 @ b0)
        p11 = _to_ring(a1 @ b1)
        s = _to_ring((a0 + a1) @ (b0 + b1))
        x = a0 @ b2
        x += a2 @ b0
        out += p00
        out += (s - p00 - p11) << _SHIFT1
        out += (p11 + _to_ring(x)) << _SHIFT2
    return out
