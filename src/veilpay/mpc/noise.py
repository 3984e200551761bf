"""Discrete Laplace noise for differentially private releases, sampled exactly.

Follows Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential
Privacy" (NeurIPS 2020), Algorithms 1 and 2: Bernoulli(exp(-gamma)) from Bernoulli
trials with rational probabilities, and the discrete Laplace distribution
P[x] ~ exp(-|x| / scale) on the integers from those, all in integer arithmetic. No
floating point touches a sample, so the distribution is exactly the one the privacy
proof assumes (floating-point Laplace samplers leak through the low bits, Mironov
2012).

Adding ``discrete_laplace(sensitivity / epsilon)`` to an integer-valued query whose
value changes by at most ``sensitivity`` between neighbouring data sets gives
epsilon-differential privacy (the geometric mechanism, Ghosh, Roughgarden and
Sundararajan 2009).

Randomness comes from a ``Prg`` (AES counter mode), seeded from OS entropy or, where
a release must come out the same when it is computed again, from a secret key and
the release's name."""

from __future__ import annotations

from fractions import Fraction

from veilpay.crypto.prg import Prg
from veilpay.errors import InvalidInput

__all__ = ["UniformSource", "bernoulli_exp", "discrete_laplace"]

_BUFFER = 4096


class UniformSource:
    """Uniform integers below a bound, by rejection from a PRG's 64-bit words."""

    def __init__(self, prg: Prg) -> None:
        self._prg = prg
        self._words: list[int] = []

    def _word(self) -> int:
        if not self._words:
            self._words = [int(w) for w in self._prg.uint64(_BUFFER // 8)]
        return self._words.pop()

    def randbelow(self, n: int) -> int:
        """A uniform integer in [0, n); n must be 1..2^64."""
        if not 1 <= n <= 1 << 64:
            raise InvalidInput("randbelow: the bound must be 1..2^64")
        limit = (1 << 64) - (1 << 64) % n
        while True:
            w = self._word()
            if w < limit:
                return w % n

    def bernoulli(self, p: Fraction) -> bool:
        """True with probability ``p`` (0 <= p <= 1), exactly."""
        if not 0 <= p <= 1:
            raise InvalidInput("a probability is between 0 and 1")
        return self.randbelow(p.denominator) < p.numerator


def bernoulli_exp(gamma: Fraction, src: UniformSource) -> bool:
    """True with probability exp(-gamma), gamma >= 0 rational (CKS Algorithm 1)."""
    if gamma < 0:
        raise InvalidInput("bernoulli_exp needs gamma >= 0")
    while gamma > 1:  # exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma)))
        if not bernoulli_exp(Fraction(1), src):
            return False
        gamma -= 1
    k = 1
    while src.bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def discrete_laplace(scale: Fraction, src: UniformSource) -> int:
    """One sample of the discrete Laplace distribution with P[x] ~ exp(-|x| / scale),
    for a rational ``scale`` > 0 (CKS Algorithm 2 with scale = t / s)."""
    scale = Fraction(scale)
    if scale <= 0:
        raise InvalidInput("the noise scale must be positive")
    t, s = scale.numerator, scale.denominator
    if t > 1 << 64:
        raise InvalidInput("the noise scale's numerator is too large")
    while True:
        u = src.randbelow(t)
        if not bernoulli_exp(Fraction(u, t), src):
            continue
        v = 0
        while bernoulli_exp(Fraction(1), src):
            v += 1
        y = (u + t * v) // s
        negative = src.bernoulli(Fraction(1, 2))
        if negative and y == 0:
            continue
        return -y if negative else y
