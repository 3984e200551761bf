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
from dataclasses import dataclass
from typing import Any

import numpy as np

from veilpay.errors import InvalidInput
from veilpay.mpc.fixedpoint import FixedPoint
from veilpay.mpc.protocol import Protocol, Shares, check_array, finish_trunc, need_shares, residue_dtype, trunc_pair_share
from veilpay.mpc.ring import ring_matmul
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


_ONE = np.uint64(1)


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
        if owner not in self.comm.parties:
            raise InvalidInput(f"input owner {owner!r} is not in the network")
        if owner in self.compute:
            other = self.p1 if owner == self.p0 else self.p0
            if self.me == owner:
                if value is None:
                    raise InvalidInput("the input owner must pass its value")
                mask = self._input_prg[other].uint64(shape)
                return (value - mask,)
            if self.me == other:
                return (self._input_prg[owner].uint64(shape),)
            return None
        # An owner outside the compute pair: P0's share comes from their common PRG.
        send = {}
        if self.me == owner:
            if value is None:
                raise InvalidInput("the input owner must pass its value")
            send = {self.p1: [value - self._input_prg[self.p0].uint64(shape)]}
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
        e, f = mine[0] ^ got[other][0], mine[1] ^ got[other][1]
        if self.index == 0:
            return (c ^ (e & (b ^ f)) ^ (f & a),)  # type: ignore[operator]
        return (got[self.dealer][0] ^ (e & b) ^ (f & a),)

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
            ra = got[self.dealer][0]
        # b = c XOR r = c + r - 2cr with c public.
        out = ra * (_ONE - (c << _ONE))  # type: ignore[operator]
        if self.index == 0:
            out += c
        return (out,)

