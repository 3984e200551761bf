"""Secure gradient-boosted trees in the style of SS-XGB (Fang et al. 2021): gradients,
hessians, histograms, node memberships, gains and leaf weights stay secret-shared.

Each data party bins its own prepared columns locally (quantile thresholds fitted on
its training rows; every distinct value of a column with few) into one 0/1 indicator
column per (column, threshold): "x <= t". Side by side they form M (n rows, C
candidate splits), a ``veilpay.mpc.BitMatrix``: each block stays with its owner.
Per tree, with F the shared scores so far:

    p = sigmoid(F), g = p - y, h = p (1 - p)
    root: HG, HH = M^T g, M^T h; G, H = sums of g, h
    for each level: S (n, nodes) 0/1 membership of the rows in the level's nodes
        GR = G - HG, HR = H - HH                 per candidate and node
        gain = HG'^2 / HH'' + GR'^2 / HR''       (scaled, below)
        O = one-hot of argmax over candidates    a tournament of comparisons
        O opened to the owner of its column, which inputs left = M O^T
        S' = [S * left, S - S * left]
        the left children's HG, HH = M^T (S * left * g), ...; the right ones' by subtraction
    leaf weight = -eta G' / H'' (scaled back), clipped (below), F += S_leaves w

Scaling keeps fixed point in range: G' = 8 G / n lies in [-8, 8]; H'' = s (H + lambda)
with s = 400 / (n / 4 + lambda) lies in [s lambda, 400], inside the reciprocal's
domain [0.1, 500] when lambda >= n / 16000 (the default lambda is max(50, n / 8000)).
Gains are compared per node, so these positive scalings do not change the choice.
Class weights ("balanced", mean 1 over the training rows, so the ranges above hold)
multiply each row's g and h: s = w_neg + (w_pos - w_neg) y, from the shared label.
Comparisons run on 32-bit lanes, valid while |F| + 16 < 2^(31 - f): each leaf weight
is clipped to +-(2^(31 - f) - 32) / trees, so no F can leave that range.

What is revealed: each level's split one-hot, block by block, to the party that owns
the candidate columns it points into, as it is chosen (so a party learns the
thresholds of the splits on its own features, and that the other splits are not its
own -- what the end of training opens anyway); leaf weights go to model_to at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from veilpay.errors import InvalidInput
from veilpay.mpc import BitMatrix, SharedTensor, concatenate, mul_columns, nonlinear
from veilpay.mpc.protocol import Shares, map_shares
from veilpay.mpc.tensor import unpack_bits

__all__ = ["Bins", "SecureTree", "TreeParams", "base_score", "fit_bins", "predict_trees", "predict_trees_plain",
           "train_trees", "train_trees_plain", "tree_lambda"]


# Comparisons run on 32-bit lanes (half the traffic): every compared value stays far
# inside 2^(31 - f) = 2048 at f <= 20 -- gains below 8^2 / 0.1, candidate indices, and
# scores F, whose |F| + 16 must stay below 2048 for the sigmoid (a sum of leaf weights).
_CMP_BITS = 32
_G_SCALE = 8.0  # G' = 8 G / n in [-8, 8]: gains keep more fraction bits, G'^2 / H'' stays below 2^10


@dataclass
class TreeParams:
    """Defaults chosen so that a user who changes nothing gets within 0.005 AUC of
    scikit-learn's HistGradientBoostingClassifier() defaults (docs/ml.md, measured)."""

    trees: int = 100
    depth: int = 5
    bins: int = 16
    learning_rate: float = 0.3
    reg_lambda: float = 0.0  # 0: max(50, n / 8000)
    exact_values: int = 64  # a column with at most this many distinct values splits at each of them
    fine_bins: int = 64  # ... a continuous one without mass points gets this many, if the budget allows
    candidate_budget: int = 224  # split candidates per party that fine bins may fill (0: never)


