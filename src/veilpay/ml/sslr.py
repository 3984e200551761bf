"""Secure logistic regression (SS-LR): mini-batch SGD on secret-shared features and
labels; the weights stay shared until the job reveals them to the parties it names.

Per batch of B rows (X_b shared, y_b shared):

    z = X_b w + b             one secure product (X masked once for the whole run)
    p = sigma(z)              an approximation, below
    e = (p - y_b) * lr / B    one multiplication by a public constant
                              (class weights: (p - y_b) * s_b * lr / B, one more product)
    w <- w - X_b^T e - lr l2 w,  b <- b - sum(e)

Sigmoid approximations (`sigmoid` in the job):
- t1:   0.5 + z/4 (first-order Taylor; no extra rounds; SecretFlow's default).
- t3:   0.5 + z/4 - z^3/48 (third-order Taylor; two extra multiplications; it
        turns back beyond |z| = 2, so only for small weights).
- seg3: clip(0.5 + z/4, 0, 1) = relu(u) - relu(u - 1): one comparison on 2B values
        plus one multiplication; exact at 0.5, right in the tails, the default.
- exact: veilpay.mpc.nonlinear.sigmoid (exp + reciprocal; max error about 1e-4).

Class weights (w_neg, w_pos) are public numbers (the job's class_weight, or the label
party's "balanced" weights); each row's weight s = w_neg + (w_pos - w_neg) y is
computed from the shared label, so the weighting reveals nothing beyond the two
numbers. It weights the logistic loss's gradient, as scikit-learn's class_weight does.

Batches visit the training rows in an order drawn from the job's seed with an
AES-CTR PRG; the order is public and says nothing about the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from veilpay.crypto import Prg, label_digest
from veilpay.mpc import PremaskedMatrix, SharedTensor, concatenate, nonlinear
from veilpay.mpc.tensor import share

__all__ = ["LrResult", "batch_order", "sigmoid_approx", "train_lr", "train_lr_plain", "validation_split"]


def sigmoid_approx(z: SharedTensor, kind: str) -> SharedTensor:
    if kind == "t1":
        return z * 0.25 + 0.5
    if kind == "t3":
        return z * 0.25 + 0.5 - (z * z * z) * (1.0 / 48.0)
    if kind == "seg3":
        u = z * 0.25 + 0.5
        flat = u.reshape(-1)
        r = nonlinear.relu(concatenate([flat, flat - 1.0]))
        n = flat.size
        return (r[:n] - r[n:]).reshape(z.shape)
    if kind == "exact":
        return nonlinear.sigmoid(z)
    raise ValueError(f"unknown sigmoid approximation {kind!r}")


def batch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The public visiting order of ``n`` training rows in ``epoch``."""
    keys = Prg(label_digest(f"veilpay/ml/sslr/order/{seed}/{epoch}")).uint64((n,))
    return np.argsort(keys, kind="stable")


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Public positions of the fitting and the held-out validation rows (an AES-CTR
    PRG keyed from the seed; every party computes the same split)."""
    keys = Prg(label_digest(f"veilpay/ml/sslr/validation/{seed}")).uint64((n,))
    val = keys < np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))
    return np.flatnonzero(~val), np.flatnonzero(val)


@dataclass
class LrResult:
    w: SharedTensor
    b: SharedTensor
    epochs_run: int


def train_lr(
    x: SharedTensor,
    y: SharedTensor,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    decay: float = 0.0,
    l2: float = 0.0,
    sigmoid: str = "seg3",
    seed: int = 0,
    on_epoch: Callable[[int, SharedTensor, SharedTensor], None] | None = None,
    patience: int = 0,
    validation_fraction: float = 0.1,
    class_weight: tuple[float, float] | None = None,
) -> LrResult:
    """Train on shared ``x`` (n, d) and ``y`` (n, 1) of 0/1 values; returns shared
    w (d, 1) and b (1, 1). ``on_epoch(epoch, p, y_b)`` runs after each epoch with the
    last batch's predictions and labels, still shared (progress, running loss).

    ``patience`` > 0: early stopping on a held-out ``validation_fraction`` of the rows.
    After each epoch the validation Brier score, the best one so far, the best
    weights and the count of epochs without improvement are all updated in MPC; only
    the bit "stop now" (count >= patience) is revealed. The best weights are returned.

    ``class_weight`` = (negatives' weight, positives' weight), public; None: unweighted."""
    rt = x.rt
    n, d = x.shape
    owner = rt.comm.parties[0]
    w = share(rt, owner, np.zeros((d, 1)) if rt.me == owner else None, shape=(d, 1))
    b = share(rt, owner, np.zeros((1, 1)) if rt.me == owner else None, shape=(1, 1))
    fit, val = (np.arange(n), np.zeros(0, dtype=np.int64)) if not patience else validation_split(
        n, validation_fraction, seed)
    best: tuple[SharedTensor, SharedTensor, SharedTensor, SharedTensor] | None = None  # loss, w, b, stale
    epoch = 0
    with rt.comm.scope("train"):
        rows = None if class_weight is None else y * (class_weight[1] - class_weight[0]) + class_weight[0]
        xm = PremaskedMatrix(x)  # semi2k: X - A opened once, then batch-sized traffic only
        for epoch in range(epochs):
            lr = learning_rate / (1.0 + decay * epoch)
            order = fit[batch_order(len(fit), seed, epoch)]
            p = yb = y[:0]
            for lo in range(0, len(order), batch_size):
                idx = order[lo : lo + batch_size]
                yb = y[idx]
                p = sigmoid_approx(xm.rows_matmul(idx, w) + b, sigmoid)
                e = (p - yb) * (lr / len(idx)) if rows is None else ((p - yb) * rows[idx]) * (lr / len(idx))
                grad = xm.rows_t_matmul(idx, e)
                if l2:
                    grad = grad + w * (lr * l2)
                w = w - grad
                b = b - e.sum(axis=0).reshape(1, 1)
            if on_epoch is not None:
                on_epoch(epoch, p, yb)
            if patience:
                diff = sigmoid_approx(xm.rows_matmul(val, w) + b, sigmoid) - y[val]
                loss = (diff * diff).mean().reshape(1, 1)
                if best is None:
                    best = (loss, w, b, nonlinear.less(loss, loss))  # stale = 0, as an integer sharing
                else:
                    better = nonlinear.less(loss, best[0])
                    stale = (best[3] + 1) * (1 - better)
                    best = (nonlinear.where(better, loss, best[0]), nonlinear.where(better, w, best[1]),
                            nonlinear.where(better, b, best[2]), stale)
                    stop = (stale >= patience).reveal()
                    if stop is not None and int(np.asarray(stop).reshape(-1)[0]):
                        break
    if best is not None:
        return LrResult(best[1], best[2], epoch + 1)
    return LrResult(w, b, epoch + 1)


def _sigmoid_plain(z: np.ndarray, kind: str) -> np.ndarray:
    if kind == "t1":
        return 0.25 * z + 0.5
    if kind == "t3":
        return 0.25 * z + 0.5 - z**3 / 48.0
    if kind == "seg3":
        return np.clip(0.25 * z + 0.5, 0.0, 1.0)
    if kind == "exact":
        return 1.0 / (1.0 + np.exp(-z))
    raise ValueError(f"unknown sigmoid approximation {kind!r}")


def train_lr_plain(
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    decay: float = 0.0,
    l2: float = 0.0,
    sigmoid: str = "seg3",
    seed: int = 0,
    patience: int = 0,
    validation_fraction: float = 0.1,
    class_weight: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The same algorithm in float64 on plaintext (same batches, same approximation,
    same early stopping): the reference that measures what the secure version loses
    to fixed point. Returns (w, b, epochs run)."""
    n, d = x.shape
    w, b = np.zeros((d, 1)), np.zeros((1, 1))
    fit, val = (np.arange(n), np.zeros(0, dtype=np.int64)) if not patience else validation_split(
        n, validation_fraction, seed)
    best: tuple[float, np.ndarray, np.ndarray, int] | None = None
    rows = np.ones_like(y) if class_weight is None else class_weight[0] + (class_weight[1] - class_weight[0]) * y
    epoch = 0
    for epoch in range(epochs):
        lr = learning_rate / (1.0 + decay * epoch)
        order = fit[batch_order(len(fit), seed, epoch)]
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            xb, yb = x[idx], y[idx]
            e = (_sigmoid_plain(xb @ w + b, sigmoid) - yb) * rows[idx] * (lr / len(idx))
            grad = xb.T @ e + (w * (lr * l2) if l2 else 0.0)
            w = w - grad
            b = b - e.sum(axis=0).reshape(1, 1)
        if patience:
            loss = float(np.mean((_sigmoid_plain(x[val] @ w + b, sigmoid) - y[val]) ** 2))
            if best is None or loss < best[0]:
                best = (loss, w, b, 0)
            else:
                best = (best[0], best[1], best[2], best[3] + 1)
                if best[3] >= patience:
                    break
    if best is not None:
        return best[1], best[2], epoch + 1
    return w, b, epoch + 1
