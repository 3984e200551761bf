"""Silent random VOLE over GF(2^128) for RR22 PSI: the sender S holds a secret
scalar Delta and a vector B, the receiver R a uniform vector A and C = B + A * Delta,
each of length N, for about the communication of N / 20 OTs plus 16 bytes per noise
block.

Construction (semi-honest), in the dual-LPN style of Boyle, Couteau, Gilboa, Ishai,
Kohl, Rindal, Scholl ("Efficient two-round OT extension and silent non-interactive
secure computation", CCS 2019, section 5), with the expand-accumulate code of Boyle,
Couteau, Gilboa, Ishai, Kohl, Resch, Scholl ("Correlated pseudorandomness from
expand-accumulate codes", CRYPTO 2022):

1.  *Base correlations from IKNP.* 128 base OTs (`veilpay.crypto.ot`, S the base-OT
    receiver with choice bits s = Delta) extend to correlated OTs: R has bits r_j and
    rows t_j, S has q_j = t_j + r_j * Delta (IKNP, Ishai-Kilian-Nissim-Petrank 2003).
    For noise block k, 128 of them packed with powers of X give a base VOLE:
    beta_k = sum_j r_{k,j} X^j, gamma_k = sum_j X^j t_{k,j}, delta_k = sum_j X^j q_{k,j},
    gamma_k = delta_k + beta_k * Delta (the packing of Wolverine / Ferret).
2.  *Sparse VOLE from punctured PRFs.* For each of t blocks of 2^depth slots S expands
    a GGM tree (length-doubling PRG: x -> (AES_K0(x) + x, AES_K1(x) + x), fixed public
    keys) to leaves v. R learns every leaf but the one at its secret alpha_k by
    depth OTs (the XOR of the left or the right children at each level, hashed IKNP
    OTs), and S sends psi_k = delta_k + sum of its leaves, from which R sets
    w_{alpha_k} = v_{alpha_k} + beta_k * Delta. So w = v + e * Delta with e the
    regular noise vector (one nonzero value beta_k per block).
3.  *Compression.* Both apply the same public F_2-linear map G to their vectors:
    accumulate (prefix XOR over all t * 2^depth slots), then expand (output i is the
    XOR of `WEIGHT` slots drawn from a public AES-CTR stream). A = G(e), C = G(w),
    B = G(v): C = B + A * Delta since G commutes with scaling by Delta. A = G(e) is
    pseudorandom under dual LPN for the EA code with regular noise.

Parameters (libOTe's ExAcc11: rate 1/5, expander weight 11, estimated relative minimum
distance 0.1): noise weight t >= -128 / log2(1 - 2 * 0.1) = 398, rounded to 400, the
slots t * 2^depth at least 5 N. docs/psi.md has the derivation.

What each side learns: S sees only the IKNP correction matrix (pseudorandom), so
nothing of alpha, beta or A; R sees one leaf fewer of each tree than S holds, the
level sums it chose, and psi, which together say nothing of Delta (the punctured
leaf is pseudorandom given the rest).
"""

from __future__ import annotations

import math
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from veilpay.crypto import derive_seed
from veilpay.crypto.ot import AesEcb, ColumnPrgs, correlation_robust_hash
from veilpay.errors import InvalidInput, ProtocolMismatch
from veilpay.psi.bitmatrix import transpose

__all__ = ["BASE", "NOISE_WEIGHT", "SCALER", "WEIGHT", "GfScalar", "VoleParams", "VoleReceiver", "VoleSender",
           "gf_mul", "gf_pack", "vole_params"]

SCALER = 5  # noisy slots per output (the code's rate is 1 / SCALER)
WEIGHT = 11  # slots XORed into each output (the expander's row weight)
MIN_DIST = 0.1  # the code's estimated relative minimum distance (libOTe, ExAcc11)
NOISE_WEIGHT = 8 * math.ceil(-128 / math.log2(1 - 2 * MIN_DIST) / 8)  # 400: 128-bit security against linear tests
BASE = 128  # base OTs: the width of Delta
_CHUNK = 1 << 15  # outputs per compression step
_THREADS = min(2, os.cpu_count() or 1)  # the receiver's compression threads
_TREE_BYTES = 1 << 24  # leaves expanded at once, in bytes
_POLY = np.uint64(0x87)  # X^128 = X^7 + X^2 + X + 1


