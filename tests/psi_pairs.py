"""Two PSI parties as threads over in-memory channels, random set pairs with a known
overlap, and the check of a run against plain set intersection: shared by the
protocol tests (KKRT, RR22)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from parties import run_threads

from veilpay.net import Communicator


def two_party(fn_r: Callable[[Communicator], Any], fn_s: Callable[[Communicator], Any],
              timeout: float = 20) -> tuple[Any, Any]:
    out = run_threads({"r": fn_r, "s": fn_s}, timeout=timeout, join=120)
    return out["r"], out["s"]


def sets(nx: int, ny: int, common: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(seed)
    pool = [f"cust-{v}".encode() for v in rng.choice(10**9, size=nx + ny, replace=False)]
    x = pool[:nx]
    y = x[:common] + pool[nx : nx + ny - common]
    rng.shuffle(y)
    return x, y


def check(x: list[bytes], y: list[bytes], r: Any, s: Any) -> None:
    """R found exactly its common ids (in its order) and S, told them, exactly its own."""
    for got in (r, s):
        if isinstance(got, BaseException):
            raise got
    ys = set(y)
    want = [i for i, v in enumerate(x) if v in ys]
    assert r.indices.tolist() == want and r.size == len(want) and r.peer_size == len(y)
    assert sorted(y[i] for i in s.indices) == sorted(x[i] for i in want)
