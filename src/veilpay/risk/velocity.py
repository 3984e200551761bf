"""Velocity features of a payer token over sliding windows, on shares.

For each payment of a micro-batch, the count of the token's payments and the sum of
their amounts in the last hour and the last 24 hours, this payment included. A
payment at ``ts`` counts an earlier one at ``t`` when ``ts - W < t <= ts`` (an event
exactly ``W`` ms old is out), and the batch's own earlier payments of the token as
well. Sums are of share words, so each node adds its own shares and no
communication is needed: the sums stay shared. The counts are not secret from the
nodes: a node sees which payments carry the same token (``docs/risk.md``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["WINDOWS_MS", "window_features"]

WINDOWS_MS = (3_600_000, 86_400_000)


def window_features(tokens: Sequence[str], ts: Sequence[int], words: np.ndarray,
                    history: Mapping[str, Sequence[tuple[int, np.ndarray]]]) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, sums)`` for a batch: ``counts`` (n, 2) int64 and ``sums`` (n, 2, w)
    uint64, windows 1 h then 24 h. ``words`` (n, w): each payment's amount share;
    ``history``: token -> [(ts, words (w,))] of earlier batches."""
    n, w = words.shape
    counts = np.zeros((n, 2), dtype=np.int64)
    sums = np.zeros((n, 2, w), dtype=np.uint64)
    for i in range(n):
        events = [(t, v) for t, v in history.get(tokens[i], ())]
        events += [(ts[j], words[j]) for j in range(i + 1) if tokens[j] == tokens[i]]
        for k, span in enumerate(WINDOWS_MS):
            for t, v in events:
                if ts[i] - span < t <= ts[i]:
                    counts[i, k] += 1
                    sums[i, k] += v
    return counts, sums
