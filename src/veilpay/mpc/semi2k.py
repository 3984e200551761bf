"""semi2k: two compute parties with additive shares in Z_2^64, and a dealer.

Follows SPU's SEMI2K / the "trusted dealer" model of Beaver (1991): the dealer only
ever sends correlated randomness, never sees a share of data, and never receives
anything. Its streams with P0 and P1 are AES counter-mode PRGs seeded by X25519
agreement, so P0's whole triple and P1's (a1, b1) are derived locally and the dealer sends
just c1 (one ring element per product). Security: semi-honest, no collusion between
the dealer and a compute party.

What each party learns: P0 and P1 see only values masked by dealer randomness
(e = x - a, f = y - b, c = x + r); the dealer sees nothing that depends on data.

Truncation (see docs/mpc.md):
- ``exact`` (default): one extra round with a dealer pair (r, r >> d, msb(r)), after
  Escudero et al. 2020 §4 with the msb trick; result is floor(x / 2^d) or one more,
  for any |x| < 2^62, never a large error.
- ``local``: SecureML (Mohassel-Zhang 2017, Thm. 1) local shifts, no communication;
  off by one at most, except with probability |x| / 2^64 per element, when the
  result is wrong by about 2^(64-d).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veilpay.errors import InvalidInput
from veilpay.mpc.fixedpoint import FixedPoint
from veilpay.mpc.protocol import Protocol, Shares, check_array, finish_trunc, need_shares, residue_dtype, trunc_pair_share
from veilpay.mpc.ring import narrow_matmul, narrow_t_matmul, ring_matmul
from veilpay.net import Communicator

__all__ = ["Semi2k"]


def _rows(state: Any, idx: np.ndarray | None) -> int:
    if idx is not None:
        return len(idx)
    return int(state.n)


@dataclass
class _Masked:
    """A premasked matrix: E = X - A (compute parties), and this party's A share (the
    dealer: all of A)."""

    e: np.ndarray | None
    a: np.ndarray | None
    n: int = 0
    et: np.ndarray | None = None  # E^T and A^T, made on the first whole-matrix transpose product
    at: np.ndarray | None = None


@dataclass
class _Bits:
    """A 0/1 matrix M whose column blocks their owners hold in the clear, masked in
    Z_2^32 by A = the owner's dealer stream: per block, the owner keeps M (uint8),
    the other compute party E = M - A (uint32, uniform to it), the dealer A."""

    n: int
    spans: list[tuple[int, int, int]]  # (first column, end column, owner's compute index)
    blocks: dict[int, np.ndarray] = field(default_factory=dict)  # block -> M (owner), E (other), A (dealer)


_ONE = np.uint64(1)


def _outer(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[x * y[:, 0], x * y[:, 1], ...] side by side (mod 2^64)."""
    return np.concatenate([x * y[:, j : j + 1] for j in range(y.shape[1])], axis=1)
_M32 = np.uint64(0xFFFFFFFF)
_M16 = np.uint64(0xFFFF)


