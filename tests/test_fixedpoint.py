from __future__ import annotations

import numpy as np
import pytest
from conftest import load_table
from hypothesis import given
from hypothesis import strategies as st

from veilpay.errors import FixedPointOverflow, InvalidInput
from veilpay.mpc import FixedPoint

F16 = FixedPoint(16)


@pytest.mark.parametrize(("value", "ring"), load_table("fixedpoint/f16.txt"))
def test_known_answers(value: str, ring: str) -> None:
    enc = F16.encode(np.array([float(value)]))
    assert format(int(enc[0]), "016x") == ring
    decoded = F16.decode(enc)[0]
    assert decoded == np.int64(np.uint64(int(ring, 16))).astype(np.float64) / 65536


def test_negative_decodes_to_its_own_value_not_one_lower() -> None:
    # A peer library decoded -17.99992 as -18.99992 (floor on the integer part).
    assert F16.decode(F16.encode([-17.99992]))[0] == pytest.approx(-17.99992, abs=2**-16)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2.0**47, -(2.0**47) - 1])
def test_out_of_range_raises(bad: float) -> None:
    with pytest.raises(FixedPointOverflow):
        F16.encode([1.0, bad])


def test_largest_values_encode() -> None:
    top = 2.0**47 - 1
    assert F16.decode(F16.encode([top, -top])).tolist() == [top, -top]


def test_frac_bits_checked() -> None:
    with pytest.raises(InvalidInput):
        FixedPoint(0)


@given(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False))
def test_roundtrip_within_half_ulp(v: float) -> None:
    for f in (16, 18):
        fp = FixedPoint(f)
        assert abs(fp.decode(fp.encode([v]))[0] - v) <= 2.0 ** -(f + 1) + 1e-9 * abs(v)
