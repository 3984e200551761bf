"""The failure bound of RR22's OKVS (docs/psi.md, "RR22's OKVS"), computed: for each n,
log2 of sum_{j=2}^{J} E[stopping sets of j rows] * min(1, 2^(j - d)), J = min(n, --jmax).
A stopping set (every column it touches holds two or more of its rows) contains the
2-core whenever the core is nonempty, and a core of j rows fails only if its j random
d-bit dense rows are dependent (probability <= 2^(j - d)). Per segment,
Pr[j uniform draws into seg slots leave no slot drawn exactly once]
= j!/seg^j [x^j] (e^x - x)^seg <= j! (e^t - t)^seg / (t seg)^j for every t > 0.

    python bench/okvs_bound.py [--sizes 2,10,...] [--jmax 64]
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from veilpay.psi import okvs

_T = np.exp(np.linspace(-12, 6, 4000))
_LOG_F = np.log(np.expm1(_T) - _T + 1.0)
_LOG_T = np.log(_T)


def _log_choose(a: float, b: float) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def log2_stopping_sets(n: int, seg: int, j: int) -> float:
    lp = math.lgamma(j + 1) - j * math.log(seg) + float(np.min(seg * _LOG_F - j * _LOG_T))
    return (_log_choose(n, j) + 3 * min(lp, 0.0)) / math.log(2)


def bound(n: int, jmax: int) -> float:
    seg = (okvs.okvs_size(n) - okvs.DENSE) // 3
    total = sum(2.0 ** (min(0.0, log2_stopping_sets(n, seg, j)) + min(0, j - okvs.DENSE))
                for j in range(2, min(n, jmax) + 1))
    return math.log2(total) if total else -math.inf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2,10,40,100,400,1024,1025,2000,10000,100000,1000000,1073741824")
    ap.add_argument("--jmax", type=int, default=1100)
    args = ap.parse_args()
    for n in (int(x) for x in args.sizes.split(",")):
        print(json.dumps({"bench": "okvs-bound", "n": n, "jmax": min(n, args.jmax),
                          "log2_bound": round(bound(n, args.jmax), 1)}), flush=True)


if __name__ == "__main__":
    main()
