"""Cuckoo hashing with a stash (receiver side) and the matching simple hashing (sender
side) for KKRT PSI, vectorised with numpy.

Parameters: h = 3 hash functions, m = ceil(e n) bins with
    e = (lambda + log2 n + 256) / 240,
the fit of the failure probability of 3-way cuckoo hashing without a stash
(2^-lambda = 2^-(240 e - log2 n - 256)) that cryptoTools and SecretFlow's PSI use,
taken from the experiments of Pinkas, Schneider, Weinert and Wieder (Eurocrypt 2018).
Below 4,096 ids the fit is not trusted and the table gets at least 2n + 64 bins.
A stash of s slots holds items that find no bin; an insertion that leaves more than
s items over fails (`CuckooFailure`) and the caller draws new hash functions.

Placement is parallel: every unplaced item claims the bin of its current hash
function at once; per bin the claimant listed first wins and evicts the occupant; the
losers and the evicted move to their next function. After the rounds stop shrinking
the pending set, the few items left get the classic random walk one at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from veilpay.crypto import Prg
from veilpay.crypto.ot import AesEcb
from veilpay.errors import InvalidInput, VeilpayError

__all__ = ["HASHES", "CuckooFailure", "CuckooTable", "bin_count", "hash_bins", "place"]

HASHES = 3
_SMALL = 4096
_MAX_ROUNDS = 64
_WALK_STEPS = 500


class CuckooFailure(VeilpayError):
    """More items than stash slots found no bin: draw new hash functions."""


def bin_count(n: int, stat_sec: int = 40) -> int:
    """Bins for n items at 2^-stat_sec failure probability (module docstring)."""
    if n < 0 or not 20 <= stat_sec <= 80:
        raise InvalidInput("n must be >= 0 and stat_sec within 20..80")
    if n == 0:
        return 0
    m = math.ceil((stat_sec + math.log2(n) + 256) / 240 * n)
    return max(m, 2 * n + 64) if n < _SMALL else m


def hash_bins(aes: AesEcb, items: np.ndarray, bins: int) -> np.ndarray:
    """(n, 3) int64 bin of each 16-byte item under each hash function: words of
    AES_k(x) and AES_k(x xor 1) reduced mod ``bins`` (bias below 2^-40 for bins < 2^24)."""
    if items.dtype != np.uint8 or items.ndim != 2 or items.shape[1] != 16:
        raise InvalidInput("items must be (n, 16) uint8")
    if bins < 1:
        raise InvalidInput("bins must be positive")
    pair = np.empty((len(items), 2, 16), dtype=np.uint8)
    pair[:, 0] = items
    pair[:, 1] = items
    pair[:, 1, 0] ^= 1
    words = aes(pair).view(np.uint64).reshape(len(items), 4)[:, :HASHES]
    return (words % np.uint64(bins)).astype(np.int64)


@dataclass
class CuckooTable:
    """``item[b]``: the item in bin b (-1: empty); ``fn[b]``: the hash function that put
    it there; ``stash``: items in the stash slots (-1: empty)."""

    item: np.ndarray
    fn: np.ndarray
    stash: np.ndarray


def place(bins: np.ndarray, m: int, stash: int, seed: bytes) -> CuckooTable:
    """Place n items with candidate bins ``bins`` ((n, 3) int64, each < m) into m bins
    and up to ``stash`` stash slots. ``seed`` drives the random walk (public
    randomness: the placement never leaves its owner)."""
    if bins.ndim != 2 or bins.shape[1] != HASHES or (bins.size and (bins.min() < 0 or bins.max() >= m)):
        raise InvalidInput("bins must be (n, 3) with values in [0, m)")
    if stash < 0:
        raise InvalidInput("the stash size must be >= 0")
    n = len(bins)
    table = np.full(m, -1, dtype=np.int64)
    fn = np.full(m, -1, dtype=np.int8)
    nxt = np.zeros(n, dtype=np.int64)  # the function each pending item tries next
    pending = np.arange(n, dtype=np.int64)
    stalled = 0
    for _ in range(_MAX_ROUNDS):
        if not len(pending) or stalled >= 3:
            break
        before = len(pending)
        want = bins[pending, nxt[pending]]
        order = np.argsort(want, kind="stable")
        ranked = want[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = ranked[1:] != ranked[:-1]
        winners, wbins = pending[order[first]], ranked[first]
        old, old_fn = table[wbins], fn[wbins]
        kept = old >= 0
        evicted = old[kept]
        nxt[evicted] = (old_fn[kept].astype(np.int64) + 1) % HASHES
        table[wbins] = winners
        fn[wbins] = nxt[winners]
        losers = pending[order[~first]]
        nxt[losers] = (nxt[losers] + 1) % HASHES
        pending = np.concatenate([losers, evicted])
        stalled = stalled + 1 if len(pending) >= before else 0
    stashed = _walk(bins, table, fn, nxt, sorted(pending.tolist()), seed)
    if len(stashed) > stash:
        raise CuckooFailure(f"{len(stashed)} items found no bin and the stash has {stash} slots")
    slots = np.full(stash, -1, dtype=np.int64)
    slots[: len(stashed)] = stashed
    return CuckooTable(table, fn, slots)


def _walk(bins: np.ndarray, table: np.ndarray, fn: np.ndarray, nxt: np.ndarray, pending: list[int],
          seed: bytes) -> list[int]:
    """Random-walk insertion of the few items the parallel rounds left; returns the
    items still homeless after _WALK_STEPS evictions each."""
    if not pending:
        return []
    coins = Prg(seed).bits(len(pending) * _WALK_STEPS).tolist()
    homeless: list[int] = []
    for k, start in enumerate(pending):
        x, f = start, int(nxt[start])
        for step in range(_WALK_STEPS):
            b = int(bins[x, f])
            y, y_f = int(table[b]), int(fn[b])
            table[b], fn[b] = x, f
            if y < 0:
                break
            # the evicted item moves on to one of its two other functions, at random
            x, f = y, (y_f + 1 + coins[k * _WALK_STEPS + step]) % HASHES
        else:
            homeless.append(x)
    return homeless
