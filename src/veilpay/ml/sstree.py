"""Secure gradient-boosted trees in the style of SS-XGB (Fang et al. 2021): gradients,
hessians, node memberships, split choices and leaf weights all stay secret-shared.

Each data party bins its own prepared columns locally (quantile thresholds fitted on
its training rows) and shares one 0/1 indicator column per (column, threshold):
"x <= t". Stacked, they form M (n rows, C candidate splits). Per tree, with F the
shared scores so far:

    p = sigmoid(F), g = p - y, h = p (1 - p)
    for each level: S (n, nodes) 0/1 membership of the rows in the level's nodes
        GL = M^T (S * g), HL = M^T (S * h)      one premasked product each
        GR = G - GL, HR = H - HL                 G, H: column sums of S * g, S * h
        gain = GL'^2 / HL'' + GR'^2 / HR''       (scaled, below), per candidate and node
        O = one-hot of argmax over candidates    a tournament of comparisons
        left = M O^T, S' = [S * left, S - S * left]
    leaf weight = -eta G' / H'' (scaled back), F += S_leaves w

Scaling keeps fixed point in range: G' = 8 G / n lies in [-8, 8]; H'' = s (H + lambda)
with s = 400 / (n / 4 + lambda) lies in [s lambda, 400], inside the reciprocal's
domain [0.1, 500] when lambda >= n / 16000 (the default lambda is max(1, n / 8000)).
Gains are compared per node, so these positive scalings do not change the choice.
Class weights ("balanced", mean 1 over the training rows, so the ranges above hold)
multiply each row's g and h: s = w_neg + (w_pos - w_neg) y, from the shared label.

What is revealed: nothing during training. At the end each split's one-hot is
opened to the party that owns the candidate columns it points into (so a party
learns the thresholds of the splits on its own features, and that the other splits
are not its own); leaf weights go to the job's model_to parties.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from veilpay.errors import InvalidInput
from veilpay.mpc import PremaskedMatrix, SharedTensor, concatenate, nonlinear

__all__ = ["Bins", "SecureTree", "TreeParams", "fit_bins", "predict_trees", "predict_trees_plain", "train_trees",
           "train_trees_plain"]


_G_SCALE = 8.0  # G' = 8 G / n in [-8, 8]: gains keep more fraction bits, G'^2 / H'' stays below 2^10


@dataclass
class TreeParams:
    trees: int = 10
    depth: int = 3
    bins: int = 8
    learning_rate: float = 0.3
    reg_lambda: float = 0.0  # 0: max(1, n / 8000)


@dataclass
class Bins:
    """One party's split candidates: (column index, threshold) per indicator column."""

    candidates: list[tuple[int, float]]

    def indicators(self, x: np.ndarray) -> np.ndarray:
        if not self.candidates:
            return np.zeros((len(x), 0))
        cols = np.array([c for c, _ in self.candidates])
        thr = np.array([t for _, t in self.candidates])
        return (x[:, cols] <= thr).astype(np.float64)


def fit_bins(x: np.ndarray, bins: int) -> Bins:
    """Quantile thresholds per column (at most bins - 1 distinct ones; a constant column
    gives none; a 0/1 column gives the one threshold 0)."""
    if bins < 2:
        raise InvalidInput("bins must be at least 2")
    cands: list[tuple[int, float]] = []
    for j in range(x.shape[1]):
        qs = np.unique(np.quantile(x[:, j], np.arange(1, bins) / bins))
        qs = qs[qs < x[:, j].max()]  # a threshold at the maximum splits nothing off
        cands += [(j, float(t)) for t in qs]
    return Bins(cands)


def _lambda(params: TreeParams, n: int) -> float:
    lam = params.reg_lambda or max(1.0, n / 8000.0)
    if lam < n / 16000.0:
        raise InvalidInput(f"reg_lambda must be at least n / 16000 = {n / 16000.0:.3g} for the fixed-point range")
    return lam


@dataclass
class SecureTree:
    """Per level, the shared one-hot split choice of every node (nodes, C); the shared
    leaf weights (leaves, 1)."""

    splits: list[SharedTensor]
    leaves: SharedTensor


def _memberships(m: PremaskedMatrix, tree: SecureTree, ones: SharedTensor) -> SharedTensor:
    s = ones
    for onehot in tree.splits:
        left = m.rows_matmul(None, onehot.T)  # (n, nodes) 0/1: each row's side at its node's split
        sl = s * left
        s = concatenate([sl, s - sl], axis=1)
    return s


