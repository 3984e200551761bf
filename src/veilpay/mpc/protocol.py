"""What every sharing protocol provides, and the parts they have in common.

A protocol object is one party's runtime: its channels, its PRG streams and the
fixed-point format. All parties run the same program (SPMD); a party that holds no
share of a value (the semi2k dealer, an input-only party) keeps ``None`` in its
place and still takes part in the rounds that need it. Shares are tuples of uint64
arrays: one array for semi2k, two for aby3's replicated sharing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from veilpay.crypto import Prg, SeedAgreement, derive_seed, random_seed
from veilpay.errors import InvalidInput, WireFormatError
from veilpay.mpc.fixedpoint import FixedPoint
from veilpay.net import Communicator

__all__ = [
    "Protocol", "Shares", "check_array", "finish_trunc", "map_shares", "need_shares", "residue_dtype",
    "trunc_pair_share",
]

Shares = tuple[np.ndarray, ...] | None


def map_shares(fn: Callable[..., np.ndarray], *xs: Shares) -> Shares:
    """Apply a local, share-wise function (linear ops, reshapes, shifts)."""
    if xs[0] is None:
        return None
    return tuple(fn(*parts) for parts in zip(*xs, strict=True))  # type: ignore[arg-type]


def need_shares(x: Shares) -> None:
    if x is None:
        raise InvalidInput("this party holds no share of the operand")


def check_array(arr: np.ndarray, shape: tuple[int, ...], peer: str, dtype: type = np.uint64) -> np.ndarray:
    """A received array must have the dtype and shape the protocol step expects."""
    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise WireFormatError(peer, f"expected {np.dtype(dtype)} {tuple(shape)}, got {arr.dtype} {arr.shape}")
    return arr


def residue_dtype(bits: int) -> type:
    """The narrowest unsigned dtype that holds residues mod 2^bits: what a share needs
    on the wire when only its value mod 2^bits matters (a value later multiplied by
    a multiple of 2^(64 - bits))."""
    for dt, width in ((np.uint8, 8), (np.uint16, 16), (np.uint32, 32)):
        if bits <= width:
            return dt
    return np.uint64


_ONE = np.uint64(1)
_63 = np.uint64(63)


def trunc_pair_share(r: np.ndarray, bits: int, rt_mask: np.ndarray, rm_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the helper of exact truncation (semi2k's dealer, aby3's P0) sends: the
    shares of r >> bits and msb(r) that complement the receiver-side masks drawn from
    a common stream. msb(r) is only ever multiplied by a multiple of 2^(64 - bits),
    so its share travels mod 2^bits in the narrowest dtype (`residue_dtype`)."""
    rt = r >> np.uint64(bits)
    rt -= rt_mask
    rm = r >> _63
    rm -= rm_mask
    return rt, rm.astype(residue_dtype(bits))


def finish_trunc(c: np.ndarray, rt: np.ndarray, rm: np.ndarray, bits: int, first: bool) -> np.ndarray:
    """A share of (x >> bits) from the opened c = x + 2^62 + r and this party's shares
    rt of r >> bits and rm of msb(r) (uint64); ``first``: the one party that adds the
    public terms. Works in place on ``rm`` and ``c``, which the caller gives up."""
    # x + 2^62 + r wrapped past 2^64 exactly when msb(r) = 1 and msb(c) = 0.
    wrap_weight = c >> _63
    wrap_weight ^= _ONE
    wrap_weight <<= np.uint64(64 - bits)
    rm *= wrap_weight
    rm -= rt
    if first:
        c >>= np.uint64(bits)
        c -= np.uint64(1 << (62 - bits))
        rm += c
    return rm


