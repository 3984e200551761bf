"""aby3: three parties, 2-out-of-3 replicated sharing of Z_2^64 (Araki et al. 2016;
Mohassel-Rindal 2018, "ABY3"). No dealer.

x = x0 + x1 + x2 and party Pi holds (x_i, x_{i+1}). Multiplication is local up to a
3-out-of-3 sharing, re-randomised with a PRSS zero sharing (alpha_i = F(k_i,i+1) -
F(k_i-1,i), seeds agreed pairwise with X25519), then resharing sends one ring element
per product to the previous party. Boolean sharing is the same over XOR/AND.
Security: semi-honest, honest majority (no two parties collude).

What each party learns: nothing beyond its two components, which are uniformly
random; every message is masked by a PRSS value or PRG output the receiver lacks.

Truncation (see docs/mpc.md):
- ``exact`` (default): P0 plays semi2k's dealer for the pair (P1, P2). From a 3-out-
  of-3 sharing z (a product before resharing, or x_i of a replicated x) P1 and P2
  both learn c = z + 2^62 + r, with r known only to P0, who also 2-out-of-2 shares
  r >> d and msb(r) between them; they finish as semi2k's exact truncation and
  reshare to replicated form. 2 rounds, fused with a preceding product (so a fixed-
  point product costs 2 rounds either way); floor(z / 2^d) or one more for any
  |z| < 2^62, never a large error.
- ``local``: ABY3's Pi_trunc1 (§5.1.1): P0 holds x0 + x1 and P1, P2 hold x2, a 2-out-
  of-2 sharing; SecureML local shifts on it, re-randomised with a P0-P1 PRG value,
  and P0 sends one element to P2. 1 round; off by one at most, except with
  probability |x| / 2^64 per element (then wrong by about 2^(64-d)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from veilpay.errors import InvalidInput
from veilpay.mpc.fixedpoint import FixedPoint
from veilpay.mpc.protocol import Protocol, Shares, check_array, finish_trunc, need_shares, residue_dtype, trunc_pair_share
from veilpay.mpc.ring import ring_matmul
from veilpay.net import Communicator

__all__ = ["Aby3"]


def _check_bits(bits: int) -> None:
    if not 0 < bits < 63:
        raise InvalidInput("truncation by 1..62 bits")


class Aby3(Protocol):
    name = "aby3"

    def __init__(
        self, comm: Communicator, compute: Sequence[str], fxp: FixedPoint | None = None, trunc: str = "exact"
    ) -> None:
        if len(compute) != 3 or len(set(compute)) != 3:
            raise InvalidInput("aby3 needs three distinct compute parties")
        if trunc not in ("exact", "local"):
            raise InvalidInput(f"unknown truncation {trunc!r}: choose 'exact' or 'local'")
        super().__init__(comm, compute, fxp)
        self.trunc_mode = trunc
        self.index = self.compute.index(self.me) if self.is_compute else -1
        if self.is_compute:
            i = self.index
            self.next_party = self.compute[(i + 1) % 3]
            self.prev_party = self.compute[(i - 1) % 3]
            self._next = self.pair_prg(self.next_party, "prss")
            self._prev = self.pair_prg(self.prev_party, "prss")
            # Truncation streams between P0 (the helper) and each of P1, P2.
            if i == 0:
                self._t = {1: self.pair_prg(self.compute[1], "trunc"), 2: self.pair_prg(self.compute[2], "trunc")}
            else:
                self._t = {0: self.pair_prg(self.compute[0], "trunc")}

    def _q(self, i: int) -> str:
        return self.compute[i % 3]

    def _zero(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._next.uint64(shape) - self._prev.uint64(shape)

    def _zero_xor(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._next.uint64(shape) ^ self._prev.uint64(shape)

    # -- sharing -----------------------------------------------------------
    def input(self, owner: str, value: np.ndarray | None, shape: tuple[int, ...]) -> Shares:
        return self._input(owner, value, shape, np.subtract)

    def input_bits(self, owner: str, value: np.ndarray | None, shape: tuple[int, ...]) -> Shares:
        return self._input(owner, value, shape, np.bitwise_xor)

    def _input(self, owner: str, value: np.ndarray | None, shape: tuple[int, ...], mask: Any) -> Shares:
        """Replicated shares of ``owner``'s value, arithmetic (``mask`` = subtract) or
        boolean (xor)."""
        if owner not in self.comm.parties:
            raise InvalidInput(f"input owner {owner!r} is not in the network")
        if self.me == owner and value is None:
            raise InvalidInput("the input owner must pass its value")
        if owner in self.compute:
            j = self.compute.index(owner)
            send: dict[str, list[np.ndarray]] = {}
            if self.me == owner:
                xj = self._prev.uint64(shape)
                xj1 = self._next.uint64(shape)
                rest = mask(mask(value, xj), xj1)
                send = {self._q(j + 1): [rest], self._q(j + 2): [rest]}
            got = self.comm.exchange("input", send, {owner: 1} if self.is_compute and self.me != owner else {})
            if self.me == owner:
                return (xj, xj1)
            if self.me == self._q(j + 1):  # holds (x_{j+1}, x_{j+2})
                return (self._prev.uint64(shape), check_array(got[owner][0], shape, owner))
            if self.me == self._q(j + 2):  # holds (x_{j+2}, x_j)
                return (check_array(got[owner][0], shape, owner), self._next.uint64(shape))
            return None
        send = {}
        if self.me == owner:
            x0, x1 = self.private.uint64(shape), self.private.uint64(shape)
            comps = [x0, x1, mask(mask(value, x0), x1)]
            send = {self._q(i): [comps[i], comps[(i + 1) % 3]] for i in range(3)}
        got = self.comm.exchange("input", send, {owner: 2} if self.is_compute else {})
        if not self.is_compute:
            return None
        a, b = got[owner]
        return (check_array(a, shape, owner), check_array(b, shape, owner))

    def reveal(self, x: Shares, shape: tuple[int, ...], to: Sequence[str]) -> np.ndarray | None:
        send: dict[str, list[np.ndarray]] = {}
        if self.is_compute:
            need_shares(x)
            for r in to:
                if r == self.me:
                    continue
                if r in self.compute:
                    if self.compute.index(r) == (self.index - 1) % 3:
                        send[r] = [x[1]]  # type: ignore[index]
                elif self.index == 0:
                    send[r] = [x[0], x[1]]  # type: ignore[index]
                elif self.index == 1:
                    send[r] = [x[1]]  # type: ignore[index]
        recv: dict[str, int] = {}
        if self.me in to:
            recv = {self._q(self.index + 1): 1} if self.is_compute else {self._q(0): 2, self._q(1): 1}
        got = self.comm.exchange("reveal", send, recv)
        if self.me not in to:
            return None
        parts = [check_array(a, shape, p) for p in recv for a in got[p]]
        if self.is_compute:
            parts += [x[0], x[1]]  # type: ignore[index]
        return parts[0] + parts[1] + parts[2]

    # -- local ops ---------------------------------------------------------
    def add_public(self, x: Shares, c: np.ndarray) -> Shares:
        if x is None:
            return None
        z = np.zeros_like(c)
        # Component x0 is held by P0 (first) and P2 (second).
        return (x[0] + (c if self.index == 0 else z), x[1] + (c if self.index == 2 else z))

    def xor_public(self, x: Shares, c: np.ndarray) -> Shares:
        if x is None:
            return None
        z = np.zeros_like(c)
        return (x[0] ^ (c if self.index == 0 else z), x[1] ^ (c if self.index == 2 else z))

    # -- interactive ops ---------------------------------------------------
    def _reshare(self, label: str, z: np.ndarray, shape: tuple[int, ...]) -> Shares:
        got = self.comm.exchange(label, {self.prev_party: [z]}, {self.next_party: 1})
        return (z, check_array(got[self.next_party][0], shape, self.next_party))

    def mul(self, x: Shares, y: Shares, shape: tuple[int, ...]) -> Shares:
        if not self.is_compute:
            self.comm.exchange("mul")
            return None
        need_shares(x)
        need_shares(y)
        z = x[0] * (y[0] + y[1]) + x[1] * y[0] + self._zero(shape)  # type: ignore[index]
        return self._reshare("mul", z, shape)

    def matmul(self, x: Shares, y: Shares, m: int, k: int, n: int) -> Shares:
        if not self.is_compute:
            self.comm.exchange("matmul")
            return None
        need_shares(x)
        need_shares(y)
        z = self._matmul_local(x, y) + self._zero((m, n))
        return self._reshare("matmul", z, (m, n))

    def _matmul_local(self, x: Shares, y: Shares) -> np.ndarray:
        """This party's part of a 3-out-of-3 sharing of X @ Y, five ring products in
        all instead of the textbook six: with (x_i, x_i+1) held by P_i,
        P0: (x0 + x1)(y0 + y1), P1: (x1 + x2)(y1 + y2) - x1 y1, P2: x0 y2 + x2 y0 --
        every x_i y_j exactly once."""
        a, b = x  # type: ignore[misc]
        c, d = y  # type: ignore[misc]
        if self.index == 0:
            return ring_matmul(a + b, c + d)
        if self.index == 1:
            return ring_matmul(a + b, c + d) - ring_matmul(a, c)
        return ring_matmul(b, c) + ring_matmul(a, d)

    def and_(self, x: Shares, y: Shares, shape: tuple[int, ...]) -> Shares:
        if not self.is_compute:
            self.comm.exchange("and")
            return None
        need_shares(x)
        need_shares(y)
        z = (x[0] & (y[0] ^ y[1])) ^ (x[1] & y[0]) ^ self._zero_xor(shape)  # type: ignore[index]
        return self._reshare("and", z, shape)

    def mul_trunc(self, x: Shares, y: Shares, shape: tuple[int, ...], bits: int) -> Shares:
        if self.trunc_mode == "local":
            return self.trunc(self.mul(x, y, shape), shape, bits)
        _check_bits(bits)
        z = None
        if self.is_compute:
            need_shares(x)
            need_shares(y)
            z = y[0] + y[1]  # type: ignore[index]
            z *= x[0]  # type: ignore[index]
            z += x[1] * y[0]  # type: ignore[index]
        return self._trunc_additive("mul", z, shape, bits)

    def matmul_trunc(self, x: Shares, y: Shares, m: int, k: int, n: int, bits: int) -> Shares:
        if self.trunc_mode == "local":
            return self.trunc(self.matmul(x, y, m, k, n), (m, n), bits)
        _check_bits(bits)
        z = None
        if self.is_compute:
            need_shares(x)
            need_shares(y)
            z = self._matmul_local(x, y)
        return self._trunc_additive("matmul", z, (m, n), bits)

    def _trunc_additive(self, label: str, z: np.ndarray | None, shape: tuple[int, ...], bits: int) -> Shares:
        """Replicated sharing of z >> bits (signed) from this party's 3-out-of-3 share z.

        Round 1: P0 sends P1 u = z0 + 2^62 + r - s2 and P2 u' = z0 + 2^62 + r - s1 plus
        its 2-out-of-2 shares of r >> d and msb(r); P1 sends P2 z1 + s1, P2 sends P1
        z2 + s2 (s1 from P0-P1's stream, s2 from P0-P2's): both learn c. Round 2: y0 and
        y1 come from the streams, P1 and P2 swap their parts of y2 = y - y0 - y1.
        """
        if not self.is_compute:
            self.comm.exchange(label)
            self.comm.exchange(f"{label}.trunc")
            return None
        if z is None:
            raise InvalidInput("a compute party must hold a share")
        p0, p1, p2 = self.compute
        if self.index == 0:
            t1, t2 = self._t[1], self._t[2]
            r = self.private.uint64(shape)
            s1, s2 = t1.uint64(shape), t2.uint64(shape)
            rt1, rm1 = t1.uint64(shape), t1.uint64(shape)
            rt2, rm2 = trunc_pair_share(r, bits, rt1, rm1)
            r += z  # r becomes the base z0 + 2^62 + r; in place, as below
            r += np.uint64(1 << 62)
            np.subtract(r, s2, out=s2)
            np.subtract(r, s1, out=s1)
            self.comm.exchange(label, {p1: [s2], p2: [s1, rt2, rm2]})
            y0, y1 = t2.uint64(shape), t1.uint64(shape)
            self.comm.exchange(f"{label}.trunc")
            return (y0, y1)
        t = self._t[0]
        other = p2 if self.index == 1 else p1
        s_mine = t.uint64(shape)  # P1: s1; P2: s2
        s_mine += z
        if self.index == 1:
            rt, rm = t.uint64(shape), t.uint64(shape)
            got = self.comm.exchange(label, {other: [s_mine]}, {p0: 1, other: 1})
            c = check_array(got[p0][0], shape, p0)
        else:
            got = self.comm.exchange(label, {other: [s_mine]}, {p0: 3, other: 1})
            c, rt = (check_array(a, shape, p0) for a in got[p0][:2])
            rm = check_array(got[p0][2], shape, p0, residue_dtype(bits)).astype(np.uint64)
        c += z  # received buffers are ours to update; sent ones are not
        c += check_array(got[other][0], shape, other)
        rm = finish_trunc(c, rt, rm, bits, first=self.index == 1)
        y_known = t.uint64(shape)  # P1: y1, P2: y0, each shared with P0
        rm -= y_known  # this party's part of y2 = y - y0 - y1
        got = self.comm.exchange(f"{label}.trunc", {other: [rm]}, {other: 1})
        y2 = check_array(got[other][0], shape, other)
        y2 += rm
        return (y_known, y2) if self.index == 1 else (y2, y_known)

    def trunc(self, x: Shares, shape: tuple[int, ...], bits: int) -> Shares:
        _check_bits(bits)
        if self.trunc_mode == "exact":
            if self.is_compute:
                need_shares(x)
            return self._trunc_additive("trunc", x[0] if x is not None else None, shape, bits)
        if not self.is_compute:
            self.comm.exchange("trunc")
            return None
        need_shares(x)
        d = np.uint64(bits)
        if self.index == 0:
            r = self._next.uint64(shape)
            t0 = ((x[0] + x[1]) >> d) - r  # type: ignore[index]
            self.comm.exchange("trunc", {self._q(2): [t0]})
            return (t0, r)
        if self.index == 1:
            r = self._prev.uint64(shape)
            self.comm.exchange("trunc")
            return (r, -((-x[1]) >> d))  # type: ignore[index]
        got = self.comm.exchange("trunc", {}, {self._q(0): 1})
        return (-((-x[0]) >> d), check_array(got[self._q(0)][0], shape, self._q(0)))  # type: ignore[index]

    def a2b(self, x: Shares, shape: tuple[int, ...]) -> tuple[Shares, Shares]:
        if not self.is_compute:
            self.comm.exchange("a2b")
            return None, None
        need_shares(x)
        zero = np.zeros(shape, dtype=np.uint64)
        # u: boolean sharing of x0 + x1, input by P0 as (u0 = PRG(P2,P0), u1, u2 = 0).
        if self.index == 0:
            u0 = self._prev.uint64(shape)
            u1 = (x[0] + x[1]) ^ u0  # type: ignore[index]
            self.comm.exchange("a2b", {self._q(1): [u1]})
            return (u0, u1), (zero, zero)
        if self.index == 1:
            got = self.comm.exchange("a2b", {}, {self._q(0): 1})
            return (check_array(got[self._q(0)][0], shape, self._q(0)), zero), (zero, x[1])  # type: ignore[index]
        u0 = self._next.uint64(shape)
        self.comm.exchange("a2b")
        return (zero, u0), (x[0], zero)  # type: ignore[index]

    def bit_to_arith(self, b: Shares, shape: tuple[int, ...]) -> Shares:
        one = np.uint64(1)
        t_val = None
        if self.index == 0:
            need_shares(b)
            t_val = (b[0] ^ b[1]) & one  # type: ignore[index]
        t = self.input(self._q(0), t_val, shape)
        if not self.is_compute:
            self.mul(None, None, shape)
            return None
        need_shares(b)
        zero = np.zeros(shape, dtype=np.uint64)
        # b2 is component 2: P1 holds it second, P2 first.
        b2 = {0: (zero, zero), 1: (zero, b[1] & one), 2: (b[0] & one, zero)}[self.index]  # type: ignore[index]
        tb = self.mul(t, b2, shape)
        return tuple(ti + bi - (pi << one) for ti, bi, pi in zip(t, b2, tb, strict=True))  # type: ignore[arg-type]
