"""The oblivious key-value store (OKVS) of RR22 PSI: a binary, F_2-linear PaXoS.

Raghuraman and Rindal, "Blazing fast PSI from improved OKVS and subfield VOLE"
(CCS 2022), section 3 (a 3-hypergraph of sparse positions plus a short dense vector),
on the PaXoS of Pinkas, Rosulek, Trieu and Yanai (Eurocrypt 2020), sections 4 and 5
(peeling, then Gaussian elimination of the 2-core only). Parameters, the failure bound
and measured times: docs/psi.md, "RR22's OKVS".

Each 128-bit item x maps, under a public per-attempt key, to three sparse columns (one
in each of three segments of ``seg`` columns) and a 64-bit dense vector over the last
``DENSE`` columns. A table P of ``size = 3 seg + DENSE`` rows of 16 bytes decodes to

    Decode(P, x) = P[h1(x)] ^ P[h2(x)] ^ P[h3(x)] ^ XOR_{j: dense_j(x) = 1} P[3 seg + j],

which is F_2-linear in P. ``encode`` finds a P with Decode(P, x_i) = v_i. Slots that no
equation fixes are zero: the RR22 caller sends P masked with a uniform VOLE vector, so
P itself never leaves its owner and its free slots need not be random. What P reveals
of the items is the caller's argument (RR22, section 4), not this module's.

The store learns nothing and sends nothing: it is local linear algebra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from veilpay.crypto.ot import AesEcb
from veilpay.errors import InvalidInput, OkvsFailure

__all__ = ["DENSE", "EXPANSION", "MAX_ITEMS", "SMALL_EXPANSION", "SMALL_N", "OKVS_VERSION", "Okvs", "OkvsRows", "okvs_size"]

OKVS_VERSION = 1
# Sparse columns per item: 3 * seg >= EXPANSION * n, plus _SEG_FLOOR columns per segment;
# up to SMALL_N items, SMALL_EXPANSION, where the bound behind EXPANSION is too weak to
# prove 2^-40 (docs/psi.md, "RR22's OKVS"; at most a thousand extra rows).
EXPANSION = 1.3
SMALL_N = 1024
SMALL_EXPANSION = 2.4
_SEG_FLOOR = 8
DENSE = 64
MAX_ITEMS = 1 << 30
# A 2-core beyond this many rows has probability far below 2^-40 at our expansion; the
# Python elimination would be slow, so it is a failure (retry) rather than a long stall.
_MAX_CORE = 512
_TAG = 1 << 31
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def okvs_size(n: int) -> int:
    """Rows of the table of a store sized for n items."""
    return 3 * _segment(n) + DENSE


def _segment(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_ITEMS:
        raise InvalidInput(f"n must be an int in 0..{MAX_ITEMS}")
    e = SMALL_EXPANSION if n <= SMALL_N else EXPANSION
    return math.ceil(e * n / 3) + _SEG_FLOOR


def _mulhi(w: np.ndarray, seg: int) -> np.ndarray:
    """floor(w * seg / 2^64) for uint64 w and seg < 2^31, exactly (Lemire's reduction,
    done in 32-bit halves because numpy has no 128-bit product): uniform w gives a slot
    whose bias is at most seg / 2^64, where a 32-bit word would give seg / 2^32 (10 %
    at n = 2^30)."""
    s = np.uint64(seg)
    lo = ((w & _M32) * s) >> _S32
    hi = (w >> _S32) * s
    hi += lo
    hi >>= _S32
    return hi


@dataclass(frozen=True)
class OkvsRows:
    """The equations of k items: ``pos`` (3, k) int64 sparse columns (segment s in row
    s, already offset by s * seg), ``dense`` (k,) uint64 (bit j: column 3 seg + j), and
    the ``size`` of the table they index."""

    pos: np.ndarray
    dense: np.ndarray
    size: int

    def __len__(self) -> int:
        return int(self.dense.shape[0])


class Okvs:
    """A store sized for n items under a public 16-byte key (a fresh key per attempt:
    an ``OkvsFailure`` is retried under another)."""

    def __init__(self, n: int, key: bytes) -> None:
        self.seg = _segment(n)
        if not isinstance(key, bytes | bytearray) or len(key) != 16:
            raise InvalidInput("the OKVS key is 16 bytes")
        self.n = n
        self.size = 3 * self.seg + DENSE
        self._aes = AesEcb(bytes(key))
        # A second AES key, derived from the first, gives each item a second
        # independent block (a tweak of the plaintext would cost an extra pass).
        self._aes2 = AesEcb(self._aes(np.ones(16, dtype=np.uint8)).tobytes())
        # Statistics of the last encode, for the benchmark and the failure measurements.
        self.last_rounds = 0
        self.last_core = 0

    def __repr__(self) -> str:
        return f"Okvs(n={self.n}, size={self.size})"

    def rows(self, items: np.ndarray) -> OkvsRows:
        """Sparse columns and dense bits of (k, 16) uint8 items: AES_key(x) gives two
        64-bit words, AES_key'(x) (key' = AES_key(0x01 * 16)) a third and the dense
        vector; each of the three words picks a column of its segment by multiply-high."""
        if not isinstance(items, np.ndarray) or items.dtype != np.uint8 or items.ndim != 2 or items.shape[1] != 16:
            raise InvalidInput("items must be a (k, 16) uint8 array")
        k = len(items)
        src = np.ascontiguousarray(items)
        first = self._aes(src).view("<u8").reshape(k, 2)
        second = self._aes2(src).view("<u8").reshape(k, 2)
        pos = np.empty((3, k), dtype=np.int64)
        for s, word in enumerate((first[:, 0], first[:, 1], second[:, 0])):
            col = _mulhi(word, self.seg)
            if s:
                col += np.uint64(s * self.seg)
            pos[s] = col.view(np.int64)
        dense = second[:, 1].astype(np.uint64)
        return OkvsRows(pos, dense, self.size)

    def _check_rows(self, rows: OkvsRows) -> None:
        if not isinstance(rows, OkvsRows) or rows.size != self.size:
            raise InvalidInput("rows must come from rows() of a store of this size")

    def decode(self, table: np.ndarray, rows: OkvsRows) -> np.ndarray:
        """Decode(P, x) for each row. ``table`` is (size, 16 w) uint8: w tables side by
        side decode in one pass, to (k, 16 w)."""
        self._check_rows(rows)
        if (not isinstance(table, np.ndarray) or table.dtype != np.uint8 or table.ndim != 2
                or table.shape[0] != self.size or table.shape[1] == 0 or table.shape[1] % 16):
            raise InvalidInput(f"the table must be ({self.size}, 16 w) uint8")
        words = np.ascontiguousarray(table).view(np.uint64)
        return _decode(words, _dense_tables(words[3 * self.seg:]), rows.pos, rows.dense).view(np.uint8)

    def encode(self, rows: OkvsRows, values: np.ndarray) -> np.ndarray:
        """A (size, 16 w) uint8 table P with Decode(P, x_i) = values[i]; ``values`` is
        (len(rows), 16 w) uint8. Raises ``OkvsFailure`` when the rows left after peeling
        have no solution (probability below 2^-40 for distinct items): retry under a new
        key. Duplicate items with different values always fail."""
        self._check_rows(rows)
        k = len(rows)
        if (not isinstance(values, np.ndarray) or values.dtype != np.uint8 or values.shape[:1] != (k,)
                or values.ndim != 2 or values.shape[1] == 0 or values.shape[1] % 16):
            raise InvalidInput(f"values must be ({k}, 16 w) uint8")
        vals = np.ascontiguousarray(values).view(np.uint64)
        width = vals.shape[1]
        rounds_rows, rounds_piv, peeled = _peel(rows.pos, 3 * self.seg)
        table = np.zeros((self.size, width), dtype=np.uint64)
        core = np.flatnonzero(~peeled)
        if core.size:
            _solve_core(rows, vals, core, table, 3 * self.seg)
        tabs = _dense_tables(table[3 * self.seg:])
        # Reverse peeling order: a row's pivot column holds no row peeled later, and
        # rows of one round share no pivot, so each round is one vectorised step; the
        # pivot slot is still zero, so decoding the row with it included is harmless.
        vt = np.dtype((np.void, 8 * width))
        flat_table, flat_vals = table.view(vt).reshape(-1), vals.view(vt).reshape(-1)
        for r, piv in zip(reversed(rounds_rows), reversed(rounds_piv), strict=True):
            pos = np.stack([np.take(rows.pos[s], r) for s in range(3)])
            got = _decode(table, tabs, pos, np.take(rows.dense, r))
            got ^= np.take(flat_vals, r).view(np.uint64).reshape(-1, width)
            # 1-D void rows: a 2-D fancy assignment is ten times slower
            flat_table[piv] = got.view(vt).reshape(-1)
        self.last_rounds = len(rounds_rows)
        self.last_core = int(core.size)
        return table.view(np.uint8)


def _dense_tables(dense_rows: np.ndarray) -> np.ndarray:
    """(8, 256, W) uint64: table b, entry t = XOR of dense rows 8b + i for the bits i of
    t, so that the 64 dense columns decode as 8 gathers instead of a loop over bits."""
    width = dense_rows.shape[1]
    tabs = np.zeros((8, 256, width), dtype=np.uint64)
    by_byte = dense_rows.reshape(8, 8, width)
    for i in range(8):
        np.bitwise_xor(tabs[:, : 1 << i], by_byte[:, i, None, :], out=tabs[:, 1 << i: 2 << i])
    return tabs


def _decode(words: np.ndarray, tabs: np.ndarray, pos: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """(k, W) uint64 decodes of the rows (pos, dense) against a (size, W) uint64 table."""
    width = words.shape[1]
    # A whole row as one void element makes np.take move 8 W bytes per index, the
    # fastest gather numpy has (a 2-D take on axis 0 is slower by a fifth).
    vt = np.dtype((np.void, 8 * width))
    flat = words.view(vt).reshape(-1)
    acc = np.take(flat, pos[0]).view(np.uint64).reshape(-1, width)
    for s in (1, 2):
        acc ^= np.take(flat, pos[s]).view(np.uint64).reshape(-1, width)
    dense_bytes = dense.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)
    tflat = tabs.view(vt).reshape(8, 256)
    for b in range(8):
        acc ^= np.take(tflat[b], dense_bytes[:, b]).view(np.uint64).reshape(-1, width)
    return acc


def _peel(pos: np.ndarray, m: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Peel the 3-hypergraph (columns are vertices, rows are edges) in rounds: every
    column of degree 1 names its one live row; all such rows go at once, each with
    that column as its pivot. Returns the rows and pivots of each round, and which rows
    were peeled (the rest is the 2-core).

    One int64 per column carries both its degree and its live rows: the sum over them
    of (id + 2^31). Ids are below 2^30, so a column holds exactly one row iff its sum
    lies in [2^31, 2^32), and the row is the sum less 2^31 (no overflow below 2^32 rows
    per column): one scatter-add per round where a degree and a sum would take two."""
    k = pos.shape[1]
    tagged = np.arange(_TAG, _TAG + k, dtype=np.int64)
    sums = np.zeros(m, dtype=np.int64)
    for s in range(3):
        np.add.at(sums, pos[s], tagged)
    peeled = np.zeros(k, dtype=bool)
    stamp = np.empty(k, dtype=np.int64)
    rounds_rows: list[np.ndarray] = []
    rounds_piv: list[np.ndarray] = []
    cand = np.flatnonzero((sums >= _TAG) & (sums < 2 * _TAG))
    while cand.size:
        r = np.take(sums, cand)
        r -= _TAG
        # one unsigned compare for 0 <= r < 2^31: a negative r wraps far above it
        at = np.flatnonzero(r.view(np.uint64) < _TAG)
        if not at.size:
            break
        r, cand = np.take(r, at), np.take(cand, at)
        # A row found twice in one round (at two of its columns, or at a column listed
        # twice) is peeled once: the stamp keeps whichever write landed, one per row,
        # without a sort.
        order = np.arange(r.size, dtype=np.int64)
        stamp[r] = order
        at = np.flatnonzero(np.take(stamp, r) == order)
        r, piv = np.take(r, at), np.take(cand, at)
        peeled[r] = True
        rounds_rows.append(r)
        rounds_piv.append(piv)
        touched = [np.take(pos[s], r) for s in range(3)]
        back = r + _TAG
        for col in touched:
            np.subtract.at(sums, col, back)
        cand = np.concatenate(touched)
    return rounds_rows, rounds_piv, peeled


