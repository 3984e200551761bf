"""Failures of RR22's OKVS (veilpay.psi.okvs) measured at small n, where a 2-core is
likeliest: ``--trials`` encodes of n random items under fresh keys, for each n; prints
one JSON line per n with the failures, how many encodes left a nonempty 2-core, the
largest core and the most peeling rounds seen. docs/psi.md quotes the figures.

    python bench/okvs_failure.py [--sizes 1,2,3,10,100,1000] [--trials 5000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from veilpay.errors import OkvsFailure
from veilpay.psi.okvs import Okvs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,2,3,10,100,1000")
    ap.add_argument("--trials", type=int, default=5000)
    args = ap.parse_args()
    rng = np.random.default_rng(2022)
    for n in (int(x) for x in args.sizes.split(",")):
        t0 = time.perf_counter()
        failures = cored = biggest = rounds = 0
        for _ in range(args.trials):
            store = Okvs(n, rng.bytes(16))
            items = rng.integers(0, 256, (n, 16), dtype=np.uint8)
            values = rng.integers(0, 256, (n, 16), dtype=np.uint8)
            rows = store.rows(items)
            try:
                table = store.encode(rows, values)
            except OkvsFailure:
                failures += 1
                continue
            if not np.array_equal(store.decode(table, rows), values):
                raise SystemExit(f"n={n}: decode(encode) differs from the values")
            cored += store.last_core > 0
            biggest = max(biggest, store.last_core)
            rounds = max(rounds, store.last_rounds)
        print(json.dumps({"bench": "okvs-failure", "n": n, "trials": args.trials, "failures": failures,
                          "nonempty_core": cored, "largest_core": biggest, "most_rounds": rounds,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