def train_trees(m_sh: SharedTensor, y: SharedTensor, params: TreeParams,
                on_tree: Callable[[int, SharedTensor], None] | None = None,
                class_weight: tuple[float, float] | None = None) -> tuple[list[SecureTree], SharedTensor]:
    """Boost ``params.trees`` trees on the shared 0/1 indicator matrix ``m_sh`` (n, C)
    and labels ``y`` (n, 1); returns the trees and the training scores F (n, 1).
    ``on_tree(i, p)`` runs before tree i with the shared predictions of the trees so
    far (progress, running loss). ``class_weight`` = (negatives', positives' weight),
    public, of mean 1 over the rows (None: unweighted)."""
    n, c = m_sh.shape
    if m_sh.frac or c == 0:
        raise InvalidInput("the indicator matrix must be a non-empty integer (0/1) sharing")
    lam = _lambda(params, n)
    s_scale = 400.0 / (n / 4.0 + lam)
    m = PremaskedMatrix(m_sh)
    ones = m_sh[:, :1] * 0 + 1  # integer memberships: products with them need no truncation
    f = y * 0.0
    trees: list[SecureTree] = []
    with y.rt.comm.scope("trees"):
        rows = None if class_weight is None else y * (class_weight[1] - class_weight[0]) + class_weight[0]
        for _ in range(params.trees):
            p = nonlinear.sigmoid(f)
            if on_tree is not None:
                on_tree(len(trees), p)
            g, h = p - y, p * (1.0 - p)
            if rows is not None:
                g, h = g * rows, h * rows
            s = ones
            splits = []
            for _level in range(params.depth):
                sg, sh = s * g, s * h
                gl = m.rows_t_matmul(None, concatenate([sg, sh], axis=1))  # (C, 2 nodes)
                nodes = s.shape[1]
                tot = concatenate([sg, sh], axis=1).sum(axis=0).reshape(1, 2 * nodes)
                gr = tot - gl
                gl_g, gl_h, gr_g, gr_h = gl[:, :nodes], gl[:, nodes:], gr[:, :nodes], gr[:, nodes:]
                num = concatenate([gl_g, gr_g], axis=1) * (_G_SCALE / n)
                den = concatenate([gl_h, gr_h], axis=1) * s_scale + lam * s_scale
                q = num * num * nonlinear.reciprocal(den, positive=True)
                gain = q[:, :nodes] + q[:, nodes:]  # (C, nodes)
                best = nonlinear.argmax(gain.T, axis=-1)  # (nodes,) integer sharing
                onehot = _onehot(best, c)
                splits.append(onehot)
                left = m.rows_matmul(None, onehot.T)
                sl = s * left
                s = concatenate([sl, s - sl], axis=1)
            gs, hs = (s * g).sum(axis=0), (s * h).sum(axis=0)
            inv = nonlinear.reciprocal(hs * s_scale + lam * s_scale, positive=True)
            leaves = (gs * (_G_SCALE / n) * inv * (-params.learning_rate * n * s_scale / _G_SCALE)).reshape(-1, 1)
            f = f + s @ leaves
            trees.append(SecureTree(splits, leaves))
    return trees, f


def _onehot(index: SharedTensor, c: int) -> SharedTensor:
    """(nodes, c) 0/1 integer sharing with a 1 at each node's secret index."""
    diff = index.reshape(-1, 1) - np.arange(c, dtype=np.int64).reshape(1, -1)  # zero exactly at the index
    signs = nonlinear.msb(concatenate([diff, -diff], axis=1))  # diff < 0, diff > 0: one comparison round
    return 1 - signs[:, :c] - signs[:, c:]


def predict_trees(m_sh: SharedTensor, trees: list[SecureTree]) -> SharedTensor:
    """Shared scores (n, 1) of the rows of a shared indicator matrix."""
    m = PremaskedMatrix(m_sh)
    f = None
    ones = m_sh[:, :1] * 0 + 1
    for tree in trees:
        out = _memberships(m, tree, ones) @ tree.leaves
        f = out if f is None else f + out
    if f is None:
        raise InvalidInput("no trees")
    return f


def train_trees_plain(m: np.ndarray, y: np.ndarray, params: TreeParams, class_weight: tuple[float, float] | None = None
                      ) -> tuple[list[tuple[list[np.ndarray], np.ndarray]], np.ndarray]:
    """The same algorithm in float64 (the twin that tests compare with): returns
    trees as (per-level chosen candidate per node, leaf weights) and training scores."""
    n, _ = m.shape
    lam = _lambda(params, n)
    f = np.zeros((n, 1))
    trees = []
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
        f = f + s @ leaves
        trees.append((splits, leaves))
    return trees, f


def predict_trees_plain(m: np.ndarray, trees: list[tuple[list[np.ndarray], np.ndarray]]) -> np.ndarray:
    f = np.zeros((len(m), 1))
    for splits, leaves in trees:
        s = np.ones((len(m), 1))
        for best in splits:
            left = m[:, best]
            s = np.concatenate([s * left, s * (1 - left)], axis=1)
        f = f + s @ leaves
    return f