@dataclass
class Bins:
    """One party's split candidates: (column index, threshold) per indicator column."""

    candidates: list[tuple[int, float]]

    def indicators(self, x: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        if not self.candidates:
            return np.zeros((len(x), 0), dtype=dtype)
        out: np.ndarray = np.empty((len(x), len(self.candidates)), dtype=dtype)
        for k, (col, thr) in enumerate(self.candidates):  # column by column: no (n, C) float temporaries
            out[:, k] = x[:, col] <= thr
        return out


_FLAT_TOP = 15  # a column "without mass points": its 15 most frequent values hold under 20 % of rows
_FLAT_SHARE = 0.2


def fit_bins(x: np.ndarray, bins: int, exact_values: int = 0, fine_bins: int = 0, candidate_budget: int = 0) -> Bins:
    """Split thresholds per column, from this party's training rows only (no label):
    every distinct value but the largest when the column has at most ``exact_values``
    of them (a year, a count, a 0/1 column: the one threshold 0); else quantile
    thresholds, ``bins`` of them -- or ``fine_bins`` for every continuous column
    without mass points (its 15 most frequent values hold under 20 % of the rows: a
    date, a ratio), all of them or none, when that keeps the party's candidates
    within ``candidate_budget``. Columns with mass points (amounts at round numbers,
    counts) split well at them; columns without gain from finer quantiles (measured on
    SBA's dates, docs/ml.md). A constant column gives none."""
    if bins < 2:
        raise InvalidInput("bins must be at least 2")

    def quantiles(col: np.ndarray, top: float, k: int) -> np.ndarray:
        qs = np.unique(np.quantile(col, np.arange(1, k) / k))
        return qs[qs < top]  # a threshold at the maximum splits nothing off

    per: list[np.ndarray] = []
    flat: list[int] = []
    for j in range(x.shape[1]):
        col = x[:, j]
        distinct, counts = np.unique(col, return_counts=True)
        if len(distinct) <= max(exact_values, 2):
            per.append(distinct[:-1])
            continue
        per.append(quantiles(col, distinct[-1], bins))
        if np.sort(counts)[::-1][:_FLAT_TOP].sum() < _FLAT_SHARE * len(col):
            flat.append(j)
    base = sum(len(q) for q in per)
    if flat and fine_bins > bins and base + len(flat) * (fine_bins - bins) <= candidate_budget:
        for j in flat:
            col = x[:, j]
            per[j] = quantiles(col, col.max(), fine_bins)
    return Bins([(j, float(t)) for j, qs in enumerate(per) for t in qs])


def tree_lambda(params: TreeParams, n: int) -> float:
    lam = params.reg_lambda or max(50.0, n / 8000.0)
    if lam < n / 16000.0:
        raise InvalidInput(f"[model] reg_lambda = {lam:g} is below n / 16000 = {n / 16000.0:.3g} for {n:,} training "
                           "rows, outside the trees' fixed-point range: raise it, or 0 for the default")
    return lam


@dataclass
class SecureTree:
    """Per level, the shared one-hot split choice of every node (nodes, C); the shared
    leaf weights (leaves, 1)."""

    splits: list[SharedTensor]
    leaves: SharedTensor


def _hist_frac(n: int, frac: int) -> int:
    """Fraction bits of the histogram sums: |sum of g| <= n (|g| <= 1, class weights
    of mean 1) and sum of h <= n / 4, so n 2^b <= 2^29 keeps them in Z_2^32's range."""
    return max(0, min(frac, 29 - max(1, (n - 1).bit_length())))


# Memberships: S (n, nodes) 0/1, which rows sit in each node of a level. Kept as an
# integer sharing (for products) and also as a boolean sharing packed
# 64 rows to a word: a level's left part S * left is then one AND on words plus a
# bit-to-arithmetic conversion (about 1 byte a cell) instead of a 16-byte Beaver product.
Members = tuple[SharedTensor, Shares]  # (integer sharing, packed XOR bits)


def _split(m: BitMatrix, s: Members | None, onehot: SharedTensor) -> tuple[SharedTensor, Members]:
    """(rows of each node that go left, memberships of the next level) from the
    level's memberships ``s`` (None at the root: every row) and split choices. Each
    split is opened to the owner of its column (what training reveals at the end
    anyway), which inputs that column."""
    rt, (n, _) = m.rt, m.shape
    k = onehot.shape[0]
    words = (n + 63) // 64
    left_b = m.select_bits(onehot)  # (nodes, words)
    if s is None:
        sl_b = left_b
        sr_b = rt.xor_public(left_b, np.full((k, words), np.uint64(0xFFFFFFFFFFFFFFFF)))
    else:
        sl_b = rt.and_(s[1], left_b, (k, words))
        sr_b = map_shares(np.bitwise_xor, s[1], sl_b)
    sl = SharedTensor(rt, rt.bit_to_arith(map_shares(lambda w: np.ascontiguousarray(unpack_bits(w, n).T), sl_b),
                                          (n, k)), (n, k), 0)
    s_next = concatenate([sl, 1 - sl] if s is None else [sl, s[0] - sl], axis=1)
    return sl, (s_next, map_shares(lambda a, b: np.concatenate([a, b]), sl_b, sr_b))


def _memberships(m: BitMatrix, tree: SecureTree) -> SharedTensor:
    s: Members | None = None
    for onehot in tree.splits:
        s = _split(m, s, onehot)[1]
    if s is None:
        raise InvalidInput("a tree without levels")
    return s[0]


def base_score(y: np.ndarray, class_weight: tuple[float, float] | None = None) -> float:
    """The starting score F0 = ln(p / (1 - p)), p the (class-weighted) positive rate of
    the training labels: 0 under "balanced" weights. The label party computes it and
    shares it; nobody else learns it (model_to receives it with the leaves)."""
    w_neg, w_pos = class_weight or (1.0, 1.0)
    pos = float(np.sum(y))
    p = w_pos * pos / (w_pos * pos + w_neg * (len(y) - pos))
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return float(np.log(p / (1.0 - p)))


def train_trees(mat: BitMatrix, y: SharedTensor, params: TreeParams,
                on_tree: Callable[[int, SharedTensor], None] | None = None,
                class_weight: tuple[float, float] | None = None,
                base: SharedTensor | None = None) -> tuple[list[SecureTree], SharedTensor]:
    """Boost ``params.trees`` trees on the 0/1 indicator matrix ``mat`` (n, C, each
    block held by its owner), and labels ``y``
    (n, 1); returns the trees and the training scores F (n, 1). ``on_tree(i, p)``
    runs before tree i with the shared predictions of the trees so far (progress,
    running loss). ``class_weight`` = (negatives', positives' weight), public, of
    mean 1 over the rows (None: unweighted). ``base`` (1, 1): the shared starting
    score (``base_score``), 0 when None.

    Histograms: level 0 builds the root's, every later level only its left
    children's, M^T (S_left * [g, h]); a right child's is its parent's minus its
    sibling's (histogram subtraction). Each is computed with ``_hist_frac`` fraction
    bits (semi2k: in Z_2^32); node totals keep full precision."""
    n, c = mat.shape
    if y.shape != (n, 1):
        raise InvalidInput(f"labels must be ({n}, 1), got {y.shape}")
    lam = tree_lambda(params, n)
    s_scale = 400.0 / (n / 4.0 + lam)
    hf = _hist_frac(n, y.rt.fxp.frac_bits)
    f = y * 0.0 if base is None else y * 0.0 + base
    trees: list[SecureTree] = []
    with y.rt.comm.scope("trees"):
        rows = None if class_weight is None else y * (class_weight[1] - class_weight[0]) + class_weight[0]
        for _ in range(params.trees):
            p = nonlinear.sigmoid(f, _CMP_BITS)
            if on_tree is not None:
                on_tree(len(trees), p)
            g, h = p - y, p * (1.0 - p)
            if rows is not None:
                g, h = g * rows, h * rows
            gh = concatenate([g, h], axis=1)
            hist = mat.t_matmul(gh, hf)  # (C, 2 nodes): per node, sums over rows with x <= t
            tot = gh.sum(axis=0).reshape(1, 2)  # (1, 2 nodes): per node, sums over all its rows
            s: Members | None = None
            splits = []
            for level in range(params.depth):
                nodes = 1 << level
                gr = tot - hist
                num = concatenate([hist[:, :nodes], gr[:, :nodes]], axis=1) * (_G_SCALE / n)
                den = concatenate([hist[:, nodes:], gr[:, nodes:]], axis=1) * s_scale + lam * s_scale
                q = num * num * nonlinear.reciprocal(den, positive=True)
                gain = q[:, :nodes] + q[:, nodes:]  # (C, nodes)
                best = nonlinear.argmax(gain.T, axis=-1, bits=_CMP_BITS)  # (nodes,) integer sharing
                onehot = _onehot(best, c)
                splits.append(onehot)
                sl, s = _split(mat, s, onehot)
                if level + 1 < params.depth:
                    lgh = mul_columns(sl, gh)  # (n, 2 nodes): [sl * g, sl * h]
                    lt = lgh.sum(axis=0).reshape(1, 2 * nodes)
                    lh = mat.t_matmul(lgh, hf)
                    del lgh
                    hist = concatenate([lh[:, :nodes], hist[:, :nodes] - lh[:, :nodes],
                                        lh[:, nodes:], hist[:, nodes:] - lh[:, nodes:]], axis=1)
                else:  # the leaves need only the sums: one (nodes, n) @ (n, 2) product
                    lt = (sl.T @ gh).T.reshape(1, 2 * nodes)
                del sl
                tot = concatenate([lt[:, :nodes], tot[:, :nodes] - lt[:, :nodes],
                                   lt[:, nodes:], tot[:, nodes:] - lt[:, nodes:]], axis=1)
            if s is None:
                raise InvalidInput("trees need depth >= 1")
            leaves_n = s[0].shape[1]
            gs, hs = tot[:, :leaves_n], tot[:, leaves_n:]
            inv = nonlinear.reciprocal(hs * s_scale + lam * s_scale, positive=True)
            leaves = (gs * (_G_SCALE / n) * inv * (-params.learning_rate * n * s_scale / _G_SCALE)).reshape(-1, 1)
            leaves = _clip(leaves, _leaf_bound(params, y.rt.fxp.frac_bits))
            f = f + s[0] @ leaves
            trees.append(SecureTree(splits, leaves))
    return trees, f


def _leaf_bound(params: TreeParams, frac: int) -> float:
    """The largest |leaf weight| that keeps every |F| + 16 below 2^(31 - frac), the
    range of the 32-bit comparisons, whatever the rows' paths."""
    return (2.0 ** (31 - frac) - 32.0) / params.trees


def _clip(w: SharedTensor, bound: float) -> SharedTensor:
    """w clipped to [-bound, bound] with 64-bit comparisons (a leaf weight can be far
    outside the 32-bit lanes' range before it is clipped)."""
    signs = nonlinear.msb(concatenate([w - bound, -w - bound], axis=0))  # w < bound, w > -bound
    k = w.shape[0]
    above, below = 1 - signs[:k], 1 - signs[k:]
    return w + above * (bound - w) + below * (-bound - w)


def _onehot(index: SharedTensor, c: int) -> SharedTensor:
    """(nodes, c) 0/1 integer sharing with a 1 at each node's secret index."""
    diff = index.reshape(-1, 1) - np.arange(c, dtype=np.int64).reshape(1, -1)  # zero exactly at the index
    signs = nonlinear.msb(concatenate([diff, -diff], axis=1), _CMP_BITS)  # diff < 0, diff > 0: one comparison
    return 1 - signs[:, :c] - signs[:, c:]


def predict_trees(mat: BitMatrix, trees: list[SecureTree], base: SharedTensor | None = None) -> SharedTensor:
    """Shared scores (n, 1) of the rows of an indicator matrix, from the starting
    score ``base`` (1, 1; None: 0)."""
    if not trees:
        raise InvalidInput("no trees")
    f = None
    for tree in trees:
        out = _memberships(mat, tree) @ tree.leaves
        f = out if f is None else f + out
    if f is None:
        raise InvalidInput("no trees")
    return f if base is None else f + base


def train_trees_plain(m: np.ndarray, y: np.ndarray, params: TreeParams, class_weight: tuple[float, float] | None = None
                      ) -> tuple[list[tuple[list[np.ndarray], np.ndarray]], np.ndarray]:
    """The same algorithm in float64 (the twin that tests compare with): returns
    trees as (per-level chosen candidate per node, leaf weights), the first one the
    constant starting score (no levels), and training scores."""
    n, _ = m.shape
    m = np.asarray(m, dtype=np.float64)  # once, not a uint8 -> float copy per product
    lam = tree_lambda(params, n)
    f0 = base_score(y, class_weight)
    f = np.full((n, 1), f0)
    trees: list[tuple[list[np.ndarray], np.ndarray]] = [([], np.array([[f0]]))]
    rows = np.ones_like(y) if class_weight is None else class_weight[0] + (class_weight[1] - class_weight[0]) * y
    for _ in range(params.trees):
        p = 1.0 / (1.0 + np.exp(-f))
        g, h = (p - y) * rows, p * (1.0 - p) * rows
        s = np.ones((n, 1))
        splits = []
        for _level in range(params.depth):
            gl, hl = m.T @ (s * g), m.T @ (s * h)
            gt, ht = (s * g).sum(axis=0), (s * h).sum(axis=0)
            gain = gl**2 / (hl + lam) + (gt - gl) ** 2 / (ht - hl + lam)
            best = np.argmax(gain, axis=0)
            splits.append(best)
            left = m[:, best]
            s = np.concatenate([s * left, s * (1 - left)], axis=1)
        leaves = (-params.learning_rate * (s * g).sum(axis=0) / ((s * h).sum(axis=0) + lam)).reshape(-1, 1)
        leaves = np.clip(leaves, -_leaf_bound(params, 20), _leaf_bound(params, 20))
        f = f + s @ leaves
        trees.append((splits, leaves))
    return trees, f


def predict_trees_plain(m: np.ndarray, trees: list[tuple[list[np.ndarray], np.ndarray]]) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f = np.zeros((len(m), 1))
    for splits, leaves in trees:
        s = np.ones((len(m), 1))
        for best in splits:
            left = m[:, best]
            s = np.concatenate([s * left, s * (1 - left)], axis=1)
        f = f + s @ leaves
    return f
