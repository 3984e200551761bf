"""veilpay.host: the party processes' environment."""

from __future__ import annotations

import pytest

from veilpay.errors import InvalidInput
from veilpay.host import blas_env


def test_inherit_keeps_a_pinned_kernel() -> None:
    env = {"OPENBLAS_CORETYPE": "Haswell", "PATH": "/bin"}
    assert blas_env(env, "inherit") == env


def test_auto_lifts_the_pin_and_nothing_else() -> None:
    env = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1", "PATH": "/bin"}
    out = blas_env(env, "auto")
    assert out == {"OPENBLAS_NUM_THREADS": "1", "PATH": "/bin"}
    assert env["OPENBLAS_CORETYPE"] == "Haswell"  # the caller's mapping is not changed
    assert blas_env({"PATH": "/bin"}, "auto") == {"PATH": "/bin"}


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown BLAS choice"):
        blas_env({}, "SkylakeX")