class Semi2k(Protocol):
    name = "semi2k"

    def __init__(
        self,
        comm: Communicator,
        compute: Sequence[str],
        dealer: str,
        fxp: FixedPoint | None = None,
        trunc: str = "exact",
    ) -> None:
        if len(compute) != 2 or dealer in compute:
            raise InvalidInput("semi2k needs two compute parties and a separate dealer")
        if trunc not in ("exact", "local"):
            raise InvalidInput(f"unknown truncation {trunc!r}: choose 'exact' or 'local'")
        if dealer not in comm.parties:
            raise InvalidInput(f"dealer {dealer!r} is not in the network")
        super().__init__(comm, compute, fxp)
        self.dealer = dealer
        self.trunc_mode = trunc
        self.p0, self.p1 = self.compute
        self.index = self.compute.index(self.me) if self.is_compute else -1
        self.is_dealer = self.me == dealer
        self._input_prg = {p: self.pair_prg(p, "input") for p in comm.peers}
        if self.is_compute:
            self._dprg = self.pair_prg(dealer, "dealer")
        if self.is_dealer:
            self._for = [self.pair_prg(self.p0, "dealer"), self.pair_prg(self.p1, "dealer")]

    # -- sharing -----------------------------------------------------------
    def input(self, owner: str, value: np.ndarray | None, shape: tuple[int, ...]) -> Shares:
        return self._input(owner, value, shape, np.subtract)

    def input_bits(self, owner: str, value: np.ndarray | None, shape: tuple[int, ...]) -> Shares:
        return self._input(owner, value, shape, np.bitwise_xor)

    def _input(self, owner: str, value: np.ndarray | None, shape: tuple[int, ...], mask: Any) -> Shares:
        """Shares of ``owner``'s value, arithmetic (``mask`` = subtract) or boolean (xor)."""
        if owner not in self.comm.parties:
            raise InvalidInput(f"input owner {owner!r} is not in the network")
        if owner in self.compute:  # the other compute party's share is their common PRG: no message
            other = self.p1 if owner == self.p0 else self.p0
            if self.me == owner:
                if value is None:
                    raise InvalidInput("the input owner must pass its value")
                return (mask(value, self._input_prg[other].uint64(shape)),)
            if self.me == other:
                return (self._input_prg[owner].uint64(shape),)
            return None
        # An owner outside the compute pair: P0's share comes from their common PRG.
        send = {}
        if self.me == owner:
            if value is None:
                raise InvalidInput("the input owner must pass its value")
            send = {self.p1: [mask(value, self._input_prg[self.p0].uint64(shape))]}
        got = self.comm.exchange("input", send, {owner: 1} if self.me == self.p1 else {})
        if self.me == self.p0:
            return (self._input_prg[owner].uint64(shape),)
        if self.me == self.p1:
            return (check_array(got[owner][0], shape, owner),)
        return None

    def reveal(self, x: Shares, shape: tuple[int, ...], to: Sequence[str]) -> np.ndarray | None:
        send = {}
        if self.is_compute:
            need_shares(x)
            send = {r: [x[0]] for r in to if r != self.me}  # type: ignore[index]
        recv = {p: 1 for p in self.compute if p != self.me} if self.me in to else {}
        got = self.comm.exchange("reveal", send, recv)
        if self.me not in to:
            return None
        parts = [check_array(got[p][0], shape, p) for p in recv]
        if self.is_compute:
            parts.append(x[0])  # type: ignore[index]
        return parts[0] + parts[1]

    # -- local ops ---------------------------------------------------------
    def add_public(self, x: Shares, c: np.ndarray) -> Shares:
        if x is None:
            return None
        return (x[0] + c,) if self.index == 0 else (x[0] + np.zeros_like(c),)

    def xor_public(self, x: Shares, c: np.ndarray) -> Shares:
        if x is None:
            return None
        return (x[0] ^ c,) if self.index == 0 else (x[0] ^ np.zeros_like(c),)

    # -- interactive ops ---------------------------------------------------
    def _open_masked(self, label: str, mine: list[np.ndarray], dealer: bool = True) -> list[np.ndarray]:
        """Exchange masked shares with the other compute party and return the opened
        values; with ``dealer``, P1 also receives the dealer's correction, appended last."""
        other = self.p1 if self.index == 0 else self.p0
        recv = {other: len(mine)}
        if self.index == 1 and dealer:
            recv[self.dealer] = 1
        got = self.comm.exchange(label, {other: mine}, recv)
        opened = []
        for m, g in zip(mine, got[other], strict=True):
            g = check_array(g, m.shape, other)
            g += m  # received buffers are ours: open in place (sent ones are not)
            opened.append(g)
        if self.index == 1 and dealer:
            opened.append(check_array(got[self.dealer][0], mine[0].shape, self.dealer))
        return opened

    def mul(self, x: Shares, y: Shares, shape: tuple[int, ...]) -> Shares:
        if self.is_dealer:
            g0, g1 = self._for
            a0, b0, c0 = g0.uint64(shape), g0.uint64(shape), g0.uint64(shape)
            a0 += g1.uint64(shape)
            b0 += g1.uint64(shape)
            a0 *= b0
            a0 -= c0  # c1 = (a0 + a1)(b0 + b1) - c0, in place (numpy ops cost memory passes)
            self.comm.exchange("mul", {self.p1: [a0]})
            return None
        if not self.is_compute:
            self.comm.exchange("mul")
            return None
        g = self._dprg
        a, b = g.uint64(shape), g.uint64(shape)
        c = g.uint64(shape) if self.index == 0 else None
        need_shares(x)
        need_shares(y)
        opened = self._open_masked("mul", [x[0] - a, y[0] - b])  # type: ignore[index]
        e, f = opened[0], opened[1]
        # z0 = c0 + e (b0 + f) + f a0 and z1 = c1 + e b1 + f a1, in place
        if self.index == 0:
            b += f
        else:
            c = opened[2]
        b *= e
        c += b  # type: ignore[operator]
        f *= a
        c += f  # type: ignore[operator]
        return (c,)  # type: ignore[return-value]

    def mul_columns(self, x: Shares, y: Shares, xshape: tuple[int, int], k: int) -> Shares:
        # One Beaver triple (A (n, m), B (n, k), A (x) B): x - A and y - B are opened
        # once each, instead of k copies of x and m copies of every column of y.
        n, m = xshape
        out = (n, k * m)
        if self.is_dealer:
            g0, g1 = self._for
            a = g0.uint64(xshape)
            a += g1.uint64(xshape)
            b = g0.uint64((n, k))
            b += g1.uint64((n, k))
            c1 = _outer(a, b) - g0.uint64(out)
            self.comm.exchange("mul_columns", {self.p1: [c1]})
            return None
        if not self.is_compute:
            self.comm.exchange("mul_columns")
            return None
        need_shares(x)
        need_shares(y)
        g = self._dprg
        a, b = g.uint64(xshape), g.uint64((n, k))
        c = g.uint64(out) if self.index == 0 else None
        other = self.p1 if self.index == 0 else self.p0
        recv = {other: 2} | ({self.dealer: 1} if self.index == 1 else {})
        got = self.comm.exchange("mul_columns", {other: [x[0] - a, y[0] - b]}, recv)  # type: ignore[index]
        e = check_array(got[other][0], xshape, other)
        e += x[0] - a  # type: ignore[index]
        f = check_array(got[other][1], (n, k), other)
        f += y[0] - b  # type: ignore[index]
        if self.index == 1:
            c = check_array(got[self.dealer][0], out, self.dealer)
        else:
            b += f  # P0 also carries the public e (x) f
        z = _outer(e, b)
        z += _outer(a, f)
        z += c  # type: ignore[operator]
        return (z,)

    def matmul(self, x: Shares, y: Shares, m: int, k: int, n: int) -> Shares:
        if self.is_dealer:
            g0, g1 = self._for
            a0, b0, c0 = g0.uint64((m, k)), g0.uint64((k, n)), g0.uint64((m, n))
            a1, b1 = g1.uint64((m, k)), g1.uint64((k, n))
            c1 = ring_matmul(a0 + a1, b0 + b1) - c0
            self.comm.exchange("matmul", {self.p1: [c1]})
            return None
        if not self.is_compute:
            self.comm.exchange("matmul")
            return None
        g = self._dprg
        a, b = g.uint64((m, k)), g.uint64((k, n))
        c = g.uint64((m, n)) if self.index == 0 else None
        need_shares(x)
        need_shares(y)
        e, f = self._open_masked("matmul", [x[0] - a, y[0] - b], dealer=False)  # type: ignore[index]
        # Z_i = C_i + E @ Y_i + A_i @ F sums to E@F + E@B + A@F + A@B = X@Y.
        z = ring_matmul(e, y[0]) + ring_matmul(a, f)  # type: ignore[index]
        if self.index == 1:
            # The dealer's C_1 belongs to this round but is read only now, so its
            # GEMMs run beside ours instead of in front of them.
            c = check_array(self.comm.collect("matmul", {self.dealer: 1})[self.dealer][0], (m, n), self.dealer)
        z += c
        return (z,)

    # -- a fixed matrix, masked once (SecureML, Mohassel-Zhang 2017, sec. 4.1) ----
    def premask(self, x: Shares, shape: tuple[int, int]) -> Any:
        """Open E = X - A once, A from the dealer streams. Each later product with a
        fresh operand Y uses the triple (A[idx], B, A[idx] B) with a fresh B, so it
        opens only Y - B and the dealer sends only A[idx] B - C_0: traffic in the
        size of Y and of the result, not of X. E is the only value ever opened that
        involves A, so reusing A leaks nothing about X."""
        if self.is_dealer:
            g0, g1 = self._for
            return _Masked(None, g0.uint64(shape) + g1.uint64(shape), shape[0])
        if not self.is_compute:
            return _Masked(None, None, shape[0])
        need_shares(x)
        a = self._dprg.uint64(shape)
        (e,) = self._open_masked("premask", [x[0] - a], dealer=False)  # type: ignore[index]
        return _Masked(e, a, shape[0])

    def _product(self, label: str, e: np.ndarray | None, a: np.ndarray, y: Shares,
                 yshape: tuple[int, int], out: tuple[int, int]) -> Shares:
        """Z = (E + A) @ Y with a fresh mask B for Y; ``e`` and ``a`` already sliced
        (and transposed) to (out[0], yshape[0])."""
        if self.is_dealer:
            g0, g1 = self._for
            b0, c0 = g0.uint64(yshape), g0.uint64(out)
            b1 = g1.uint64(yshape)
            self.comm.exchange(label, {self.p1: [ring_matmul(a, b0 + b1) - c0]})
            return None
        if not self.is_compute:
            self.comm.exchange(label)
            return None
        need_shares(y)
        g = self._dprg
        b = g.uint64(yshape)
        c = g.uint64(out) if self.index == 0 else None
        (f,) = self._open_masked(label, [y[0] - b], dealer=False)  # type: ignore[index]
        z = ring_matmul(e, y[0]) + ring_matmul(a, f)  # type: ignore[arg-type,index]
        if self.index == 1:
            c = check_array(self.comm.collect(label, {self.dealer: 1})[self.dealer][0], out, self.dealer)
        z += c
        return (z,)

    def rows_matmul(self, state: Any, idx: np.ndarray | None, y: Shares, d: int, n: int) -> Shares:
        e = state.e if state.e is None or idx is None else state.e[idx]
        a = state.a if state.a is None or idx is None else state.a[idx]
        rows = _rows(state, idx)
        return self._product("rows_matmul", e, a, y, (d, n), (rows, n))  # type: ignore[arg-type]

    def rows_t_matmul(self, state: Any, idx: np.ndarray | None, y: Shares, d: int, n: int) -> Shares:
        if idx is None:  # every row: transpose once and keep it
            if state.et is None and state.e is not None:
                state.et = np.ascontiguousarray(state.e.T)
            if state.at is None and state.a is not None:
                state.at = np.ascontiguousarray(state.a.T)
            e, a = state.et, state.at
        else:
            e = None if state.e is None else np.ascontiguousarray(state.e[idx].T)
            a = None if state.a is None else np.ascontiguousarray(state.a[idx].T)
        return self._product("rows_t_matmul", e, a, y, (_rows(state, idx), n), (d, n))  # type: ignore[arg-type]

    # -- owner-held 0/1 matrices in narrow rings (secure trees) ------------------
    # The histogram sums and the 0/1 selections of the trees fit in 31 and 15 bits,
    # and reduction mod 2^k is a ring map, so their products run in Z_2^32 and Z_2^16
    # (exact float64 GEMMs on few limbs, 4- and 2-byte messages) and are lifted back
    # to Z_2^64 by `_lift`. Per block, with owner O and the other compute party P, a
    # product M^T y (or M w) is M^T R + M^T (y - R) with R P's dealer stream: P sends
    # F = y_P - R to O, which adds M^T (y_O + F) in the clear; M^T R = E^T R + A^T R,
    # P's and the dealer's parts, the dealer's masked by a C that O holds. O sees y_P
    # masked by R; P sees E and the dealer's part masked by C; the dealer sees nothing.
    def bits_premask(self, blocks: Sequence[tuple[str, int]], mine: dict[int, np.ndarray], n: int) -> Any:
        if any(owner not in self.compute for owner, _ in blocks):
            return super().bits_premask(blocks, mine, n)  # an owner outside the pair: the 64-bit path
        spans, start = [], 0
        for owner, width in blocks:
            spans.append((start, start + width, self.compute.index(owner)))
            start += width
        state = _Bits(n, spans)
        if self.is_dealer:
            for b, (c0, c1, i) in enumerate(spans):
                state.blocks[b] = self._for[i].uint32((n, c1 - c0))
            return state
        if not self.is_compute:
            return state
        other = self.p1 if self.index == 0 else self.p0
        send, theirs = [], 0
        for b, (c0, c1, i) in enumerate(spans):
            if i != self.index:
                theirs += 1
                continue
            m = mine.get(b)
            if m is None or m.shape != (n, c1 - c0):
                raise InvalidInput(f"block {b} of this party must be a ({n}, {c1 - c0}) 0/1 array")
            if ((m != 0) & (m != 1)).any():  # before any cast: 256 must not wrap to 0
                raise InvalidInput(f"block {b} must hold only 0 and 1")
            own = np.ascontiguousarray(m, dtype=np.uint8)
            state.blocks[b] = own
            send.append(own - self._dprg.uint32((n, c1 - c0)))  # uint32 wraps: E = M - A mod 2^32
        got = self.comm.exchange("bits.premask", {other: send}, {other: theirs})
        it = iter(got[other])
        for b, (c0, c1, i) in enumerate(spans):
            if i != self.index:
                state.blocks[b] = check_array(next(it), (n, c1 - c0), other, np.uint32)
        return state

    def _bits_product(self, label: str, state: _Bits, y: Shares, yshape: tuple[int, int], bits: int,
                      transpose: bool, shift: int = 0) -> np.ndarray | None:
        """This party's share in Z_2^bits (uint64, not yet reduced) of M^T y
        (``transpose``, y (n, k)) or M w (w (C, k)); None at the dealer."""
        n, width = state.n, state.spans[-1][1]
        k = yshape[1]
        dt = np.uint32 if bits == 32 else np.uint16

        def draw(g: Any, shape: tuple[int, int]) -> Any:
            return g.uint32(shape) if bits == 32 else g.uint16(shape)

        def rows_of(c0: int, c1: int) -> tuple[int, int]:  # y's rows that meet block c0:c1
            return (n, k) if transpose else (c1 - c0, k)

        def out_of(c0: int, c1: int) -> tuple[int, int]:  # the block's part of the result
            return (c1 - c0, k) if transpose else (n, k)

        def product(mat: np.ndarray, v: np.ndarray, a_bits: int) -> Any:
            if transpose:
                return narrow_t_matmul(mat, v, bits, a_bits, rows=1024 if a_bits == 32 else 8192)
            return narrow_matmul(mat, v, bits, min(a_bits, bits))

        if self.is_dealer:
            send: dict[str, list[np.ndarray]] = {}
            for b, (c0, c1, o) in enumerate(state.spans):
                r = draw(self._for[1 - o], rows_of(c0, c1))
                part = product(state.blocks[b], r, 32).astype(dt)
                part -= draw(self._for[o], out_of(c0, c1))
                send.setdefault(self.compute[1 - o], []).append(part)
            self.comm.exchange(label, send)
            return None
        need_shares(y)
        mine = y[0]  # type: ignore[index]
        if shift:  # SecureML's local shift: its rare error is a multiple of 2^(64 - shift), 0 mod 2^bits
            d = np.uint64(shift)
            mine = mine >> d if self.index == 0 else -((-mine) >> d)
        mine = (mine & np.uint64((1 << bits) - 1)).astype(dt)
        other = self.p1 if self.index == 0 else self.p0
        z = np.zeros((width, k) if transpose else (n, k), dtype=np.uint64)
        parts = [z[c0:c1] if transpose else z for c0, c1, _ in state.spans]  # where each block's part adds up
        operand = [mine if transpose else mine[c0:c1] for c0, c1, _ in state.spans]
        masks, ours, theirs = [], 0, 0
        for b, (c0, c1, o) in enumerate(state.spans):
            if o == self.index:
                parts[b] += draw(self._dprg, out_of(c0, c1))  # C, this party's part of the dealer's mask
                ours += 1
            else:
                r = draw(self._dprg, rows_of(c0, c1))
                masks.append(operand[b] - r)
                parts[b] += product(state.blocks[b], r, 32)
                theirs += 1
        got = self.comm.exchange(label, {other: masks} if masks else {},
                                 ({other: ours} if ours else {}) | ({self.dealer: theirs} if theirs else {}))
        fs, cs = iter(got.get(other, [])), iter(got.get(self.dealer, []))
        for b, (c0, c1, o) in enumerate(state.spans):
            if o == self.index:
                f = check_array(next(fs), rows_of(c0, c1), other, dt)
                f += operand[b]
                parts[b] += product(state.blocks[b], f, 1)
            else:
                parts[b] += check_array(next(cs), out_of(c0, c1), self.dealer, dt)
        return z

    def bits_t_matmul(self, state: Any, y: Shares, k: int, shift: int, signed: bool) -> Shares:
        if not isinstance(state, _Bits):
            return super().bits_t_matmul(state, y, k, shift, signed)
        width = state.spans[-1][1]
        if not self.is_compute and not self.is_dealer:
            self.comm.exchange("bits.t_matmul")
            return self._lift(None, (width, k), 32, signed)
        z = self._bits_product("bits.t_matmul", state, y, (state.n, k), 32, True, shift)
        if z is None:
            return self._lift(None, (width, k), 32, signed)
        if signed and self.index == 0:
            z += np.uint64(1 << 30)  # the lift needs [0, 2^31): shift [-2^30, 2^30) up
        return self._lift((z & _M32,), (width, k), 32, signed)

    def bits_matmul(self, state: Any, w: Shares, k: int) -> Shares:
        if not isinstance(state, _Bits):
            return super().bits_matmul(state, w, k)
        n, width = state.n, state.spans[-1][1]
        if not self.is_compute and not self.is_dealer:
            self.comm.exchange("bits.matmul")
            return self._lift(None, (n, k), 16, False)
        z = self._bits_product("bits.matmul", state, w, (width, k), 16, False)
        return self._lift(None if z is None else (z & _M16,), (n, k), 16, False)

    def _lift(self, z: Shares, shape: tuple[int, ...], bits: int, signed: bool) -> Shares:
        """Shares in Z_2^bits of a value v in [0, 2^(bits-1)) (P0's share already
        offset by 2^(bits-2) when ``signed``) to shares of v in Z_2^64. With a, b the
        top bits of the two shares, z0 + z1 = v + 2^bits (a OR b) as integers (v's top
        bit is 0), and a OR b = a + b - ab: one product of two private bits."""
        mine = other = None
        top = np.uint64(bits - 1)
        if self.is_compute:
            need_shares(z)
            bit = z[0] >> top  # type: ignore[index]
            zero = np.zeros_like(bit)
            mine, other = ((bit,), (zero,)) if self.index == 0 else ((zero,), (bit,))
        ab = self.mul(mine, other, shape)
        if not self.is_compute:
            return None
        k = np.uint64(bits)
        out = z[0] - (bit << k) + (ab[0] << k)  # type: ignore[index]
        if signed and self.index == 0:
            out -= np.uint64(1 << (bits - 2))
        return (out,)

    def trunc(self, x: Shares, shape: tuple[int, ...], bits: int) -> Shares:
        if not 0 < bits < 63:
            raise InvalidInput("truncation by 1..62 bits")
        d = np.uint64(bits)
        if self.trunc_mode == "local":
            if not self.is_compute:
                return None
            need_shares(x)
            s = x[0]  # type: ignore[index]
            return (s >> d,) if self.index == 0 else (-((-s) >> d),)
        small = residue_dtype(bits)
        # The dealer's corrections here go to P0 (the product's went to P1), so the
        # two compute parties receive about the same number of bytes.
        if self.is_dealer:
            g0, g1 = self._for
            r = g0.uint64(shape)
            r += g1.uint64(shape)
            self.comm.exchange("trunc", {self.p0: list(trunc_pair_share(r, bits, g1.uint64(shape), g1.uint64(shape)))})
            return None
        if not self.is_compute:
            self.comm.exchange("trunc")
            return None
        need_shares(x)
        g = self._dprg
        mine = g.uint64(shape)  # r, then this party's part of c = x + 2^62 + r
        mine += x[0]  # type: ignore[index]
        if self.index == 0:
            mine += np.uint64(1 << 62)
            got = self.comm.exchange("trunc", {self.p1: [mine]}, {self.p1: 1, self.dealer: 2})
            c = check_array(got[self.p1][0], shape, self.p1)
            rt = check_array(got[self.dealer][0], shape, self.dealer)
            rm = check_array(got[self.dealer][1], shape, self.dealer, small).astype(np.uint64)
        else:
            rt, rm = g.uint64(shape), g.uint64(shape)
            got = self.comm.exchange("trunc", {self.p0: [mine]}, {self.p0: 1})
            c = check_array(got[self.p0][0], shape, self.p0)
        c += mine  # in the received buffer; ``mine`` was sent and stays as it is
        return (finish_trunc(c, rt, rm, bits, first=self.index == 0),)

    def and_(self, x: Shares, y: Shares, shape: tuple[int, ...]) -> Shares:
        if self.is_dealer:
            g0, g1 = self._for
            a0, b0, c0 = g0.uint64(shape), g0.uint64(shape), g0.uint64(shape)
            a1, b1 = g1.uint64(shape), g1.uint64(shape)
            self.comm.exchange("and", {self.p1: [((a0 ^ a1) & (b0 ^ b1)) ^ c0]})
            return None
        if not self.is_compute:
            self.comm.exchange("and")
            return None
        g = self._dprg
        a, b = g.uint64(shape), g.uint64(shape)
        c = g.uint64(shape) if self.index == 0 else None
        other = self.p1 if self.index == 0 else self.p0
        need_shares(x)
        need_shares(y)
        mine = [x[0] ^ a, y[0] ^ b]  # type: ignore[index]
        recv = {other: 2}
        if self.index == 1:
            recv[self.dealer] = 1
        got = self.comm.exchange("and", {other: mine}, recv)
        e = mine[0] ^ check_array(got[other][0], shape, other)
        f = mine[1] ^ check_array(got[other][1], shape, other)
        if self.index == 0:
            return (c ^ (e & (b ^ f)) ^ (f & a),)  # type: ignore[operator]
        return (check_array(got[self.dealer][0], shape, self.dealer) ^ (e & b) ^ (f & a),)

    def a2b(self, x: Shares, shape: tuple[int, ...]) -> tuple[Shares, Shares]:
        if not self.is_compute:
            return None, None
        need_shares(x)
        zero = np.zeros(shape, dtype=np.uint64)
        mine = x[0]  # type: ignore[index]
        return ((mine,), (zero,)) if self.index == 0 else ((zero,), (mine,))

    def bit_to_arith(self, b: Shares, shape: tuple[int, ...]) -> Shares:
        if self.is_dealer:
            g0, g1 = self._for
            r = g0.bits(shape) ^ g1.bits(shape)
            self.comm.exchange("b2a", {self.p1: [r - g0.uint64(shape)]})
            return None
        if not self.is_compute:
            self.comm.exchange("b2a")
            return None
        need_shares(b)
        g = self._dprg
        rb = g.bits(shape)
        ra = g.uint64(shape) if self.index == 0 else None
        other = self.p1 if self.index == 0 else self.p0
        mine = ((b[0] ^ rb) & _ONE).astype(np.uint8)  # type: ignore[index]
        recv = {other: 1}
        if self.index == 1:
            recv[self.dealer] = 1
        got = self.comm.exchange("b2a", {other: [mine]}, recv)
        c = (mine ^ check_array(got[other][0], shape, other, np.uint8)).astype(np.uint64)
        if self.index == 1:
            ra = check_array(got[self.dealer][0], shape, self.dealer)
        # b = c XOR r = c + r - 2cr with c public.
        out = ra * (_ONE - (c << _ONE))  # type: ignore[operator]
        if self.index == 0:
            out += c
        return (out,)