@dataclass(frozen=True)
class VoleParams:
    """``n`` outputs from ``t`` noise blocks of 2^``depth`` slots each."""

    n: int
    t: int
    depth: int

    @property
    def slots(self) -> int:
        return self.t << self.depth

    @property
    def ots(self) -> int:
        """Correlated OTs from IKNP: 128 per base VOLE, one per tree level; a multiple of 128."""
        return -(-(self.t * (BASE + self.depth)) // BASE) * BASE


def vole_params(n: int) -> VoleParams:
    """The smallest slot count of whole trees >= SCALER * n with at least NOISE_WEIGHT blocks."""
    if not 0 <= n < 1 << 27:  # slots stay below 2^31: the slot arithmetic is in int64
        raise InvalidInput(f"VOLE length must be within 0..2^27, not {n}: partition larger sets (psi --ray-address)")
    need = max(SCALER * n, 2 * NOISE_WEIGHT)
    depth = max(1, int(math.floor(math.log2(need / NOISE_WEIGHT))))
    return VoleParams(n, max(NOISE_WEIGHT, -(-need // (1 << depth))), depth)


# -- GF(2^128): an element is two little-endian uint64 words, bit i = coefficient of X^i --

def _mul_x(v: np.ndarray) -> np.ndarray:
    """v * X for (..., 2) uint64 elements."""
    lo, hi = v[..., 0], v[..., 1]
    out = np.empty_like(v)
    carry = hi >> np.uint64(63)
    out[..., 1] = (hi << np.uint64(1)) | (lo >> np.uint64(63))
    out[..., 0] = (lo << np.uint64(1)) ^ (carry * _POLY)
    return out


def gf_pack(rows: np.ndarray) -> np.ndarray:
    """sum_j X^j rows[..., j, :] for (..., 128, 2) uint64 rows: 128 bits' worth of
    correlations packed into one field element (Horner, highest power first)."""
    acc = np.zeros(rows.shape[:-2] + (2,), dtype=np.uint64)
    for j in range(rows.shape[-2] - 1, -1, -1):
        acc = _mul_x(acc)
        acc ^= rows[..., j, :]
    return acc


def gf_mul(a: int, b: int) -> int:
    """The product in GF(2^128) of two elements as Python ints (bit i = X^i): the
    slow reference the table method is tested against."""
    out = 0
    for i in range(128):
        if b >> i & 1:
            out ^= a << i
    for i in range(254, 127, -1):
        if out >> i & 1:
            out ^= (0x87 | 1 << 128) << (i - 128)
    return out


class GfScalar:
    """Multiplication by one fixed element d: 16 tables, d times each byte value at
    each byte position, so a product is 16 lookups and XORs."""

    def __init__(self, d: np.ndarray) -> None:
        if d.dtype != np.uint64 or d.shape != (2,):
            raise InvalidInput("a field element is two uint64 words")
        basis = np.empty((128, 2), dtype=np.uint64)
        basis[0] = d
        for i in range(1, 128):
            basis[i] = _mul_x(basis[i - 1])
        t = np.zeros((16, 256, 2), dtype=np.uint64)
        for j in range(16):
            for k in range(8):
                t[j, 1 << k : 2 << k] = t[j, : 1 << k] ^ basis[8 * j + k]
        self._tables = [t[j].view(np.complex128).reshape(256) for j in range(16)]  # 16-byte rows for np.take

    def __repr__(self) -> str:
        return "GfScalar(<secret>)"

    def __call__(self, v: np.ndarray) -> np.ndarray:
        if v.dtype != np.uint64 or v.ndim != 2 or v.shape[1] != 2:
            raise InvalidInput("field elements must be (n, 2) uint64")
        b = np.ascontiguousarray(v).view(np.uint8).reshape(len(v), 16)
        out = np.take(self._tables[0], b[:, 0]).view(np.uint64).reshape(len(v), 2)
        for j in range(1, 16):
            np.bitwise_xor(out, np.take(self._tables[j], b[:, j]).view(np.uint64).reshape(len(v), 2), out=out)
        return out


# -- shared public pieces ---------------------------------------------------------------

class _Public:
    """The session's public keys: GGM PRG halves, the hash of the tree OTs, the code."""

    def __init__(self, joint: bytes, params: VoleParams) -> None:
        self.left = AesEcb(derive_seed(joint, "vole/ggm-left")[:16])
        self.right = AesEcb(derive_seed(joint, "vole/ggm-right")[:16])
        self.pi = AesEcb(derive_seed(joint, "vole/ot-hash")[:16])
        self.code = AesEcb(derive_seed(joint, "vole/expander")[:16])
        self.params = params

    def children(self, nodes: np.ndarray, out: np.ndarray) -> None:
        """The children of (g, k, 16) uint8 nodes into (g, 2k, 16) ``out``: the left
        ones first, then the right ones."""
        k = nodes.shape[1]
        np.bitwise_xor(self.left(nodes), nodes, out=out[:, :k])
        np.bitwise_xor(self.right(nodes), nodes, out=out[:, k:])

    def positions(self, lo: int, hi: int) -> np.ndarray:
        """(WEIGHT, hi - lo) slots XORed into outputs lo..hi (row j: each output's j-th
        slot): AES-CTR of the output index under the public code key, 32 bits per slot
        scaled to the slot count."""
        blocks = -(-WEIGHT // 4)
        ctr = np.zeros((hi - lo, blocks, 2), dtype=np.uint64)
        ctr[:, :, 0] = (np.arange(lo, hi, dtype=np.uint64)[:, None] * np.uint64(blocks)
                        + np.arange(blocks, dtype=np.uint64))
        words = self.code(ctr.view(np.uint8).reshape(hi - lo, blocks, 16)).view("<u4").reshape(hi - lo, 4 * blocks)
        out = words[:, :WEIGHT].T.astype(np.intp)
        out *= self.params.slots
        out >>= 32
        return out

    def expand(self, acc: np.ndarray, out: np.ndarray, pos: np.ndarray) -> None:
        """out = XOR of acc at each output's slots. Slots are gathered one weight row
        at a time as 16-byte complex values: numpy's fastest 16-byte gather."""
        _gather_xor(acc.view(np.complex128).reshape(-1), pos, out)

    def ot_hash(self, rows: np.ndarray, first: int) -> np.ndarray:
        return correlation_robust_hash(self.pi, rows, np.arange(first, first + len(rows), dtype=np.uint64), 16)


def _gather_xor(flat: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """out[i] = XOR over j of flat[idx[j, i]], for 16-byte rows viewed as complex128."""
    got = np.take(flat, idx).view(np.uint64).reshape(idx.shape[0], idx.shape[1], 2)
    np.copyto(out, got[0])
    for k in range(1, idx.shape[0]):
        np.bitwise_xor(out, got[k], out=out)


def _tree_groups(params: VoleParams) -> list[tuple[int, int]]:
    per = max(1, _TREE_BYTES // (16 << params.depth))
    return [(lo, min(lo + per, params.t)) for lo in range(0, params.t, per)]


def _fold(a: np.ndarray) -> np.ndarray:
    """The XOR over axis 1 of (g, k, 16) uint8 nodes, k a power of two, as (g, 2)
    uint64: halves folded onto each other (whole-array XORs, not a strided reduce)."""
    x = a.view(np.uint64).reshape(a.shape[0], a.shape[1], 2)
    if x.shape[1] == 1:
        return x[:, 0].copy()
    h = x.shape[1] // 2
    x = x[:, :h] ^ x[:, h:]
    while h > 1:
        h //= 2
        np.bitwise_xor(x[:, :h], x[:, h : 2 * h], out=x[:, :h])
    return x[:, 0].copy()


def _accumulate(slots: np.ndarray) -> np.ndarray:
    """Prefix XOR of (S, 2) uint64 in place."""
    np.bitwise_xor.accumulate(slots, axis=0, out=slots)
    return slots


def _check(peer: str, got: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    if got.dtype != np.uint8 or got.shape != shape:
        raise ProtocolMismatch(peer, f"VOLE {what} should be {shape} bytes, got {got.dtype} {got.shape}")
    return got


class VoleSender:
    """S's side: ``ks`` the base-OT keys it chose with ``s_bits`` (which become Delta).
    `respond` takes R's IKNP correction and returns the tree OT messages and psi;
    `finish` gives B."""

    def __init__(self, params: VoleParams, joint: bytes, ks: np.ndarray, s_bits: np.ndarray) -> None:
        if ks.shape != (BASE, 16) or s_bits.shape != (BASE,):
            raise InvalidInput("the VOLE sender needs 128 base-OT keys and 128 choice bits")
        self.params = params
        self._pub = _Public(joint, params)
        self._ks = ks
        self._s = s_bits.astype(np.uint8)
        self.delta = np.packbits(self._s, bitorder="little").view("<u8").copy()
        self._leaves: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"VoleSender(n={self.params.n})"

    def respond(self, peer: str, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        _check(peer, u, (BASE, p.ots // 8), "IKNP correction")
        u = u & (self._s * np.uint8(0xFF))[:, None]
        np.bitwise_xor(u, ColumnPrgs(self._ks).next(p.ots // 8), out=u)
        q = transpose(u)  # (ots, 16): q_j = t_j + r_j * Delta
        base = q[: p.t * BASE].view("<u8").reshape(p.t, BASE, 2)
        delta_k = gf_pack(base)
        tree_q = q[p.t * BASE : p.t * (BASE + p.depth)]
        d8 = self.delta.view(np.uint8)
        m0 = self._pub.ot_hash(tree_q, p.t * BASE)
        m1 = self._pub.ot_hash(tree_q ^ d8, p.t * BASE)
        leaves = np.empty((p.t, 1 << p.depth, 16), dtype=np.uint8)
        sums = np.empty((p.t, p.depth, 2, 2), dtype=np.uint64)
        for lo, hi in _tree_groups(p):
            level = np.frombuffer(secrets.token_bytes(16 * (hi - lo)), dtype=np.uint8).reshape(hi - lo, 1, 16)
            for lv in range(p.depth):
                nxt = leaves[lo:hi] if lv == p.depth - 1 else np.empty((hi - lo, 2 << lv, 16), dtype=np.uint8)
                self._pub.children(level, nxt)
                sums[lo:hi, lv, 0] = _fold(nxt[:, : 1 << lv])
                sums[lo:hi, lv, 1] = _fold(nxt[:, 1 << lv :])
                level = nxt
        masks = np.stack([m0, m1], axis=1).reshape(p.t, p.depth, 2, 16)
        psi = (sums[:, -1, 0] ^ sums[:, -1, 1] ^ delta_k).view(np.uint8)
        self._leaves = leaves
        return sums.view(np.uint8).reshape(p.t, p.depth, 2, 16) ^ masks, psi

    def finish(self) -> np.ndarray:
        """B, (n, 2) uint64."""
        if self._leaves is None:
            raise InvalidInput("respond first")
        p = self.params
        acc = _accumulate(self._leaves.view("<u8").reshape(p.slots, 2))
        self._leaves = None
        out = np.empty((p.n, 2), dtype=np.uint64)
        for lo in range(0, p.n, _CHUNK):
            hi = min(p.n, lo + _CHUNK)
            self._pub.expand(acc, out[lo:hi], self._pub.positions(lo, hi))
        return out


class VoleReceiver:
    """R's side: ``k0``, ``k1`` its base-OT key pairs. `correction` is its IKNP
    message; `finish` takes S's answer and gives (A, C)."""

    def __init__(self, params: VoleParams, joint: bytes, k0: np.ndarray, k1: np.ndarray) -> None:
        if k0.shape != (BASE, 16) or k1.shape != (BASE, 16):
            raise InvalidInput("the VOLE receiver needs 128 base-OT key pairs")
        self.params = params
        self._pub = _Public(joint, params)
        self._joint = joint
        p = params
        self._alpha = np.frombuffer(secrets.token_bytes(8 * p.t), dtype="<u8") & np.uint64((1 << p.depth) - 1)
        while True:
            beta_bits = np.frombuffer(secrets.token_bytes(16 * p.t), dtype=np.uint8)
            if beta_bits.reshape(p.t, 16).any(axis=1).all():  # each block's noise value nonzero
                break
        # a tree stores the left children of a level, then the right ones: the leaf at
        # slot alpha is reached by taking bit l of alpha at level l
        path = (self._alpha[:, None] >> np.arange(p.depth, dtype=np.uint64)) & np.uint64(1)
        self._path = path.astype(np.uint8)  # (t, depth)
        choices = np.zeros(p.ots, dtype=np.uint8)
        choices[: p.t * BASE] = np.unpackbits(beta_bits, bitorder="little")
        choices[p.t * BASE : p.t * (BASE + p.depth)] = 1 - self._path.reshape(-1)  # the sibling of the path
        g0 = ColumnPrgs(k0).next(p.ots // 8).copy()
        u = g0 ^ ColumnPrgs(k1).next(p.ots // 8) ^ np.packbits(choices, bitorder="little")[None, :]
        self._u = u
        self._t = transpose(g0)  # (ots, 16): t_j
        self._beta = beta_bits.view("<u8").reshape(p.t, 2)  # beta_k = sum_j r_{k,j} X^j

    def __repr__(self) -> str:
        return f"VoleReceiver(n={self.params.n})"

    def correction(self) -> np.ndarray:
        return self._u

    def finish(self, peer: str, cts: np.ndarray, psi: np.ndarray,
               into: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(A, C), each (n, 2) uint64. With ``into`` ((n, 2) uint64), A is XORed into it
        instead of kept (R masks its OKVS in place) and ``into`` is returned as the A
        part."""
        p = self.params
        if into is not None and (into.dtype != np.uint64 or into.shape != (p.n, 2)):
            raise InvalidInput(f"into must be ({p.n}, 2) uint64")
        _check(peer, cts, (p.t, p.depth, 2, 16), "tree OT messages")
        _check(peer, psi, (p.t, 16), "tree sums")
        t_rows = self._t
        gamma = gf_pack(t_rows[: p.t * BASE].view("<u8").reshape(p.t, BASE, 2))
        got = self._pub.ot_hash(t_rows[p.t * BASE : p.t * (BASE + p.depth)], p.t * BASE).reshape(p.t, p.depth, 16)
        want = 1 - self._path  # (t, depth)
        ar = np.arange(p.t)
        sib = cts[ar[:, None], np.arange(p.depth)[None, :], want] ^ got  # the level sums R chose
        leaves = np.empty((p.t, 1 << p.depth, 16), dtype=np.uint8)
        total = np.empty((p.t, 2), dtype=np.uint64)  # the XOR of R's leaves
        for lo, hi in _tree_groups(p):
            g = np.arange(hi - lo)
            level = np.zeros((hi - lo, 1, 16), dtype=np.uint8)
            punct = np.zeros(hi - lo, dtype=np.intp)
            for lv in range(p.depth):
                half = 1 << lv
                nxt = leaves[lo:hi] if lv == p.depth - 1 else np.empty((hi - lo, 2 * half, 16), dtype=np.uint8)
                self._pub.children(level, nxt)
                nxt[g, punct] = 0  # the punctured node's children: unknown to R
                nxt[g, punct + half] = 0
                w = want[lo:hi, lv].astype(bool)
                known_l, known_r = _fold(nxt[:, :half]), _fold(nxt[:, half:])
                value = sib[lo:hi, lv].view("<u8").reshape(hi - lo, 2) ^ np.where(w[:, None], known_r, known_l)
                nxt.view("<u8").reshape(hi - lo, 2 * half, 2)[g, punct + w * half] = value
                punct = punct + (~w) * half
                level = nxt
                if lv == p.depth - 1:
                    total[lo:hi] = known_l ^ known_r ^ value
        fix = total ^ psi.view("<u8").reshape(p.t, 2) ^ gamma  # v_alpha + beta * Delta
        leaves.view("<u8").reshape(p.t, 1 << p.depth, 2)[ar, self._alpha.astype(np.intp)] = fix
        acc = _accumulate(leaves.view("<u8").reshape(p.slots, 2))
        # G(e) from the noise alone: the accumulated noise is beta_k from alpha_k of block k on,
        # on top of the XOR of every earlier block's beta
        # table[2k] = beta_0 + ... + beta_{k-1}, table[2k + 1] = that + beta_k
        table = np.zeros((p.t, 2, 2), dtype=np.uint64)
        np.bitwise_xor.accumulate(self._beta, axis=0, out=table[:, 1])
        table[1:, 0] = table[:-1, 1]
        flat = table.view(np.complex128).reshape(-1)
        alpha = self._alpha.astype(np.intp)
        a = np.empty((p.n, 2), dtype=np.uint64) if into is None else into
        c = np.empty((p.n, 2), dtype=np.uint64)
        mask = (1 << p.depth) - 1
        joint = self._joint
        local = threading.local()

        def chunk(lo: int) -> None:
            # numpy's gathers and pyca's AES let go of the GIL: two threads use the
            # core the sender leaves idle while it waits for P'; each its own AES contexts
            if not hasattr(local, "pub"):
                local.pub = _Public(joint, p)
            pub = local.pub
            hi = min(p.n, lo + _CHUNK)
            pos = pub.positions(lo, hi)
            pub.expand(acc, c[lo:hi], pos)
            idx = pos >> p.depth  # the slot's block k, then 2k + (slot at or past alpha_k)
            beyond = np.bitwise_and(pos, mask, out=pos) >= alpha[idx]
            idx <<= 1
            idx += beyond
            if into is None:
                _gather_xor(flat, idx, a[lo:hi])
            else:
                part = np.empty((hi - lo, 2), dtype=np.uint64)
                _gather_xor(flat, idx, part)
                np.bitwise_xor(a[lo:hi], part, out=a[lo:hi])

        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            list(pool.map(chunk, range(0, p.n, _CHUNK)))
        return a, c
