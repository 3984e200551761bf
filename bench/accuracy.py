"""Measured error of the non-linear functions: a dense sweep of each stated input
range under both protocols (in-memory parties, f = 16), against float64 numpy.
Prints one JSON line per function and protocol; ``--markdown`` also prints the table
that docs/mpc.md carries.

    python bench/accuracy.py [--points 20000] [--markdown]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from veilpay.mpc import Protocol, nonlinear, run_local, share

# name: (secure function, plaintext, low, high, log-spaced grid, error kind)
SWEEPS: dict[str, tuple[Callable[[Any], Any], Callable[[np.ndarray], np.ndarray], float, float, bool, str]] = {
    "less_than_0": (lambda x: x < 0.0, lambda x: (x < 0).astype(float), -1000.0, 1000.0, False, "abs"),
    "relu": (nonlinear.relu, lambda x: np.maximum(x, 0), -1000.0, 1000.0, False, "abs"),
    "exp": (nonlinear.exp, np.exp, -20.0, 10.0, False, "rel"),
    "sigmoid": (nonlinear.sigmoid, lambda x: 1 / (1 + np.exp(-x)), -40.0, 40.0, False, "abs"),
    "reciprocal": (nonlinear.reciprocal, lambda x: 1 / x, 0.1, 500.0, True, "rel"),
    "log": (nonlinear.log, np.log, 0.05, 80.0, True, "abs"),
    "inv_sqrt": (nonlinear.inv_sqrt, lambda x: 1 / np.sqrt(x), 0.1, 100.0, True, "rel"),
    "sqrt": (nonlinear.sqrt, np.sqrt, 0.1, 100.0, True, "rel"),
}


REL_FLOOR = 0.01


def grid(lo: float, hi: float, logspace: bool, points: int) -> np.ndarray:
    return np.geomspace(lo, hi, points) if logspace else np.linspace(lo, hi, points)


def sweep_program(rt: Protocol, points: int = 20000) -> dict[str, float]:
    out = {}
    for name, (fn, _, lo, hi, logspace, _) in SWEEPS.items():
        xs = grid(lo, hi, logspace, points)
        x = share(rt, "p0", xs if rt.me == "p0" else None, shape=xs.shape)
        got = fn(x).reveal(to=["p0"])
        if rt.me == "p0":
            out[name] = got.tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    rows = []
    for protocol in ("semi2k", "aby3"):
        res = run_local(sweep_program, protocol, kwargs={p: {"points": a.points} for p in ("p0", "p1", "p2")}, timeout=900)
        for name, (_, plain, lo, hi, logspace, kind) in SWEEPS.items():
            xs = grid(lo, hi, logspace, a.points)
            want = plain(xs)
            got = np.asarray(res["p0"][name])
            err = np.abs(got - want)
            big = np.abs(want) >= REL_FLOOR
            worst = int(np.argmax(np.where(big, err / np.maximum(np.abs(want), REL_FLOOR), 0) if kind == "rel" else err))
            fig = {
                "bench": "accuracy", "function": name, "protocol": protocol, "low": lo, "high": hi, "points": a.points,
                "max_abs_error": float(err.max()),
                # relative error only where the value is well above the 2^-16 resolution
                "max_rel_error": float((err / np.abs(want))[np.abs(want) >= REL_FLOOR].max()) if kind == "rel" else None,
                "worst_x": float(xs[worst]),
            }
            rows.append(fig)
            print(json.dumps(fig), flush=True)
    if a.markdown:
        print("\n| function | input range | semi2k max error | aby3 max error |\n|---|---|---|---|")
        for name in SWEEPS:
            cells = []
            for protocol in ("semi2k", "aby3"):
                r = next(r for r in rows if r["function"] == name and r["protocol"] == protocol)
                rel = f", {r['max_rel_error']:.1e} rel" if r["max_rel_error"] is not None else ""
                cells.append(f"{r['max_abs_error']:.1e} abs{rel}")
            lo, hi = SWEEPS[name][2], SWEEPS[name][3]
            print(f"| {name} | [{lo:g}, {hi:g}] | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
