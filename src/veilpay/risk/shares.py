"""Vectors of ring words split between the privacy nodes, and summed back at a node:
the features of a payment, the parts of a model's weights.

Formats are those of amounts (``docs/nodes.md``): semi2k, ``x = s0 + s1`` with node
P0 holding ``s0`` and P1 ``s1``; aby3, ``x = c0 + c1 + c2`` with node Pi holding
``(c_i, c_(i+1))``. A node receives a (k, words) uint64 array. Randomness is the OS's
(``secrets``)."""

from __future__ import annotations

import secrets

import numpy as np

from veilpay.errors import InvalidInput

__all__ = ["encode_fixed", "random_words", "split_words", "words_per_node"]

_MAX_ABS = float(1 << 30)  # features are standardised: |x| < 2^30 keeps x * w far from the ring's edge


def words_per_node(protocol: str) -> int:
    if protocol not in ("semi2k", "aby3"):
        raise InvalidInput(f"protocol {protocol!r}: semi2k or aby3")
    return 1 if protocol == "semi2k" else 2


def random_words(k: int) -> np.ndarray:
    return np.frombuffer(secrets.token_bytes(8 * k), dtype=np.uint64).copy()


def split_words(values: np.ndarray, protocol: str) -> list[np.ndarray]:
    """Fresh shares of ``values`` (uint64, (k,)) for each share-holding node, in order."""
    if values.dtype != np.uint64 or values.ndim != 1:
        raise InvalidInput("split_words: a (k,) uint64 vector")
    k = values.shape[0]
    if words_per_node(protocol) == 1:
        r = random_words(k)
        return [r.reshape(k, 1), (values - r).reshape(k, 1)]
    c0, c1 = random_words(k), random_words(k)
    c = [c0, c1, values - c0 - c1]
    return [np.stack([c[i], c[(i + 1) % 3]], axis=1) for i in range(3)]


def encode_fixed(x: np.ndarray, frac: int) -> np.ndarray:
    """Fixed-point ring words of finite floats (round to nearest); InvalidInput for a
    non-finite value or one too large for a feature."""
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all() or (np.abs(x) >= _MAX_ABS).any():
        raise InvalidInput(f"features are finite and below {_MAX_ABS:.0f} in magnitude")
    return np.rint(x * float(1 << frac)).astype(np.int64).view(np.uint64)
