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

__all__ = ["narrow_matmul", "narrow_t_matmul", "ring_matmul", "split_limbs"]

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


# -- narrow rings: Z_2^bits for bits <= 32 ----------------------------------------
# A float64 GEMM is exact while every product and every sum stays below 2^53. With
# one operand below 2^a_bits and the other cut into limbs of L bits, a block of R
# rows (inner dimension) sums R products below 2^(a_bits + L): exact when
# a_bits + L + log2(R) <= 53. The secure trees multiply 0/1 matrices masked in
# Z_2^32 (a_bits = 32) by vectors, so L = 8 at R = 8192: four limbs, one GEMM.
_EXACT_BITS = 53


def _limbs(v: np.ndarray, limb: int, count: int) -> np.ndarray:
    """v (rows, k) cut into ``count`` limbs of ``limb`` bits, side by side as float64."""
    mask = np.uint64((1 << limb) - 1)
    v64 = v.astype(np.uint64, copy=False)
    if count == 1:
        return (v64 & mask).astype(np.float64)
    return np.concatenate([((v64 >> np.uint64(limb * j)) & mask).astype(np.float64) for j in range(count)], axis=1)


def _plan(bits: int, a_bits: int, inner: int) -> tuple[int, int]:
    """(limb bits, limb count) for an exact product over ``inner`` summed terms."""
    room = _EXACT_BITS - a_bits - max(1, (inner - 1).bit_length())
    if room < 1:
        raise ValueError(f"no exact float64 plan for {a_bits}-bit entries over {inner} terms")
    limb = min(bits, room)
    return limb, -(-bits // limb)


def _fold(p: np.ndarray, limb: int, count: int, k: int, out: np.ndarray) -> None:
    """out += sum_j p[:, j k:(j+1) k] 2^(limb j) for exact float64 integers p."""
    ints = p.astype(np.int64).view(np.uint64)
    for j in range(count):
        part = ints[:, j * k : (j + 1) * k]
        out += part << np.uint64(limb * j) if j else part


def narrow_t_matmul(a: np.ndarray, v: np.ndarray, bits: int, a_bits: int, rows: int = 8192) -> np.ndarray:
    """(a^T v) mod 2^bits as uint64, for ``a`` (n, c) with entries below 2^a_bits and
    ``v`` (n, k) unsigned (only its low ``bits`` bits count). Row blocks of ``rows``
    keep the float64 copies small; v is cut into limbs so that each GEMM is exact."""
    n, c = a.shape
    if v.ndim != 2 or v.shape[0] != n:
        raise ValueError(f"narrow_t_matmul needs (n,c)^T @ (n,k), got {a.shape} and {v.shape}")
    k = v.shape[1]
    rows = max(1, min(rows, n))
    limb, count = _plan(bits, a_bits, rows)
    out = np.zeros((c, k), dtype=np.uint64)
    for r0 in range(0, n, rows):
        ab = a[r0 : r0 + rows].astype(np.float64)
        _fold(ab.T @ _limbs(v[r0 : r0 + rows], limb, count), limb, count, k, out)
    out &= np.uint64((1 << bits) - 1)
    return out


def narrow_matmul(a: np.ndarray, w: np.ndarray, bits: int, a_bits: int, rows: int = 32768) -> np.ndarray:
    """(a w) mod 2^bits as uint64, for ``a`` (n, c) unsigned, of which only the low
    ``a_bits`` bits count, and ``w`` (c, k) unsigned (low ``bits`` bits count);
    computed over row blocks of a."""
    n, c = a.shape
    if w.ndim != 2 or w.shape[0] != c:
        raise ValueError(f"narrow_matmul needs (n,c) @ (c,k), got {a.shape} and {w.shape}")
    k = w.shape[1]
    limb, count = _plan(bits, a_bits, c)
    wl = _limbs(w, limb, count)
    out = np.zeros((n, k), dtype=np.uint64)
    for r0 in range(0, n, rows):
        part = out[r0 : r0 + rows]
        blk = a[r0 : r0 + rows]
        if a_bits < blk.dtype.itemsize * 8:
            blk = blk & blk.dtype.type((1 << a_bits) - 1)
        _fold(blk.astype(np.float64) @ wl, limb, count, k, part)
    out &= np.uint64((1 << bits) - 1)
    return out
