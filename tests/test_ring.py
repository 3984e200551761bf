"""ring_matmul is exact mod 2^64: compared with numpy's (BLAS-less) uint64 matmul."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from veilpay.mpc.ring import ring_matmul, split_limbs

EDGES = np.array([0, 1, 2**21 - 1, 2**21, 2**22 - 1, 2**22, 2**41, 2**42 - 1, 2**43, 2**44 - 1, 2**62,
                  2**63 - 1, 2**63, 2**64 - 2**21, 2**64 - 2**21 - 1, 2**64 - 2**41 - 2**21, 2**64 - 1],
                 dtype=np.uint64)
# Every limb at its most negative value: l0 = -2^21, l1 = -2^19, l2 = -2^21.
ALL_MIN = np.uint64((-(2**21) - 2**22 * 2**19 - 2**42 * 2**21) % 2**64)


@pytest.mark.parametrize(("m", "k", "n"), [(70, 70, 70), (3, 1500, 80), (128, 513, 64), (100, 100, 100), (65, 2, 4000),
                                            (40, 1024, 40), (40, 1025, 40), (20, 2049, 30)])
def test_ring_matmul_matches_uint64(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(m * k * n)
    a = rng.integers(0, 2**64, size=(m, k), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, size=(k, n), dtype=np.uint64, endpoint=False)
    np.testing.assert_array_equal(ring_matmul(a, b), a @ b)


def test_ring_matmul_worst_case_limbs() -> None:
    # Every operand entry an edge value: the largest limb magnitudes at the longest k.
    rng = np.random.default_rng(7)
    a = rng.choice(EDGES, size=(80, 1100))
    b = rng.choice(EDGES, size=(1100, 70))
    np.testing.assert_array_equal(ring_matmul(a, b), a @ b)
    assert [float(v[0]) for v in split_limbs(np.array([ALL_MIN]))] == [-(2.0**21), -(2.0**19), -(2.0**21)]
    full = np.full((66, 1024), ALL_MIN, dtype=np.uint64)  # the GEMM bounds reach 2^53 here
    np.testing.assert_array_equal(ring_matmul(full, full.T.copy()), full @ full.T)
    mixed = full.copy()
    mixed[:, ::2] = np.uint64(2**64 - 1)
    np.testing.assert_array_equal(ring_matmul(mixed, full.T.copy()), mixed @ full.T)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint64, st.integers(1, 300), elements=st.integers(0, 2**64 - 1)))
def test_split_limbs_identity(a: np.ndarray) -> None:
    l0, l1, l2 = split_limbs(a)
    assert np.all((l0 >= -(2**21)) & (l0 < 2**21)) and np.all((l1 >= -(2**19)) & (l1 < 2**19))
    assert np.all((l2 >= -(2**21)) & (l2 < 2**21))
    back = l0.astype(np.int64).view(np.uint64) + (l1.astype(np.int64).view(np.uint64) << np.uint64(22)) \
        + (l2.astype(np.int64).view(np.uint64) << np.uint64(42))
    np.testing.assert_array_equal(back, a)


def test_ring_matmul_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="needs"):
        ring_matmul(np.zeros((2, 3), np.uint64), np.zeros((4, 2), np.uint64))
