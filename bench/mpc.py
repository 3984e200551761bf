"""MPC benchmark: prints one JSON line per figure.

All parties run as separate OS processes over TCP + mutual TLS 1.3 on loopback
(`veilpay node`), dealer triples generated inside the timed region; the same program
also runs in-memory (threads) for the core ops. Plaintext numpy timings sit beside.
Peers (SPU, MPyC) run if `make bench-peers` made their environments; otherwise a
line says they were not measured.

    python bench/mpc.py [--n 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from veilpay.mpc import Protocol, nonlinear, run_local, share


def _sync(rt: Protocol) -> None:
    z = np.zeros(1, dtype=np.uint64)
    rt.comm.exchange("sync", {p: [z] for p in rt.comm.peers}, {p: 1 for p in rt.comm.peers})


def bench_program(rt: Protocol, n: int = 1_000_000, ops: list[str] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed + (rt.comm.parties.index(rt.me)))
    mine = rng.uniform(-4, 4, size=n) if rt.me in rt.comm.parties[:2] else None
    x = share(rt, rt.comm.parties[0], mine if rt.me == rt.comm.parties[0] else None, shape=(n,))
    y = share(rt, rt.comm.parties[1], mine if rt.me == rt.comm.parties[1] else None, shape=(n,))
    xi = share(rt, rt.comm.parties[0], np.arange(n) if rt.me == rt.comm.parties[0] else None, shape=(n,), fixed=False)
    mats = {}
    for d in (100, 1000):
        own = rng.uniform(-1, 1, size=(d, d))
        mats[d] = (share(rt, rt.comm.parties[0], own if rt.me == rt.comm.parties[0] else None, shape=(d, d)),
                   share(rt, rt.comm.parties[1], own if rt.me == rt.comm.parties[1] else None, shape=(d, d)))
    table = {
        "fxp_mul": lambda: x * y,
        "int_mul": lambda: xi * xi,
        "matmul_100": lambda: mats[100][0] @ mats[100][1],
        "matmul_1000": lambda: mats[1000][0] @ mats[1000][1],
        "less_than": lambda: x < y,
        "sigmoid": lambda: nonlinear.sigmoid(x),
    }
    out = []
    for name in ops or list(table):
        repeats = 20 if name == "matmul_100" else 1
        _sync(rt)
        rt.comm.reset_stats()
        t0 = time.perf_counter()
        for _ in range(repeats):
            table[name]()
        _sync(rt)
        secs = (time.perf_counter() - t0) / repeats
        total = rt.comm.total()
        sync = rt.comm.stats()["sync"]
        out.append({
            "op": name, "seconds": round(secs, 5), "rounds": (total.rounds - sync.rounds) // repeats,
            "bytes_sent_this_party": (total.bytes_sent - sync.bytes_sent) // repeats,
        })
    return out


def plaintext_seconds(op: str, n: int) -> float:
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-4, 4, n), rng.uniform(-4, 4, n)
    ai = np.arange(n)
    m = {d: (rng.uniform(-1, 1, (d, d)), rng.uniform(-1, 1, (d, d))) for d in (100, 1000)}
    fns = {
        "fxp_mul": lambda: a * b, "int_mul": lambda: ai * ai,
        "matmul_100": lambda: m[100][0] @ m[100][1], "matmul_1000": lambda: m[1000][0] @ m[1000][1],
        "less_than": lambda: a < b, "sigmoid": lambda: 1 / (1 + np.exp(-a)),
    }
    fns[op]()
    t0 = time.perf_counter()
    for _ in range(5):
        fns[op]()
    return (time.perf_counter() - t0) / 5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="core ops only (no less_than/sigmoid)")
    a = ap.parse_args()
    from veilpay.cli.demo import _free_port_base
    from veilpay.cli.launch import launch
    from veilpay.net import provision_network

    ops = ["fxp_mul", "int_mul", "matmul_100", "matmul_1000"] + ([] if a.quick else ["less_than", "sigmoid"])
    plain = {op: plaintext_seconds(op, a.n) for op in ops}
    work = Path(tempfile.mkdtemp(prefix="veilpay-bench-"))
    try:
        for protocol in ("semi2k", "aby3"):
            net = provision_network(work / protocol, ["p0", "p1", "p2"], base_port=_free_port_base())
            args = {p: {"n": a.n, "ops": ops} for p in ("p0", "p1", "p2")}
            res = launch(str(net), "bench.mpc:bench_program", protocol, args, timeout=1800,
                         extra_env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
            for i, fig in enumerate(res["p0"]):
                slowest = max(res[p][i]["seconds"] for p in res)
                print(json.dumps({
                    "bench": "mpc", "protocol": protocol, "transport": "tcp+tls, 3 processes", "n": a.n, **fig,
                    "seconds": slowest, "bytes_sent_all": sum(res[p][i]["bytes_sent_this_party"] for p in res),
                    "plaintext_seconds": round(plain[fig["op"]], 6),
                    "slowdown_vs_plaintext": round(slowest / max(plain[fig["op"]], 1e-9), 1),
                }), flush=True)
            mem = run_local(bench_program, protocol, kwargs={p: {"n": a.n, "ops": ops[:4]} for p in ("p0", "p1", "p2")},
                            timeout=600)
            for fig in mem["p0"]:
                print(json.dumps({"bench": "mpc", "protocol": protocol, "transport": "in-memory threads",
                                  "n": a.n, **fig}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for peer, venv in (("spu-0.9.5", ".venv-spu"), ("mpyc-0.11", ".venv-mpyc")):
        if not Path(venv).exists():
            print(json.dumps({"bench": "mpc", "peer": peer, "measured": False,
                              "why": f"{venv} missing: run `make bench-peers`"}), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
