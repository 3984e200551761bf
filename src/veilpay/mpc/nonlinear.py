"""Non-linear functions on SharedTensor, built from the protocol primitives.

Methods (measured errors in docs/mpc.md, from ``bench/accuracy.py``):
- comparison: the sign bit of x - y. Arithmetic shares become two boolean sharings
  (`Protocol.a2b`), a Kogge-Stone carry circuit over packed 64-bit words gives the
  carry into bit 63 in 1 + 6 AND rounds, and the bit returns to arithmetic shares.
  Exact while x - y stays inside the ring (|x - y| < 2^63 in ring units).
- ReLU, sign, abs, maximum, where: one comparison plus one product.
- max / argmax along an axis: a tournament of log2(n) comparison levels.
- exp: p(x / 2^8)^(2^8), p the cubic Taylor polynomial (CrypTen-style limit with a
  better base), 8 squarings, the first five with 8 extra fraction bits.
- reciprocal: Newton-Raphson, 10 iterations from 3 exp(0.5 - x) + 0.003 (CrypTen's
  start), sign handled by a comparison.
- sigmoid: 1 / (1 + exp(-|x|)) with |x| clipped to 16, the denominator in [1, 2]
  inverted by 3 Newton steps from a linear start, then mirrored for x < 0.
- log: CrypTen's Householder iteration (order 8, 3 rounds) from its start value.
- inv_sqrt: Newton from CrypTen's exp-based start; sqrt = x * inv_sqrt(x).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veilpay.mpc.protocol import Shares, map_shares
from veilpay.mpc.tensor import SharedTensor, concatenate

__all__ = [
    "argmax",
    "exp",
    "inv_sqrt",
    "less",
    "log",
    "max",
    "maximum",
    "msb",
    "reciprocal",
    "relu",
    "sigmoid",
    "sign",
    "sqrt",
    "where",
]

_SHIFTS = (1, 2, 4, 8, 16, 32)


def _bool_stack(a: Shares, b: Shares) -> Shares:
    return map_shares(lambda x, y: np.stack([x, y]), a, b)


def _carry_into_msb(x: SharedTensor) -> Shares:
    """Boolean sharing (bit 0) of the most significant bit of x."""
    rt, shape = x.rt, x.shape
    u, v = rt.a2b(x.sh, shape)
    p = map_shares(np.bitwise_xor, u, v)
    top = map_shares(lambda s: s >> np.uint64(63), p)
    g = rt.and_(u, v, shape)
    for i, s in enumerate(_SHIFTS):
        k = np.uint64(s)
        g_shift = map_shares(lambda t, k=k: t << k, g)
        if i == len(_SHIFTS) - 1:  # the last level needs no new propagate
            g = map_shares(np.bitwise_xor, g, rt.and_(p, g_shift, shape))
            break
        p_shift = map_shares(lambda t, k=k: t << k, p)
        both = rt.and_(_bool_stack(p, p), _bool_stack(g_shift, p_shift), (2, *shape))
        g = map_shares(lambda gg, r: gg ^ r[0], g, both)
        p = map_shares(lambda r: r[1], both)
    carry = map_shares(lambda t: t >> np.uint64(62), g)
    return map_shares(lambda a, c: (a ^ c) & np.uint64(1), top, carry)


_LOW32 = np.uint64(0xFFFFFFFF)


def _carry_into_bit31(x: SharedTensor) -> Shares:
    """Boolean sharing (bit 0, flat) of bit 31 of x: its sign when |x| < 2^31. Two
    32-bit lanes per word: half the AND traffic of the 64-bit circuit, one level
    fewer. Bits shifted across the lane boundary are cleared (a carry never crosses)."""
    rt = x.rt
    size = int(np.prod(x.shape))
    half = (size + 1) // 2
    u, v = rt.a2b(x.sh, x.shape)

    def pack(t: np.ndarray) -> np.ndarray:
        flat = np.zeros(2 * half, dtype=np.uint64)
        flat[:size] = t.reshape(-1) & _LOW32
        return flat[:half] | (flat[half:] << np.uint64(32))

    u, v = map_shares(pack, u), map_shares(pack, v)
    p = map_shares(np.bitwise_xor, u, v)
    top = p
    g = rt.and_(u, v, (half,))
    shifts = (1, 2, 4, 8, 16)
    for i, s in enumerate(shifts):
        k = np.uint64(s)
        keep = np.uint64(~(((1 << s) - 1) << 32) & 0xFFFFFFFFFFFFFFFF)
        g_shift = map_shares(lambda t, k=k, keep=keep: (t << k) & keep, g)
        if i == len(shifts) - 1:
            g = map_shares(np.bitwise_xor, g, rt.and_(p, g_shift, (half,)))
            break
        p_shift = map_shares(lambda t, k=k, keep=keep: (t << k) & keep, p)
        both = rt.and_(_bool_stack(p, p), _bool_stack(g_shift, p_shift), (2, half))
        g = map_shares(lambda gg, r: gg ^ r[0], g, both)
        p = map_shares(lambda r: r[1], both)

    def unpack(t: np.ndarray, c: np.ndarray) -> np.ndarray:
        lo = ((t >> np.uint64(31)) ^ (c >> np.uint64(30))) & np.uint64(1)
        hi = ((t >> np.uint64(63)) ^ (c >> np.uint64(62))) & np.uint64(1)
        return np.concatenate([lo, hi])[:size].reshape(x.shape)

    return map_shares(unpack, top, g)


def msb(x: SharedTensor, bits: int = 64) -> SharedTensor:
    """1 where x < 0, else 0 (integer sharing). ``bits=32`` is for values known to
    satisfy |x| < 2^31 in ring units (2^(31 - f) in fixed point): half the traffic."""
    if bits not in (32, 64):
        raise ValueError("msb works on 32 or 64 bits")
    with x.rt.comm.scope("msb"):
        bit = _carry_into_msb(x) if bits == 64 else _carry_into_bit31(x)
        return SharedTensor(x.rt, x.rt.bit_to_arith(bit, x.shape), x.shape, 0)


def less(x: SharedTensor | Any, y: SharedTensor | Any, bits: int = 64) -> SharedTensor:
    """1 where x < y, else 0 (``bits=32``: |x - y| < 2^31 in ring units, see msb)."""
    diff = x - y
    if not isinstance(diff, SharedTensor):
        raise TypeError("less() needs at least one SharedTensor")
    return msb(diff, bits)


def where(cond: SharedTensor, a: SharedTensor | Any, b: SharedTensor | Any) -> SharedTensor:
    """a where cond is 1, b where it is 0 (cond a 0/1 integer sharing)."""
    return cond * (a - b) + b


def relu(x: SharedTensor) -> SharedTensor:
    with x.rt.comm.scope("relu"):
        return x * (1 - msb(x))


def sign(x: SharedTensor) -> SharedTensor:
    """-1 for x < 0, else 1 (sign(0) = 1)."""
    return 1 - 2 * msb(x)


def maximum(a: SharedTensor, b: SharedTensor | Any) -> SharedTensor:
    return where(less(a, b), b, a)


def _tournament(x: SharedTensor, axis: int, with_index: bool, bits: int = 64
                ) -> tuple[SharedTensor, SharedTensor | None]:
    rt = x.rt
    axis = axis % x.ndim
    t = x.transpose(*[i for i in range(x.ndim) if i != axis], axis)
    idx: SharedTensor | None = None
    if with_index:
        # Indices ride along in x's encoding so that one product moves both; an
        # integer times 2^f truncates back exactly at the end.
        pub = np.broadcast_to(np.arange(t.shape[-1], dtype=np.int64) << x.frac, t.shape)
        zeros = map_shares(np.zeros_like, t.sh)
        idx = SharedTensor(rt, rt.add_public(zeros, np.ascontiguousarray(pub).view(np.uint64)), t.shape, x.frac)
    while t.shape[-1] > 1:
        m = t.shape[-1]
        half = m // 2
        a, b = t[..., 0 : 2 * half : 2], t[..., 1 : 2 * half : 2]
        c = less(a, b, bits)
        if idx is None:
            new_t, new_i = where(c, b, a), None
        else:
            ia, ib = idx[..., 0 : 2 * half : 2], idx[..., 1 : 2 * half : 2]
            moved = concatenate([c, c], axis=-1) * concatenate([b - a, ib - ia], axis=-1)
            new_t, new_i = a + moved[..., :half], ia + moved[..., half:]
        if m % 2:
            new_t = concatenate([new_t, t[..., m - 1 :]], axis=-1)
            if idx is not None and new_i is not None:
                new_i = concatenate([new_i, idx[..., m - 1 :]], axis=-1)
        t, idx = new_t, new_i
    out_idx = None if idx is None else idx.reshape(idx.shape[:-1])._scaled_to(0)
    return t.reshape(t.shape[:-1]), out_idx


def max(x: SharedTensor, axis: int = -1) -> SharedTensor:  # noqa: A001 - numpy's name
    with x.rt.comm.scope("max"):
        return _tournament(x, axis, False)[0]


def argmax(x: SharedTensor, axis: int = -1, bits: int = 64) -> SharedTensor:
    """Secret index of the (first-found) maximum along ``axis``, as an integer sharing
    (``bits=32``: differences below 2^31 ring units, see msb)."""
    with x.rt.comm.scope("argmax"):
        idx = _tournament(x, axis, True, bits)[1]
        if idx is None:  # pragma: no cover - with_index=True always sets it
            raise RuntimeError("argmax lost its index")
        return idx


def _poly(x: SharedTensor, coeffs: list[float]) -> SharedTensor:
    """sum coeffs[i] x^i; powers computed by repeated multiplication."""
    out = x * coeffs[1] + coeffs[0]
    power = x
    for c in coeffs[2:]:
        power = power * x
        out = out + power * c
    return out


def _mul_at(a: SharedTensor, b: SharedTensor, frac: int) -> SharedTensor:
    """a * b truncated to ``frac`` fraction bits (instead of the default f)."""
    prod = SharedTensor(a.rt, a.rt.mul(a.sh, b.sh, a.shape), a.shape, a.frac + b.frac)
    return prod._truncate(prod.frac - frac)


def exp(x: SharedTensor, squarings: int = 8, extra_bits: int = 8) -> SharedTensor:
    """e^x for -512 <= x <= 20: p(x / 2^8)^(2^8), p the cubic Taylor polynomial.

    x / 2^8 is x's own ring element read with 8 more fraction bits (exact), and the
    first squarings keep those bits, so the 2^8-fold amplification of rounding
    errors starts from 2^-24 instead of 2^-16.
    """
    with x.rt.comm.scope("exp"):
        f = x.rt.fxp.frac_bits
        hi = f + extra_bits
        y = SharedTensor(x.rt, x._scaled_to(f).sh, x.shape, f + squarings)._scaled_to(hi)
        y2 = _mul_at(y, y, hi)
        y3 = _mul_at(y2, y, hi)
        half = SharedTensor(x.rt, y2.sh, y2.shape, hi + 1)  # y^2 / 2, exact
        sixth = SharedTensor(x.rt, map_shares(lambda s: s * np.uint64(round(2**20 / 6)), y3.sh), y3.shape, hi + 20)
        r = (y + half + sixth._scaled_to(hi) + 1.0)._scaled_to(hi)
        early = squarings - 3 if squarings > 3 else 0
        for _ in range(early):
            r = _mul_at(r, r, hi)
        r = r._scaled_to(f)
        for _ in range(squarings - early):
            r = r * r
        return r


def reciprocal(x: SharedTensor, positive: bool = False, iterations: int = 10) -> SharedTensor:
    """1/x for 0.1 <= |x| <= 500 (see docs for the measured error)."""
    with x.rt.comm.scope("reciprocal"):
        s = None
        if not positive:
            s = sign(x)
            x = x * s
        y = exp(0.5 - x) * 3.0 + 0.003
        for _ in range(iterations):
            y = y * (2.0 - x * y)
        return y if s is None else y * s


def sigmoid(x: SharedTensor, bits: int = 64) -> SharedTensor:
    """``bits=32``: for |x| + 16 < 2^(31 - f) (2032 at f = 20), comparisons at half the
    traffic (see msb)."""
    with x.rt.comm.scope("sigmoid"):
        clip = 16.0
        both = msb(concatenate([x.reshape(-1), (x - clip).reshape(-1), (-x - clip).reshape(-1)]), bits)
        n = x.size
        neg, below, above = (both[i * n : (i + 1) * n].reshape(x.shape) for i in range(3))
        inside = below * above  # -16 < x < 16
        absx = x * (1 - 2 * neg)
        a = inside * (absx - clip) + clip
        d = exp(-a) + 1.0  # in [1, 2]
        r = d * (-8.0 / 17.0) + 24.0 / 17.0
        for _ in range(3):
            r = r * (2.0 - d * r)
        return r + neg * (1.0 - 2 * r)


def log(x: SharedTensor, iterations: int = 3, order: int = 8) -> SharedTensor:
    """Natural log for 1e-3 <= x <= 100 (x must be positive)."""
    with x.rt.comm.scope("log"):
        y = x * (1.0 / 120.0) - exp(x * -2.0 - 1.0) * 20.0 + 3.0
        for _ in range(iterations):
            h = 1.0 - x * exp(-y)
            y = y - _poly(h, [0.0] + [1.0 / k for k in range(1, order + 1)])
        return y


def inv_sqrt(x: SharedTensor, iterations: int = 3) -> SharedTensor:
    """1/sqrt(x) for 0.1 <= x <= 100 (the start value falls short beyond; see docs)."""
    with x.rt.comm.scope("inv_sqrt"):
        y = exp(x * -0.5 - 0.2) * 2.2 + 0.2 - x * (1.0 / 1024.0)
        for _ in range(iterations):
            y = y * (3.0 - x * y * y) * 0.5
        return y


def sqrt(x: SharedTensor) -> SharedTensor:
    return x * inv_sqrt(x)
