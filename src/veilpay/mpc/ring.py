"""Arithmetic in Z_2^64 on uint64 numpy arrays (numpy wraps mod 2^64).

`ring_matmul` is exact modulo 2^64 but runs on the float64 BLAS: each operand is cut
into three signed limbs of at most 22 bits (|limb| <= 2^21), so a limb product summed
over up to 2048 terms stays below 2^53 and is exact in float64. Only limb pairs whose
weight is below 2^64 matter: 6 GEMMs instead of numpy's BLAS-less uint64 matmul,
which is about 55x slower than one float64 GEMM.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ring_matmul", "split_limbs"]

_LIMB = 22
_MAX_K = 2048  # 2048 * 2^21 * 2^21 = 2^53
_SMALL = 64 * 64 * 64  # below this many multiply-adds numpy's own loop is faster
_HALF = np.uint64(1 << (_LIMB - 1))
_MASK = np.uint64((1 << _LIMB) - 1)


def split_limbs(a: np.ndarray) -> list[np.ndarray]:
    """a == l0 + 2^22 l1 + 2^44 l2 (mod 2^64) with float64 limbs, |l0|, |l1| <= 2^21 and
    0 <= l2 < 2^20. Adding 2^21 before masking centres the low limbs; the carry it
    leaves in the high part is what makes the identity hold."""
    limbs = []
    t = a + _HALF
    for _ in range(2):
        low = (t & _MASK).view(np.int64).astype(np.float64)
        low -= float(1 << (_LIMB - 1))
        limbs.append(low)
        t >>= np.uint64(_LIMB)
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
    if m * k * n <= _SMALL:
        return a @ b
    out = np.zeros((m, n), dtype=np.uint64)
    for start in range(0, k, _MAX_K):
        la = split_limbs(np.ascontiguousarray(a[:, start : start + _MAX_K]))
        lb = split_limbs(np.ascontiguousarray(b[start : start + _MAX_K]))
        out += _to_ring(la[0] @ lb[0])
        out += _to_ring(la[0] @ lb[1]) << np.uint64(_LIMB)
        out += _to_ring(la[1] @ lb[0]) << np.uint64(_LIMB)
        top = _to_ring(la[0] @ lb[2]) + _to_ring(la[1] @ lb[1]) + _to_ring(la[2] @ lb[0])
        out += top << np.uint64(2 * _LIMB)
    return out
