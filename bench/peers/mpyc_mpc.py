"""MPyC 0.11 peer figures for bench/mpc.py. Runs in .venv-mpyc (not ours).

Start with ``-M3 -I <i>`` once per party (bench/mpc.py does that); three OS
processes over MPyC's own TCP links on loopback. MPyC is far slower per element,
so it runs on ``MPYC_BENCH_N`` elements (MPyC owns the command line) (default 20,000) and matmul 100x100 only; each line
carries elements per second so the ratio to our 1M-element runs is fair.
Party 0 prints one JSON line per op.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from mpyc.runtime import mpc


async def main(n: int) -> None:
    secfxp = mpc.SecFxp(64, 16)
    secint = mpc.SecInt(64)
    rng = np.random.default_rng(0)
    await mpc.start()
    x = mpc.input(secfxp.array(rng.uniform(-4, 4, n)), senders=0)
    y = mpc.input(secfxp.array(rng.uniform(-4, 4, n)), senders=1)
    xi = mpc.input(secint.array(np.arange(n)), senders=0)
    a = mpc.input(secfxp.array(rng.uniform(-1, 1, (100, 100))), senders=0)
    b = mpc.input(secfxp.array(rng.uniform(-1, 1, (100, 100))), senders=1)
    ops = {
        "fxp_mul": (lambda: x * y, n),
        "int_mul": (lambda: xi * xi, n),
        "matmul_100": (lambda: a @ b, 100 * 100),
    }
    for op, (fn, count) in ops.items():
        await mpc.barrier(op)
        t0 = time.perf_counter()
        z = fn()
        await mpc.output(z[:1] if op != "matmul_100" else z[:1, :1])  # forces the whole op to finish
        secs = time.perf_counter() - t0
        if mpc.pid == 0:
            print(json.dumps({"peer": "mpyc-0.11", "protocol": "shamir (3 parties, t=1)", "transport": "tcp, 3 processes",
                              "op": op, "n": count, "seconds": round(secs, 5),
                              "elements_per_second": round(count / secs, 1)}), flush=True)
    await mpc.shutdown()


if __name__ == "__main__":
    mpc.run(main(int(os.environ.get("MPYC_BENCH_N", "20000"))))
