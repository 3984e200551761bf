"""SPU 0.9.5 peer figures for bench/mpc.py. Runs in .venv-spu (not ours: pins clash).

Compiles each op once, then times only the runtime's execution on every rank (the
parties run as threads over SPU's in-memory link, its own simulator's setting) and
reports the slowest rank. Prints one JSON line per op and protocol.

    .venv-spu/bin/python bench/peers/spu_mpc.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import jax.numpy as jnp
import numpy as np
import spu.libspu as libspu
import spu.utils.frontend as spu_fe
from spu import api as spu_api


def _compile(fn, args):
    names = [f"in{i}" for i in range(len(args))]
    exe, _ = spu_fe.compile(spu_fe.Kind.JAX, fn, args, {}, names, [libspu.Visibility.VIS_SECRET] * len(args),
                            lambda out: [f"out{i}" for i in range(len(out))])
    return exe


def run_op(prot: libspu.ProtocolKind, fn, args, inner: int = 1, repeats: int = 5) -> float:
    wsize = 2 if prot == libspu.ProtocolKind.SEMI2K else 3
    config = libspu.RuntimeConfig(protocol=prot, field=libspu.FieldType.FM64)
    io = spu_api.Io(wsize, config)
    exe = _compile(fn, args)
    shares = [io.make_shares(np.asarray(a), libspu.Visibility.VIS_SECRET) for a in args]
    desc = libspu.link.Desc()
    for rank in range(wsize):
        desc.add_party(f"id_{rank}", f"thread_{rank}")
    times: list[list[float]] = [[] for _ in range(wsize)]
    barrier = threading.Barrier(wsize)

    def party(rank: int) -> None:
        rt = spu_api.Runtime(libspu.link.create_mem(desc, rank), libspu.RuntimeConfig(config))
        for i, s in enumerate(shares):
            rt.set_var(exe.input_names[i], s[rank])
        rt.run(exe)  # warm-up, as ours
        for _ in range(repeats):
            barrier.wait()
            t0 = time.perf_counter()
            for _ in range(inner):
                rt.run(exe)
            times[rank].append((time.perf_counter() - t0) / inner)

    threads = [threading.Thread(target=party, args=(r,)) for r in range(wsize)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return float(np.median(np.max(np.array(times), axis=0)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--ops", default="fxp_mul,int_mul,matmul_100,matmul_1000,less_than,sigmoid")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-4, 4, a.n).astype(np.float32), rng.uniform(-4, 4, a.n).astype(np.float32)
    xi = np.arange(a.n, dtype=np.int32)
    m = {d: (rng.uniform(-1, 1, (d, d)).astype(np.float32), rng.uniform(-1, 1, (d, d)).astype(np.float32))
         for d in (100, 1000)}
    table = {
        "fxp_mul": (lambda u, v: u * v, (x, y)),
        "int_mul": (lambda u: u * u, (xi,)),
        "matmul_100": (lambda u, v: u @ v, m[100]),
        "matmul_1000": (lambda u, v: u @ v, m[1000]),
        "less_than": (lambda u, v: u < v, (x, y)),
        "sigmoid": (lambda u: 1 / (1 + jnp.exp(-u)), (x,)),
    }
    for prot_name, prot in (("semi2k", libspu.ProtocolKind.SEMI2K), ("aby3", libspu.ProtocolKind.ABY3)):
        for op in a.ops.split(","):
            fn, args = table[op]
            secs = run_op(prot, fn, args, inner=20 if op == "matmul_100" else 1)
            print(json.dumps({"peer": "spu-0.9.5", "protocol": prot_name, "op": op,
                              "transport": "in-memory threads (SPU simulator link)",
                              "n": a.n, "seconds": round(secs, 5)}), flush=True)


if __name__ == "__main__":
    main()