def _solve_core(rows: OkvsRows, vals: np.ndarray, core: np.ndarray, table: np.ndarray, dense_at: int) -> None:
    """Gaussian elimination over F_2 of the 2-core's equations on its own sparse
    columns and the dense columns (PaXoS, section 5), rows as Python ints (bit j < 64:
    dense column j; bit 64 + u: the core's u-th sparse column), right-hand sides as ints
    of 64 W bits. Free unknowns are 0. Writes the solution into ``table``."""
    if core.size > _MAX_CORE:
        raise OkvsFailure(f"the 2-core has {core.size} rows (more than {_MAX_CORE}): retry under a new key")
    cols, local = np.unique(rows.pos[:, core], return_inverse=True)
    local = local.reshape(3, -1)
    dense = rows.dense[core].tolist()
    rhs_bytes = vals[core]
    pivots: dict[int, tuple[int, int]] = {}
    for i in range(core.size):
        mask = int(dense[i]) | (1 << (DENSE + int(local[0, i]))) | (1 << (DENSE + int(local[1, i])))
        mask |= 1 << (DENSE + int(local[2, i]))
        rhs = int.from_bytes(rhs_bytes[i].tobytes(), "little")
        while mask:
            low = (mask & -mask).bit_length() - 1
            if low not in pivots:
                pivots[low] = (mask, rhs)
                break
            pm, pr = pivots[low]
            mask ^= pm
            rhs ^= pr
        else:
            if rhs:
                raise OkvsFailure(f"the 2-core's {core.size} equations have no solution: retry under a new key")
    # Each stored row's lowest bit is its pivot and its other bits are higher, so
    # solving pivots from the highest down sees every other unknown already fixed.
    value: dict[int, int] = {}
    for p in sorted(pivots, reverse=True):
        mask, rhs = pivots[p]
        rest = mask & ~(1 << p)
        while rest:
            b = (rest & -rest).bit_length() - 1
            rhs ^= value.get(b, 0)
            rest &= rest - 1
        value[p] = rhs
    width = table.shape[1]
    nbytes = 8 * width
    for b, v in value.items():
        at = dense_at + b if b < DENSE else int(cols[b - DENSE])
        table[at] = np.frombuffer(v.to_bytes(nbytes, "little"), dtype=np.uint64)
