"""SharedTensor: a secret array, numpy-like, over any protocol.

It carries the protocol runtime, this party's shares (None where it holds none), the
public shape and the number of fraction bits of its encoding (0 for integers, f for
fixed point). Arithmetic with plain numbers encodes them on the fly; products of
two fixed-point operands are truncated back to f fraction bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from veilpay.errors import InvalidInput, ShapeMismatch, WireFormatError
from veilpay.mpc.fixedpoint import FixedPoint
from veilpay.mpc.protocol import Protocol, Shares, map_shares
from veilpay.mpc.ring import ring_matmul

__all__ = ["SharedTensor", "concatenate", "share", "stack"]


def _shape_of(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(s) for s in shape)


def share(
    rt: Protocol,
    owner: str,
    value: ArrayLike | None = None,
    shape: int | Sequence[int] | None = None,
    fixed: bool = True,
) -> SharedTensor:
    """Secret-share ``value`` held by ``owner``; other parties pass no value.

    Without ``shape`` the owner announces it first (one extra round).
    """
    ring = None
    if rt.me == owner:
        if value is None:
            raise InvalidInput(f"party {owner!r} owns this input and must pass a value")
        arr = np.asarray(value)
        if shape is not None and _shape_of(shape) != arr.shape:
            raise ShapeMismatch(f"value of shape {arr.shape} declared as {tuple(_shape_of(shape))}")
        ring = rt.fxp.encode(arr) if fixed else FixedPoint.encode_int(arr)
    if shape is None:
        shape = _announce_shape(rt, owner, None if ring is None else ring.shape)
    shp = _shape_of(shape)
    sh = rt.input(owner, ring, shp)
    return SharedTensor(rt, sh, shp, rt.fxp.frac_bits if fixed else 0)


def _announce_shape(rt: Protocol, owner: str, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    send = {}
    if rt.me == owner:
        send = {p: [np.asarray(shape, dtype=np.uint64).reshape(-1)] for p in rt.comm.peers}
    got = rt.comm.exchange("shape", send, {owner: 1} if rt.me != owner else {})
    if rt.me == owner:
        return shape  # type: ignore[return-value]
    arr = got[owner][0]
    if arr.dtype != np.uint64 or arr.ndim != 1 or arr.size > 8:
        raise WireFormatError(owner, "malformed shape announcement")
    return tuple(int(v) for v in arr)


class SharedTensor:
    __slots__ = ("frac", "rt", "sh", "shape")

    def __init__(self, rt: Protocol, sh: Shares, shape: tuple[int, ...], frac: int) -> None:
        self.rt = rt
        self.sh = sh
        self.shape = tuple(shape)
        self.frac = frac

    # -- basics --------------------------------------------------------------
    def __repr__(self) -> str:
        kind = "fixed" if self.frac else "int"
        return f"SharedTensor(shape={self.shape}, {kind}, protocol={self.rt.name})"

    def __bool__(self) -> bool:
        raise TypeError("a SharedTensor has no truth value: reveal it, or use where()")

    __hash__ = None  # type: ignore[assignment]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _new(self, sh: Shares, shape: tuple[int, ...] | None = None, frac: int | None = None) -> SharedTensor:
        return SharedTensor(self.rt, sh, self.shape if shape is None else shape, self.frac if frac is None else frac)

    def reveal(self, to: str | Sequence[str] | None = None) -> np.ndarray | None:
        """Open to the named parties (default: all); returns floats for fixed point,
        int64 for integers, and None at parties not named."""
        receivers = list(self.rt.comm.parties) if to is None else ([to] if isinstance(to, str) else list(to))
        for r in receivers:
            if r not in self.rt.comm.parties:
                raise InvalidInput(f"cannot reveal to unknown party {r!r}")
        ring = self.rt.reveal(self.sh, self.shape, receivers)
        if ring is None:
            return None
        return self.rt.fxp.decode(ring) if self.frac else FixedPoint.decode_int(ring)

    # -- encodings -------------------------------------------------------------
    def _scaled_to(self, frac: int) -> SharedTensor:
        if frac == self.frac:
            return self
        if frac < self.frac:
            return self._truncate(self.frac - frac)
        factor = np.uint64(1 << (frac - self.frac))
        return self._new(map_shares(lambda s: s * factor, self.sh), frac=frac)

    def _public(self, value: Any) -> tuple[np.ndarray, int]:
        arr = np.asarray(value)
        if arr.dtype.kind in "iub":
            return FixedPoint.encode_int(arr.astype(np.int64)), 0
        if arr.dtype.kind == "f":
            return self.rt.fxp.encode(arr), self.rt.fxp.frac_bits
        raise InvalidInput(f"cannot combine a SharedTensor with {type(value).__name__}")

    def _truncate(self, bits: int) -> SharedTensor:
        return self._new(self.rt.trunc(self.sh, self.shape, bits), frac=self.frac - bits)

    def _broadcast(self, shape: tuple[int, ...]) -> SharedTensor:
        if shape == self.shape:
            return self
        return self._new(map_shares(lambda s: np.broadcast_to(s, shape).copy(), self.sh), shape=shape)

    def _out_shape(self, other_shape: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return tuple(np.broadcast_shapes(self.shape, other_shape))
        except ValueError as exc:
            raise ShapeMismatch(f"shapes {self.shape} and {other_shape} do not broadcast") from exc

    # -- linear ops ------------------------------------------------------------
    def __add__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            shape = self._out_shape(other.shape)
            frac = max(self.frac, other.frac)
            a, b = self._scaled_to(frac), other._scaled_to(frac)
            return SharedTensor(self.rt, map_shares(np.add, a.sh, b.sh), shape, frac)
        c, cfrac = self._public(other)
        shape = self._out_shape(c.shape)
        frac = max(self.frac, cfrac)
        a = self._scaled_to(frac)
        if cfrac < frac:
            c = c * np.uint64(1 << (frac - cfrac))
        return SharedTensor(self.rt, self.rt.add_public(a.sh, c), shape, frac)

    __radd__ = __add__

    def __neg__(self) -> SharedTensor:
        return self._new(map_shares(np.negative, self.sh))

    def __sub__(self, other: Any) -> SharedTensor:
        return self + (-other)

    def __rsub__(self, other: Any) -> SharedTensor:
        return (-self) + other

    def __mul__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            shape = self._out_shape(other.shape)
            a, b = self._broadcast(shape), other._broadcast(shape)
            frac, f = a.frac + b.frac, self.rt.fxp.frac_bits
            if frac > f:
                return SharedTensor(self.rt, self.rt.mul_trunc(a.sh, b.sh, shape, frac - f), shape, f)
            return SharedTensor(self.rt, self.rt.mul(a.sh, b.sh, shape), shape, frac)
        else:
            c, cfrac = self._public(other)
            shape = self._out_shape(c.shape)
            prod = SharedTensor(self.rt, map_shares(lambda s: s * c, self.sh), shape, self.frac + cfrac)
        f = self.rt.fxp.frac_bits
        return prod._truncate(prod.frac - f) if prod.frac > f else prod

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            from veilpay.mpc.nonlinear import reciprocal

            return self * reciprocal(other)
        return self * (1.0 / np.asarray(other, dtype=np.float64))

    def __matmul__(self, other: Any) -> SharedTensor:
        if not isinstance(other, SharedTensor):
            c, cfrac = self._public(other)
            if self.ndim != 2 or c.ndim != 2 or self.shape[1] != c.shape[0]:
                raise ShapeMismatch(f"matmul of shapes {self.shape} and {c.shape}")
            # A public right operand is a local product on every share component.
            prod = SharedTensor(
                self.rt, map_shares(lambda s: ring_matmul(s, c), self.sh), (self.shape[0], c.shape[1]),
                self.frac + cfrac,
            )
            f = self.rt.fxp.frac_bits
            return prod._truncate(prod.frac - f) if prod.frac > f else prod
        a, b = self, other
        va, vb = a.ndim == 1, b.ndim == 1
        if va:
            a = a.reshape(1, -1)
        if vb:
            b = b.reshape(-1, 1)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ShapeMismatch(f"matmul of shapes {self.shape} and {other.shape}")
        m, k = a.shape
        n = b.shape[1]
        frac, f = a.frac + b.frac, self.rt.fxp.frac_bits
        if frac > f:
            out = SharedTensor(self.rt, self.rt.matmul_trunc(a.sh, b.sh, m, k, n, frac - f), (m, n), f)
        else:
            out = SharedTensor(self.rt, self.rt.matmul(a.sh, b.sh, m, k, n), (m, n), frac)
        if va and vb:
            return out.reshape(())
        if va:
            return out.reshape(n)
        if vb:
            return out.reshape(m)
        return out

    def sum(self, axis: int | None = None) -> SharedTensor:
        shape = tuple(np.empty(self.shape, dtype=np.uint8).sum(axis=axis).shape)
        return self._new(map_shares(lambda s: np.asarray(s.sum(axis=axis, dtype=np.uint64)), self.sh), shape=shape)

    def mean(self, axis: int | None = None) -> SharedTensor:
        total = self.sum(axis)
        count = self.size // max(total.size, 1)
        return total._scaled_to(max(total.frac, self.rt.fxp.frac_bits)) * (1.0 / count)

    # -- shape ops -------------------------------------------------------------
    def reshape(self, *shape: int | Sequence[int]) -> SharedTensor:
        target = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        try:
            new_shape = np.empty(self.shape, dtype=np.uint8).reshape(target).shape  # type: ignore[call-overload,arg-type]
        except ValueError as exc:
            raise ShapeMismatch(f"cannot reshape {self.shape} to {target}") from exc
        return self._new(map_shares(lambda s: s.reshape(new_shape), self.sh), shape=tuple(new_shape))

    def transpose(self, *axes: int) -> SharedTensor:
        ax = axes or None
        shape = np.empty(self.shape, dtype=np.uint8).transpose(ax).shape
        return self._new(map_shares(lambda s: np.array(s.transpose(ax), order="C"), self.sh), shape=tuple(shape))

    @property
    def T(self) -> SharedTensor:  # noqa: N802 - numpy's name
        return self.transpose()

    def __getitem__(self, key: Any) -> SharedTensor:
        if isinstance(key, SharedTensor):
            raise TypeError("indexing with a secret index is not supported; use where() or a one-hot product")
        try:
            shape = np.empty(self.shape, dtype=np.uint8)[key].shape
        except IndexError as exc:
            raise InvalidInput(f"index {key!r} out of range for shape {self.shape}") from exc
        return self._new(map_shares(lambda s: np.array(s[key], order="C"), self.sh), shape=tuple(shape))

    # -- comparisons (0/1 integer results) ---------------------------------------
    def __lt__(self, other: Any) -> SharedTensor:
        from veilpay.mpc.nonlinear import less

        return less(self, other)

    def __gt__(self, other: Any) -> SharedTensor:
        from veilpay.mpc.nonlinear import less

        return less(other, self) if isinstance(other, SharedTensor) else less(-self, -np.asarray(other))

    def __le__(self, other: Any) -> SharedTensor:
        return 1 - (self > other)

    def __ge__(self, other: Any) -> SharedTensor:
        return 1 - (self < other)


class PremaskedMatrix:
    """A fixed shared (n, d) matrix prepared for many products with fresh operands
    (mini-batch training): ``rows_matmul(idx, w)`` = X[idx] @ w and
    ``rows_t_matmul(idx, e)`` = X[idx]^T @ e, each truncated to the fixed-point
    scale. With semi2k, X - A is opened once here and each product then moves data
    in the size of its operand and result only."""

    def __init__(self, x: SharedTensor) -> None:
        if x.ndim != 2:
            raise ShapeMismatch(f"premask needs a matrix, got shape {x.shape}")
        self.rt, self.shape, self.frac = x.rt, x.shape, x.frac
        self._state = x.rt.premask(x.sh, (x.shape[0], x.shape[1]))

    def _finish(self, sh: Shares, shape: tuple[int, int], other: SharedTensor) -> SharedTensor:
        out = SharedTensor(self.rt, sh, shape, self.frac + other.frac)
        f = self.rt.fxp.frac_bits
        return out._truncate(out.frac - f) if out.frac > f else out

    def rows_matmul(self, idx: np.ndarray | None, y: SharedTensor) -> SharedTensor:
        """X[idx] @ y; ``idx=None`` takes every row (no gather)."""
        n, d = self.shape
        rows = n if idx is None else len(idx)
        if y.ndim != 2 or y.shape[0] != d:
            raise ShapeMismatch(f"rows_matmul of ({rows}, {d}) rows and {y.shape}")
        sh = self.rt.rows_matmul(self._state, None if idx is None else np.asarray(idx), y.sh, d, y.shape[1])
        return self._finish(sh, (rows, y.shape[1]), y)

    def rows_t_matmul(self, idx: np.ndarray | None, y: SharedTensor) -> SharedTensor:
        """X[idx]^T @ y; ``idx=None`` takes every row (the transpose is made once)."""
        n, d = self.shape
        rows = n if idx is None else len(idx)
        if y.ndim != 2 or y.shape[0] != rows:
            raise ShapeMismatch(f"rows_t_matmul of ({d}, {rows}) and {y.shape}")
        sh = self.rt.rows_t_matmul(self._state, None if idx is None else np.asarray(idx), y.sh, d, y.shape[1])
        return self._finish(sh, (d, y.shape[1]), y)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(k, n) 0/1 values to (k, ceil(n / 64)) uint64 words, row i's value j in bit
    j % 64 of word j // 64 (XOR sharings pack and unpack locally)."""
    k, n = bits.shape
    words = (n + 63) // 64
    raw = np.zeros((k, words * 8), dtype=np.uint8)
    raw[:, : (n + 7) // 8] = np.packbits(bits.astype(np.uint8, copy=False), axis=1, bitorder="little")
    return raw.view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: np.ndarray, n: int) -> np.ndarray:
    """The inverse of ``pack_bits``: (k, n) uint64 0/1 values."""
    raw = np.ascontiguousarray(words).astype("<u8", copy=False).view(np.uint8)
    return np.unpackbits(raw, axis=1, count=n, bitorder="little").astype(np.uint64)


