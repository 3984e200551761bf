"""Discrete Laplace noise (veilpay.mpc.noise): exact rational Bernoulli trials, the
sampler's distribution against its probability mass function, and reproducibility
from a seed (a release computed again draws the same noise)."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilpay.crypto.prg import Prg
from veilpay.errors import InvalidInput
from veilpay.mpc.noise import UniformSource, bernoulli_exp, discrete_laplace


def _src(seed: int = 1) -> UniformSource:
    return UniformSource(Prg(seed.to_bytes(32, "big")))


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=2**64))
def test_randbelow_stays_below(n: int) -> None:
    src = _src(n % 1000)
    assert all(0 <= src.randbelow(n) < n for _ in range(20))


def test_uniform_source_refuses_bad_bounds() -> None:
    with pytest.raises(InvalidInput):
        _src().randbelow(0)
    with pytest.raises(InvalidInput):
        _src().bernoulli(Fraction(3, 2))
    with pytest.raises(InvalidInput):
        discrete_laplace(Fraction(0), _src())


@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(5, 2)])
def test_bernoulli_exp_frequency(gamma: Fraction) -> None:
    src, n = _src(7), 20_000
    hits = sum(bernoulli_exp(gamma, src) for _ in range(n))
    p = math.exp(-float(gamma))
    assert abs(hits / n - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(3), Fraction(20, 3)])
def test_discrete_laplace_matches_its_pmf(scale: Fraction) -> None:
    """P[x] = (1 - q) / (1 + q) * q^|x| with q = exp(-1/scale): a chi-square test over
    the central values, and the mean close to 0."""
    src, n = _src(11), 20_000
    draws = [discrete_laplace(scale, src) for _ in range(n)]
    q = math.exp(-1 / float(scale))
    counts = Counter(draws)
    chi2, cells = 0.0, 0
    for x in range(-int(3 * scale) - 1, int(3 * scale) + 2):
        expect = n * (1 - q) / (1 + q) * q ** abs(x)
        if expect >= 20:
            chi2 += (counts.get(x, 0) - expect) ** 2 / expect
            cells += 1
    assert cells >= 3
    assert chi2 < cells + 6 * math.sqrt(2 * cells)  # far inside the 1e-6 tail of chi2(cells - 1)
    var = 2 * q / (1 - q) ** 2
    assert abs(sum(draws) / n) < 6 * math.sqrt(var / n)


def test_same_seed_same_noise() -> None:
    def draws(seed: int) -> list[int]:
        src = _src(seed)
        return [discrete_laplace(Fraction(1000), src) for _ in range(5)]

    assert draws(5) == draws(5)
    assert draws(6) != draws(5)
