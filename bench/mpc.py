"""MPC benchmark: prints one JSON line per figure.

All parties run as separate OS processes over TCP + mutual TLS 1.3 on loopback
(`veilpay node`), dealer triples generated inside the timed region; the same program
also runs in-memory (threads) for the core ops. Plaintext numpy timings sit beside.
Peers run from their own environments if `make bench-peers` made them (otherwise a
line says they were not measured): SPU 0.9.5 SEMI2K/ABY3 through its simulator link
(bench/peers/spu_mpc.py) and MPyC 0.11 as 3 processes (bench/peers/mpyc_mpc.py),
each with veilpay's TCP+TLS figure and the speed-up beside it.

By default the party processes run OpenBLAS's kernels for this CPU even where the
environment pins OPENBLAS_CORETYPE (`--blas inherit` keeps the pin); every line
names the choice in `blas_coretype`. The ring product is exact whatever the kernel.

    python bench/mpc.py [--n 1000000] [--quick] [--ops fxp_mul,matmul_1000] [--no-peers]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from veilpay.host import keep_freed_memory


def _blas_arg(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--blas" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--blas="):
            return arg.split("=", 1)[1]
    return "auto"


if __name__ == "__main__" and _blas_arg(sys.argv) == "auto":
    # The in-memory runs use this process's BLAS, which reads the pin at numpy's import.
    os.environ.pop("OPENBLAS_CORETYPE", None)

import numpy as np  # noqa: E402

from veilpay.mpc import Protocol, nonlinear, run_local, share  # noqa: E402

HERE = Path(__file__).resolve().parent


def _sync(rt: Protocol) -> None:
    z = np.zeros(1, dtype=np.uint64)
    rt.comm.exchange("sync", {p: [z] for p in rt.comm.peers}, {p: 1 for p in rt.comm.peers})


def bench_program(
    rt: Protocol, n: int = 1_000_000, ops: list[str] | None = None, seed: int = 0, repeats: int = 5
) -> list[dict[str, Any]]:
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
        inner = 20 if name == "matmul_100" else 1  # a 100x100 matmul is too short to time alone
        table[name]()  # warm-up: first-use costs (page faults, TCP windows) are not the op's
        rt.comm.reset_stats()
        times = []
        cpu0 = time.process_time()
        for _ in range(repeats):
            _sync(rt)
            t0 = time.perf_counter()
            for _ in range(inner):
                table[name]()
            _sync(rt)
            times.append((time.perf_counter() - t0) / inner)
        cpu = (time.process_time() - cpu0) / (inner * repeats)
        total = rt.comm.total()
        sync = rt.comm.stats()["sync"]
        out.append({
            "op": name, "seconds": round(float(np.median(times)), 5), "repeats": repeats,
            "rounds": (total.rounds - sync.rounds) // (inner * repeats),
            "bytes_sent_this_party": (total.bytes_sent - sync.bytes_sent) // (inner * repeats),
            "cpu_seconds_this_party": round(cpu, 5),
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


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run_spu(ops: list[str], n: int) -> list[dict[str, Any]]:
    cmd = [".venv-spu/bin/python", str(HERE / "peers" / "spu_mpc.py"), "--n", str(n), "--ops", ",".join(ops)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
    return _json_lines(proc.stdout)


def run_mpyc(n: int) -> list[dict[str, Any]]:
    env = {**os.environ, "MPYC_BENCH_N": str(n)}
    script = str(HERE / "peers" / "mpyc_mpc.py")
    procs = [subprocess.Popen([".venv-mpyc/bin/python", script, "-M3", f"-I{i}", "--no-log"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in range(3)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    return _json_lines(outs[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="core ops only (no less_than/sigmoid)")
    ap.add_argument("--mpyc-n", type=int, default=10_000, help="elements for MPyC's element-wise ops")
    ap.add_argument("--ops", help="comma-separated subset of the ops (default: all)")
    ap.add_argument("--no-peers", action="store_true", help="skip SPU and MPyC")
    ap.add_argument("--blas", choices=["auto", "inherit"], default="auto",
                    help="auto (default): lift an OPENBLAS_CORETYPE pin so OpenBLAS picks this CPU's kernels; "
                    "inherit: keep it")
    a = ap.parse_args()
    keep_freed_memory()
    from veilpay.cli.demo import _free_port_base
    from veilpay.cli.launch import launch
    from veilpay.net import provision_network

    coretype = os.environ.get("OPENBLAS_CORETYPE", "auto") if a.blas == "inherit" else "auto"
    ops = list(_CORE_OPS if a.quick else _ALL_OPS)
    if a.ops:
        unknown = set(a.ops.split(",")) - set(_ALL_OPS)
        if unknown:
            raise SystemExit(f"unknown ops: {sorted(unknown)}; choose from {_ALL_OPS}")
        ops = a.ops.split(",")
    plain = {op: plaintext_seconds(op, a.n) for op in ops}
    ours: dict[tuple[str, str], float] = {}
    work = Path(tempfile.mkdtemp(prefix="veilpay-bench-"))
    env = {"PYTHONPATH": str(HERE.parent)}
    runs = [("semi2k", "exact", ops), ("aby3", "exact", ops)]
    if "fxp_mul" in ops:
        runs.insert(1, ("semi2k", "local", ["fxp_mul"]))
        runs.append(("aby3", "local", ["fxp_mul"]))
    try:
        for protocol, trunc, run_ops in runs:
            net = provision_network(work / f"{protocol}-{trunc}", ["p0", "p1", "p2"], base_port=_free_port_base())
            args = {p: {"n": a.n, "ops": run_ops} for p in ("p0", "p1", "p2")}
            res = launch(str(net), "bench.mpc:bench_program", protocol, args, trunc=trunc, timeout=1800,
                         extra_env=env, blas=a.blas)
            for i, fig in enumerate(res["p0"]):
                slowest = max(res[p][i]["seconds"] for p in res)
                if trunc == "exact":
                    ours[(protocol, fig["op"])] = slowest
                print(json.dumps({
                    "bench": "mpc", "protocol": protocol, "trunc": _TRUNC[protocol, trunc],
                    "transport": "tcp+tls, 3 processes", "blas_coretype": coretype, "n": a.n, **fig, "seconds": slowest,
                    "bytes_sent_all": sum(res[p][i]["bytes_sent_this_party"] for p in res),
                    "cpu_seconds_all": round(sum(res[p][i]["cpu_seconds_this_party"] for p in res), 5),
                    "plaintext_seconds": round(plain[fig["op"]], 6),
                    "slowdown_vs_plaintext": round(slowest / max(plain[fig["op"]], 1e-9), 1),
                }), flush=True)
            if trunc == "exact":
                mem = run_local(bench_program, protocol, timeout=600,
                                kwargs={p: {"n": a.n, "ops": [o for o in ops if o in _CORE_OPS]}
                                        for p in ("p0", "p1", "p2")})
                for fig in mem["p0"]:
                    print(json.dumps({"bench": "mpc", "protocol": protocol, "transport": "in-memory threads",
                                      "n": a.n, **fig}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not a.no_peers:
        _peers(ops, a.n, a.mpyc_n, ours)


_CORE_OPS = ["fxp_mul", "int_mul", "matmul_100", "matmul_1000"]
_ALL_OPS = [*_CORE_OPS, "less_than", "sigmoid"]
_TRUNC = {("semi2k", "exact"): "exact (dealer pair, 1 round)", ("semi2k", "local"): "local (SecureML)",
          ("aby3", "exact"): "exact (P0 as dealer, fused with the product)",
          ("aby3", "local"): "local (ABY3 Pi_trunc1)"}


def _peers(ops: list[str], n: int, mpyc_n: int, ours: dict[tuple[str, str], float]) -> None:
    if Path(".venv-spu/bin/python").exists():
        for fig in run_spu(ops, n):
            mine = ours.get((fig["protocol"], fig["op"]))
            print(json.dumps({"bench": "mpc", **fig, "veilpay_seconds": mine,
                              "veilpay_speedup": round(fig["seconds"] / mine, 2) if mine else None}), flush=True)
    else:
        print(json.dumps({"bench": "mpc", "peer": "spu-0.9.5", "measured": False,
                          "why": ".venv-spu missing: run `make bench-peers`"}), flush=True)
    if Path(".venv-mpyc/bin/python").exists():
        for fig in run_mpyc(mpyc_n):
            mine = ours.get(("aby3", fig["op"]))
            mine_rate = (n if fig["op"] != "matmul_100" else 100 * 100) / mine if mine else None
            print(json.dumps({"bench": "mpc", **fig,
                              "veilpay_aby3_elements_per_second": round(mine_rate, 1) if mine_rate else None,
                              "veilpay_speedup": round(mine_rate / fig["elements_per_second"], 1) if mine_rate else None}),
                  flush=True)
    else:
        print(json.dumps({"bench": "mpc", "peer": "mpyc-0.11", "measured": False,
                          "why": ".venv-mpyc missing: run `make bench-peers`"}), flush=True)


if __name__ == "__main__":
    main()