class Protocol(ABC):
    """One party's runtime for a secret-sharing protocol."""

    name: str = ""

    def __init__(self, comm: Communicator, compute: Sequence[str], fxp: FixedPoint | None = None) -> None:
        self.comm = comm
        self.me = comm.me
        self.fxp = fxp or FixedPoint()
        self.compute = tuple(compute)
        for p in self.compute:
            if p not in comm.parties:
                raise InvalidInput(f"compute party {p!r} is not in the network")
        self.is_compute = self.me in self.compute
        self.private = Prg(random_seed())
        self.pair_seed = self._agree_seeds()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(me={self.me!r}, compute={self.compute!r}, f={self.fxp.frac_bits})"

    def _agree_seeds(self) -> dict[str, bytes]:
        key = SeedAgreement.generate()
        pub = np.frombuffer(key.public_bytes(), dtype=np.uint8)
        peers = self.comm.peers
        got = self.comm.exchange("setup", {p: [pub] for p in peers}, {p: 1 for p in peers})
        session = self.comm.channels[peers[0]].session
        seeds = {}
        for p in peers:
            raw = got[p][0]
            if raw.shape != (32,):
                raise WireFormatError(p, "setup message is not an X25519 public key")
            seeds[p] = key.derive(raw.tobytes(), session, self.me, p)
        self.comm.reset_stats()
        return seeds

    def pair_prg(self, peer: str, purpose: str) -> Prg:
        return Prg(derive_seed(self.pair_seed[peer], purpose))

    # -- abstract primitives -------------------------------------------------
    @abstractmethod
    def input(self, owner: str, value: np.ndarray | None, shape: tuple[int, ...]) -> Shares:
        """Share the ring array ``value`` held by ``owner`` (others pass None)."""

    @abstractmethod
    def input_bits(self, owner: str, value: np.ndarray | None, shape: tuple[int, ...]) -> Shares:
        """A boolean (XOR) sharing of ``owner``'s uint64 words (bit-packed 0/1 values)."""

    @abstractmethod
    def reveal(self, x: Shares, shape: tuple[int, ...], to: Sequence[str]) -> np.ndarray | None:
        """Open ``x`` to the parties ``to``; they get the ring array, others None."""

    @abstractmethod
    def add_public(self, x: Shares, c: np.ndarray) -> Shares:
        """x + c for a public ring array c (broadcasting)."""

    @abstractmethod
    def xor_public(self, x: Shares, c: np.ndarray) -> Shares:
        """x ^ c on boolean shares."""

    @abstractmethod
    def mul(self, x: Shares, y: Shares, shape: tuple[int, ...]) -> Shares:
        """Element-wise ring product of two same-shape sharings."""

    def mul_columns(self, x: Shares, y: Shares, xshape: tuple[int, int], k: int) -> Shares:
        """[x * y[:, 0], ..., x * y[:, k-1]] side by side, (n, k m), for x (n, m) and
        y (n, k). Default: broadcast both and multiply; semi2k opens x and y once."""
        n, m = xshape
        xs = map_shares(lambda s: np.tile(s, (1, k)), x)
        ys = map_shares(lambda s: np.repeat(s, m, axis=1), y)
        return self.mul(xs, ys, (n, k * m))

    @abstractmethod
    def matmul(self, x: Shares, y: Shares, m: int, k: int, n: int) -> Shares:
        """Ring matrix product of (m,k) and (k,n) sharings."""

    @abstractmethod
    def trunc(self, x: Shares, shape: tuple[int, ...], bits: int) -> Shares:
        """Arithmetic shift right by ``bits`` of a signed value (see docs for the error)."""

    def mul_trunc(self, x: Shares, y: Shares, shape: tuple[int, ...], bits: int) -> Shares:
        """trunc(mul(x, y)); a protocol overrides it where the two fuse into fewer rounds."""
        return self.trunc(self.mul(x, y, shape), shape, bits)

    def matmul_trunc(self, x: Shares, y: Shares, m: int, k: int, n: int, bits: int) -> Shares:
        """trunc(matmul(x, y)), fused where the protocol can."""
        return self.trunc(self.matmul(x, y, m, k, n), (m, n), bits)

    # -- a fixed matrix multiplied many times (training) ----------------------
    def premask(self, x: Shares, shape: tuple[int, int]) -> Any:
        """Prepare a fixed (n, d) matrix X for many products ``rows_matmul`` and
        ``rows_t_matmul`` with fresh operands. Default: nothing to prepare; semi2k
        opens X - A once, so each later product opens only the small operand."""
        return x, shape[0]

    def rows_matmul(self, state: Any, idx: np.ndarray | None, y: Shares, d: int, n: int) -> Shares:
        """X[idx] @ Y (idx None: every row) for a prepared (rows, d) matrix X and a
        (d, n) sharing Y."""
        x, rows = state
        xb = x if idx is None else map_shares(lambda s: np.ascontiguousarray(s[idx]), x)
        return self.matmul(xb, y, rows if idx is None else len(idx), d, n)

    def rows_t_matmul(self, state: Any, idx: np.ndarray | None, y: Shares, d: int, n: int) -> Shares:
        """X[idx]^T @ Y (idx None: every row) for a prepared (rows, d) matrix X and a
        (len(idx), n) sharing Y."""
        x, rows = state
        xt = map_shares(lambda s: np.ascontiguousarray((s if idx is None else s[idx]).T), x)
        return self.matmul(xt, y, d, rows if idx is None else len(idx), n)

    # -- a 0/1 matrix whose column blocks their owners hold in the clear (trees) --
    def bits_premask(self, blocks: Sequence[tuple[str, int]], mine: dict[int, np.ndarray], n: int) -> Any:
        """Prepare the (n, C) 0/1 matrix made of the column blocks ``blocks`` (owner,
        width), in column order, each held in the clear by its owner; ``mine`` maps
        this party's block numbers to its (n, width) 0/1 arrays. Default: share every
        block as integers and premask the whole matrix (64-bit products)."""
        parts = []
        for i, (owner, width) in enumerate(blocks):
            val = None
            if self.me == owner:
                if i not in mine or mine[i].shape != (n, width):
                    raise InvalidInput(f"block {i} of this party must be a ({n}, {width}) 0/1 array")
                val = FixedPoint.encode_int(mine[i].astype(np.int64))
            parts.append(self.input(owner, val, (n, width)))
        width = sum(w for _, w in blocks)
        x: Shares = None
        if all(p is not None for p in parts):
            x = tuple(np.ascontiguousarray(np.concatenate(c, axis=1)) for c in zip(*parts, strict=True))  # type: ignore[misc]
        return self.premask(x, (n, width)), width, n

    def bits_t_matmul(self, state: Any, y: Shares, k: int, shift: int, signed: bool) -> Shares:
        """M^T (y / 2^shift) for a prepared (n, C) 0/1 matrix M and an (n, k) sharing y:
        (C, k) shares in Z_2^64. The caller guarantees |result| < 2^30 (signed) or
        0 <= result < 2^31; a protocol may then compute it in a narrower ring."""
        inner, width, n = state
        if shift:
            y = self.trunc(y, (n, k), shift)
        return self.rows_t_matmul(inner, None, y, width, k)

    def bits_matmul(self, state: Any, w: Shares, k: int) -> Shares:
        """M w for a prepared (n, C) 0/1 matrix and a (C, k) integer sharing w whose
        products stay in [0, 2^15) (w 0/1: at most C ones per row)."""
        inner, width, _ = state
        return self.rows_matmul(inner, None, w, width, k)

    @abstractmethod
    def and_(self, x: Shares, y: Shares, shape: tuple[int, ...]) -> Shares:
        """Bitwise AND of two boolean (XOR) sharings."""

    @abstractmethod
    def a2b(self, x: Shares, shape: tuple[int, ...]) -> tuple[Shares, Shares]:
        """Two boolean sharings whose ring sum is x; an adder finishes the conversion."""

    @abstractmethod
    def bit_to_arith(self, b: Shares, shape: tuple[int, ...]) -> Shares:
        """Arithmetic 0/1 sharing of bit 0 of a boolean sharing."""
