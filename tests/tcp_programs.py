"""Programs the TCP tests launch in separate processes (importable by module path)."""

from __future__ import annotations

import os
from typing import Any

from veilpay.mpc import Protocol, nonlinear, share


def mul_and_compare(rt: Protocol, x: list[float] | None = None) -> dict[str, Any]:
    a = share(rt, "p0", x, shape=(4,))
    b = share(rt, "p1", x, shape=(4,))
    return {"mul": (a * b).reveal().tolist(), "lt": (a < b).reveal().tolist(),  # type: ignore[union-attr]
            "relu": nonlinear.relu(a - b).reveal().tolist()}  # type: ignore[union-attr]


def die_midway(rt: Protocol, die: bool = False) -> dict[str, Any]:
    """Every party multiplies once; a party told to die then exits without a word."""
    a = share(rt, "p0", [1.0, 2.0] if rt.me == "p0" else None, shape=(2,))
    b = a * a
    if die:
        os._exit(3)
    return {"second": (b * a).reveal().tolist()}  # type: ignore[union-attr]
