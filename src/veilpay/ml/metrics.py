"""Ranking metrics for binary scores: AUC (Mann-Whitney, ties counted half), KS and
average precision (the area under the precision-recall curve, AUPRC)."""

from __future__ import annotations

import numpy as np

from veilpay.errors import InvalidInput

__all__ = ["auc", "average_precision", "ks"]


def _check(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, score = np.asarray(y).reshape(-1), np.asarray(score, dtype=np.float64).reshape(-1)
    if y.shape != score.shape:
        raise InvalidInput(f"{len(y)} labels but {len(score)} scores")
    if not np.isin(y, (0, 1)).all():
        raise InvalidInput("labels must be 0 or 1")
    if y.min(initial=1) == y.max(initial=0):
        raise InvalidInput("AUC and KS need both classes among the labels")
    return y.astype(np.int64), score


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative)."""
    y, score = _check(y, score)
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    pos = int(y.sum())
    neg = len(y) - pos
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def ks(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic: max |TPR - FPR| over all thresholds."""
    y, score = _check(y, score)
    order = np.argsort(-score, kind="mergesort")
    ys, s = y[order], score[order]
    tpr = np.cumsum(ys) / ys.sum()
    fpr = np.cumsum(1 - ys) / (1 - ys).sum()
    last = np.r_[s[1:] != s[:-1], True]  # evaluate only after a whole tie group
    return float(np.max(np.abs(tpr - fpr)[last]))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """AUPRC as scikit-learn's average_precision_score: sum over thresholds of
    (R_k - R_{k-1}) P_k, a tie group counted as one threshold."""
    y, score = _check(y, score)
    order = np.argsort(-score, kind="mergesort")
    ys, s = y[order], score[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(ys)[last].astype(np.float64)
    seen = np.flatnonzero(last) + 1.0
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tp / seen))
