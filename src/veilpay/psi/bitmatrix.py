"""Bit-matrix transpose for OT extension, vectorised with numpy.

A bit matrix of R rows and C columns is stored as an (R, C/8) uint8 array with bit j
of a row in byte j // 8 at bit position j % 8 (least significant first, numpy's
``bitorder='little'``). `transpose` turns it into the (C, R/8) array of the
transposed matrix: IKNP's switch between the base-OT columns and the per-OT rows.

How: bytes are regrouped so that each uint64 holds an 8 x 8 bit block (8 rows, one
byte each), the block is transposed in place by the three delta swaps of Hacker's
Delight (section 7-3), and the bytes are regrouped back. Rows are taken 8,192 at a
time so that the working set stays in cache.
"""

from __future__ import annotations

import numpy as np

from veilpay.errors import InvalidInput

__all__ = ["transpose"]

_STEP = 8192
_SWAPS = tuple((np.uint64(shift), np.uint64(mask)) for shift, mask in (
    (7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0)))


def _transpose8(x: np.ndarray) -> None:
    """Transpose the 8 x 8 bit block in each uint64 (byte r = row r, bit c = column c)."""
    t = np.empty_like(x)
    for shift, mask in _SWAPS:
        np.right_shift(x, shift, out=t)
        np.bitwise_xor(t, x, out=t)
        np.bitwise_and(t, mask, out=t)
        np.bitwise_xor(x, t, out=x)
        np.left_shift(t, shift, out=t)
        np.bitwise_xor(x, t, out=x)


def transpose(m: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The transpose of the bit matrix ``m`` ((R, C/8) uint8, R a multiple of 8), as a
    (C, R/8) uint8 array (written into ``out`` when given)."""
    if m.dtype != np.uint8 or m.ndim != 2 or m.shape[0] % 8:
        raise InvalidInput(f"transpose needs an (R, C/8) uint8 array with R a multiple of 8, got {m.dtype} {m.shape}")
    rows, cbytes = m.shape
    if out is None:
        out = np.empty((cbytes * 8, rows // 8), dtype=np.uint8)
    elif out.shape != (cbytes * 8, rows // 8) or out.dtype != np.uint8:
        raise InvalidInput("out has the wrong shape or dtype")
    dest = out.reshape(cbytes, 8, rows // 8)
    for lo in range(0, rows, _STEP):
        hi = min(rows, lo + _STEP)
        groups = (hi - lo) // 8
        # (groups, 8 rows, cbytes) -> (cbytes, groups, 8 rows): one uint64 per 8 x 8 block
        # a copy always: with one byte per row the regrouped view is already contiguous,
        # and the swaps below must not write into the caller's array
        blocks = m[lo:hi].reshape(groups, 8, cbytes).transpose(2, 0, 1).copy()
        words = blocks.view(np.uint64).reshape(cbytes, groups)
        _transpose8(words)
        # byte k of a block is now column bit k of those 8 rows
        dest[:, :, lo // 8 : hi // 8] = words.view(np.uint8).reshape(cbytes, groups, 8).transpose(0, 2, 1)
    return out
