"""Two PSI parties as threads over in-memory channels, random set pairs with a known
overlap, and the check of a run against plain set intersection: shared by the
protocol tests (KKRT, RR22)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
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


def sender_told_only_its_common_items(monkeypatch: pytest.MonkeyPatch, module: ModuleType,
                                      psi: Callable[..., Any], label: str, **kw: Any) -> None:
    """With reveal='both', what the sender receives after its values (message
    ``label``) is exactly the sorted items of its own common ids, for two receivers with
    the same intersection and different other ids: a function of the intersection and
    the session's public keys alone. ``module``'s id_prf is recorded to know the items."""
    made: dict[tuple[bytes, ...], np.ndarray] = {}
    real_prf = module.id_prf

    def recording_prf(key: bytes, ids: Any) -> np.ndarray:
        out = real_prf(key, ids)
        made[tuple(ids)] = out
        return out

    monkeypatch.setattr(module, "id_prf", recording_prf)
    common = [f"c{i}".encode() for i in range(40)]
    y = common + [f"y{i}".encode() for i in range(200)]
    for other in (range(0, 300), range(1000, 1700)):
        x = [f"x{i}".encode() for i in other] + common
        seen: list[np.ndarray] = []

        def sender(c: Communicator, seen: list[np.ndarray] = seen) -> Any:
            real = c.exchange

            def spy(lab: str, send: Any = None, recv: Any = None) -> Any:
                got = real(lab, send, recv)
                if lab == label:
                    seen.append(got["r"][0])
                return got

            c.exchange = spy  # type: ignore[method-assign]
            return psi(c, "r", "sender", y, reveal="both", **kw)

        r, s = two_party(lambda c, x=x: psi(c, "s", "receiver", x, reveal="both", **kw), sender)
        check(x, y, r, s)
        mine = made[tuple(y)][np.asarray(s.indices)]
        w = np.ascontiguousarray(mine).view("<u8").reshape(-1, 2)
        assert np.array_equal(seen[0], mine[np.lexsort((w[:, 1], w[:, 0]))])