class BitMatrix:
    """A fixed (n, C) 0/1 matrix whose column blocks are held in the clear by their
    owners (the trees' split indicators): ``blocks`` lists (owner, width) in column
    order, and each owner passes its blocks in ``mine`` (block number -> (n, width)
    array). Products: ``t_matmul`` = M^T y (histograms), ``matmul`` = M w (0/1
    selections). semi2k masks M once in Z_2^32 (the owner's blocks never leave it
    unmasked) and runs both products in narrow rings; other protocols share M."""

    def __init__(self, rt: Protocol, blocks: Sequence[tuple[str, int]], mine: dict[int, np.ndarray] | None,
                 n: int) -> None:
        if n < 1 or not blocks or any(w < 1 for _, w in blocks):
            raise ShapeMismatch(f"a bit matrix needs rows and non-empty blocks, got n={n}, blocks={list(blocks)}")
        self.rt = rt
        self.shape = (n, sum(w for _, w in blocks))
        self._blocks = list(blocks)
        self._mine = dict(mine or {})
        self.opened: dict[int, np.ndarray] = {}  # this party's blocks of the last selection, as opened to it
        self._state = rt.bits_premask(self._blocks, self._mine, n)

    def t_matmul(self, y: SharedTensor, frac: int, signed: bool = True) -> SharedTensor:
        """M^T y, computed with ``frac`` fraction bits (y's extra bits are shifted off
        first) and returned in y's format. The caller bounds the result:
        |M^T y| < 2^(30 - frac) (signed), else in [0, 2^(31 - frac))."""
        n, c = self.shape
        if y.ndim != 2 or y.shape[0] != n:
            raise ShapeMismatch(f"t_matmul of ({c}, {n}) and {y.shape}")
        if not 0 <= frac <= y.frac:
            raise InvalidInput(f"t_matmul keeps 0..{y.frac} fraction bits, not {frac}")
        sh = self.rt.bits_t_matmul(self._state, y.sh, y.shape[1], y.frac - frac, signed)
        return SharedTensor(self.rt, sh, (c, y.shape[1]), frac)._scaled_to(y.frac)

    def select_bits(self, onehot: SharedTensor) -> Shares:
        """As ``select_columns``, as a boolean (XOR) sharing of the picked columns, rows
        packed 64 to a word (``pack_bits``): (k, ceil(n / 64)) words, no message."""
        n, _ = self.shape
        out: Shares = None
        for owner, cols in self._picked(onehot):
            packed = None if cols is None else pack_bits(cols.T)
            part = self.rt.input_bits(owner, packed, (onehot.shape[0], (n + 63) // 64))
            out = part if out is None else map_shares(np.bitwise_xor, out, part)
        return out

    def _picked(self, onehot: SharedTensor) -> list[tuple[str, np.ndarray | None]]:
        """Per block: (owner, the (n, k) 0/1 columns it picks, at the owner only)."""
        n, c = self.shape
        if onehot.ndim != 2 or onehot.shape[1] != c or onehot.frac:
            raise ShapeMismatch(f"column selection needs an integer (k, {c}) sharing, got {onehot.shape}")
        out: list[tuple[str, np.ndarray | None]] = []
        self.opened = {}
        start = 0
        for b, (owner, width) in enumerate(self._blocks):
            seg = onehot[:, start : start + width].reveal(to=owner)
            start += width
            cols = None
            if seg is not None:
                if b not in self._mine:
                    raise InvalidInput(f"this party owns block {b} of the matrix but did not pass it")
                if ((seg != 0) & (seg != 1)).any() or (seg.sum(axis=1) > 1).any():
                    raise InvalidInput("column selection needs at most one 1 per row of the one-hot")
                self.opened[b] = seg
                # The picked columns, or 0 where another block's is: the same work whatever this
                # party owns, so the time to the next message does not tell an observer.
                picks = np.argmax(seg, axis=1)
                cols = self._mine[b][:, picks] * seg.any(axis=1).astype(np.uint8)
            out.append((owner, cols))
        return out

    def select_columns(self, onehot: SharedTensor) -> tuple[SharedTensor, dict[int, np.ndarray]]:
        """M O^T for a (k, C) integer 0/1 sharing O with at most one 1 per row, by
        opening each block of O to that block's owner: the owner learns which of its
        columns each row of O picks (or that it picks none of them), and inputs those
        columns. Returns the (n, k) integer sharing and this party's opened blocks
        (block number -> (k, width) 0/1), which the caller must treat as revealed."""
        n, _ = self.shape
        out: SharedTensor | None = None
        for owner, cols in self._picked(onehot):
            part = share(self.rt, owner, None if cols is None else cols.astype(np.int64), shape=(n, onehot.shape[0]),
                         fixed=False)
            out = part if out is None else out + part
        if out is None:  # pragma: no cover - blocks is never empty
            raise ShapeMismatch("no blocks")
        return out, dict(self.opened)

    def matmul(self, w: SharedTensor) -> SharedTensor:
        """M w for an integer (C, k) sharing w of 0/1 entries (results below 2^15)."""
        n, c = self.shape
        if w.ndim != 2 or w.shape[0] != c or w.frac:
            raise ShapeMismatch(f"matmul of ({n}, {c}) and an integer ({c}, k) sharing, got {w.shape}, frac {w.frac}")
        return SharedTensor(self.rt, self.rt.bits_matmul(self._state, w.sh, w.shape[1]), (n, w.shape[1]), 0)


def mul_columns(x: SharedTensor, y: SharedTensor) -> SharedTensor:
    """[x * y[:, 0], ..., x * y[:, k-1]] side by side: (n, k m) for x (n, m) and y
    (n, k), e.g. tree memberships times the gradient and hessian columns. semi2k opens
    x and y once each."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ShapeMismatch(f"mul_columns needs (n, m) and (n, k), got {x.shape} and {y.shape}")
    n, m = x.shape
    k = y.shape[1]
    out = SharedTensor(x.rt, x.rt.mul_columns(x.sh, y.sh, (n, m), k), (n, k * m), x.frac + y.frac)
    f = x.rt.fxp.frac_bits
    return out._truncate(out.frac - f) if out.frac > f else out


def concatenate(tensors: Sequence[SharedTensor], axis: int = 0) -> SharedTensor:
    if not tensors:
        raise InvalidInput("nothing to concatenate")
    frac = max(t.frac for t in tensors)
    ts = [t._scaled_to(frac) for t in tensors]
    try:
        shape = np.concatenate([np.empty(t.shape, dtype=np.uint8) for t in ts], axis=axis).shape
    except ValueError as exc:
        raise ShapeMismatch(f"cannot concatenate shapes {[t.shape for t in ts]}") from exc
    sh = None if ts[0].sh is None else tuple(
        np.concatenate(parts, axis=axis) for parts in zip(*[t.sh for t in ts], strict=True)  # type: ignore[misc]
    )
    return SharedTensor(ts[0].rt, sh, tuple(shape), frac)


def stack(tensors: Sequence[SharedTensor], axis: int = 0) -> SharedTensor:
    return concatenate([t.reshape(t.shape[:axis] + (1,) + t.shape[axis:]) for t in tensors], axis=axis)
