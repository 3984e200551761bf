"""ECDH-PSI benchmark: both parties as separate processes (`veilpay psi`) over TCP +
mutual TLS on loopback, 50 % overlap. Prints one JSON line per size: wall seconds,
bytes each way, peak RSS per party (from the OS), and the plaintext set
intersection's time beside it.

    python bench/psi.py [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _write(path: Path, ids: range) -> None:
    with path.open("w") as fh:
        fh.write("customer_id\n")
        fh.writelines(f"cust-{i:012d}\n" for i in ids)


def run_size(n: int, work: Path) -> dict[str, object]:
    from veilpay.cli.demo import _free_port_base
    from veilpay.net import provision_network

    net = provision_network(work / f"net{n}", ["receiver", "sender"], base_port=_free_port_base())
    fr, fs = work / f"r{n}.csv", work / f"s{n}.csv"
    _write(fr, range(n))
    _write(fs, range(n // 2, n + n // 2))
    base = [sys.executable, "-m", "veilpay.cli.main", "psi", "--network", str(net), "--key", "customer_id",
            "--timeout", "1800"]
    cmds = {
        "receiver": base + ["--role", "receiver", "--party", "receiver", "--input", str(fr),
                            "--output", str(work / "o.csv")],
        "sender": base + ["--role", "sender", "--party", "sender", "--input", str(fs)],
    }
    # GNU time is not assumed: each party runs under a tiny wrapper that reports its peak RSS.
    wrap = ("import resource,subprocess,sys;p=subprocess.run(sys.argv[1:]);"
            "print('RSS',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,file=sys.stderr);sys.exit(p.returncode)")
    t0 = time.perf_counter()
    procs = {k: subprocess.Popen([sys.executable, "-c", wrap, *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, c in cmds.items()}
    outs = {k: p.communicate(timeout=3600) for k, p in procs.items()}
    wall = time.perf_counter() - t0
    for k, p in procs.items():
        if p.returncode != 0:
            raise SystemExit(f"{k} failed: {outs[k][1][-2000:]}")
    summ = {k: json.loads(outs[k][0].strip().splitlines()[-1]) for k in outs}
    rss = {k: int(next(line.split()[1] for line in outs[k][1].splitlines() if line.startswith("RSS"))) // 1024
           for k in outs}
    a, b = set(range(n)), set(range(n // 2, n + n // 2))
    t1 = time.perf_counter()
    _ = a & b
    plain = time.perf_counter() - t1
    return {"bench": "psi", "protocol": "ecdh-x25519", "transport": "tcp+tls, 2 processes", "n_each": n,
            "intersection": summ["receiver"]["intersection_size"], "wall_seconds": round(wall, 2),
            "protocol_seconds": summ["receiver"]["seconds"], "bytes_receiver_to_sender": summ["receiver"]["bytes_sent"],
            "bytes_sender_to_receiver": summ["sender"]["bytes_sent"], "peak_rss_mib": rss,
            "plaintext_seconds": round(plain, 4), "ms_per_id": round(1000 * wall / n, 4),
            "max_rss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="veilpay-psi-bench-") as tmp:
        for n in (int(v) for v in a.sizes.split(",")):
            print(json.dumps(run_size(n, Path(tmp))), flush=True)
    print(json.dumps({"bench": "psi", "peers": ["openmined-psi 2.0.6", "spu.psi 0.9.5"], "measured": False,
                      "why": "peer PSI scripts are not written yet (issue 3 stays open)"}), flush=True)


if __name__ == "__main__":
    main()
