"""PSI benchmark: both parties as separate processes (`veilpay psi`) over TCP + mutual
TLS on loopback, 50 % overlap. Prints one JSON line per size and protocol (KKRT, our
default, and ECDH): wall seconds (process start to exit, reading the CSV and writing
the common rows included), bytes each way, peak RSS per party (from the OS), the
plaintext set intersection's time; for ECDH also this machine's X25519 cost with the
floor it sets (4n scalar multiplications spread over every core).

Peers on the same files in the same run, from the environments `make bench-peers`
makes: SecretFlow's PSI (`spu.psi` 0.9.5: ECDH on Curve25519, KKRT, RR22; two
processes over its brpc link, bench/peers/spu_psi.py) and openmined-psi 2.0.6 (one
process, both roles; bench/peers/openmined_psi.py), each with our wall time / theirs.

Unbalanced mode in the same run: a 100k server set prepared once, then 1k-id client
queries (the first downloads the prepared set, the second reuses it).

    python bench/psi.py [--sizes 100000,1000000] [--protocols kkrt,ecdh] [--no-peers]
                        [--no-kkrt-both] [--unbalanced 100000,1000]

KKRT runs in both reveal modes: the receiver alone learns the intersection, and
``both`` (joint training's mode: the receiver also returns the common ids' items).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_SPU = HERE.parent / ".venv-spu" / "bin" / "python"
VENV_OPENMINED = HERE.parent / ".venv-openmined" / "bin" / "python"


def _write(path: Path, ids: range) -> None:
    with path.open("w") as fh:
        fh.write("customer_id\n")
        fh.writelines(f"cust-{i:012d}\n" for i in ids)


# GNU time is not assumed: each party runs under a tiny wrapper that reports its peak RSS.
_WRAP = ("import resource,subprocess,sys;p=subprocess.run(sys.argv[1:]);"
         "print('RSS',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,file=sys.stderr);sys.exit(p.returncode)")


def _run_together(cmds: dict[str, list[str]]) -> tuple[float, dict[str, dict[str, Any]], dict[str, int]]:
    """Start every command at once; wall seconds, each one's last stdout JSON line and
    peak RSS in MiB."""
    t0 = time.perf_counter()
    procs = {k: subprocess.Popen([sys.executable, "-c", _WRAP, *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, c in cmds.items()}
    outs = {k: p.communicate(timeout=3600) for k, p in procs.items()}
    wall = time.perf_counter() - t0
    for k, p in procs.items():
        if p.returncode != 0:
            raise SystemExit(f"{k} failed: {outs[k][1][-2000:]}")
    last = {k: json.loads([ln for ln in outs[k][0].splitlines() if ln.startswith("{")][-1]) for k in outs}
    rss = {k: int(next(ln.split()[1] for ln in outs[k][1].splitlines() if ln.startswith("RSS"))) // 1024 for k in outs}
    return wall, last, rss


def x25519_us_per_op() -> float:
    from veilpay.crypto import BlindingKey, hash_to_points

    pts = hash_to_points([b"%d" % i for i in range(20000)], b"salt", b"bench")
    key = BlindingKey.generate()
    t0 = time.perf_counter()
    key.blind(pts, workers=1)
    return 1e6 * (time.perf_counter() - t0) / len(pts)


def run_size(n: int, work: Path, op_us: float, protocol: str, reveal: str = "receiver") -> dict[str, Any]:
    from veilpay.cli.demo import _free_port_base
    from veilpay.net import provision_network

    net = provision_network(work / f"net{n}{protocol}{reveal}", ["receiver", "sender"], base_port=_free_port_base())
    fr, fs = work / f"r{n}.csv", work / f"s{n}.csv"
    base = [sys.executable, "-m", "veilpay.cli.main", "psi", "--network", str(net), "--key", "customer_id",
            "--timeout", "1800", "--protocol", protocol, "--reveal", reveal]
    wall, summ, rss = _run_together({
        "receiver": base + ["--role", "receiver", "--party", "receiver", "--input", str(fr),
                            "--output", str(work / "o.csv")],
        "sender": base + ["--role", "sender", "--party", "sender", "--input", str(fs)]
        + (["--output", str(work / "o-sender.csv")] if reveal == "both" else []),
    })
    a, b = set(range(n)), set(range(n // 2, n + n // 2))
    t1 = time.perf_counter()
    _ = a & b
    plain = time.perf_counter() - t1
    cores = os.cpu_count() or 1
    row = {"bench": "psi", "protocol": "kkrt (ot extension)" if protocol == "kkrt" else "ecdh-x25519",
           "reveal": reveal, "transport": "tcp+tls, 2 processes", "n_each": n,
           "intersection": summ["receiver"]["intersection_size"], "wall_seconds": round(wall, 2),
           "protocol_seconds": summ["receiver"]["seconds"], "bytes_receiver_to_sender": summ["receiver"]["bytes_sent"],
           "bytes_sender_to_receiver": summ["sender"]["bytes_sent"], "peak_rss_mib": rss,
           "plaintext_seconds": round(plain, 4), "ms_per_id": round(1000 * wall / n, 4), "cores": cores}
    if protocol == "ecdh":
        row |= {"x25519_us_per_op": round(op_us, 1), "floor_seconds": round(4 * n * op_us / 1e6 / cores, 1)}
    else:
        row |= {"target_seconds_1m": 7.5, "target_rss_mib": 1536}
    return row


def run_spu(n: int, work: Path, protocol: str) -> dict[str, Any]:
    from veilpay.cli.demo import _free_port_base

    port = _free_port_base()
    script = [str(VENV_SPU), str(HERE / "peers" / "spu_psi.py"), "--protocol", protocol, "--ports",
              f"{port},{port + 1}"]
    wall, out, rss = _run_together({
        "receiver": script + ["--rank", "0", "--input", str(work / f"r{n}.csv"), "--output", str(work / "spu0.csv")],
        "sender": script + ["--rank", "1", "--input", str(work / f"s{n}.csv"), "--output", str(work / "spu1.csv")],
    })
    return {"bench": "psi", "peer": f"spu.psi 0.9.5 {protocol}", "transport": "brpc (no tls), 2 processes",
            "n_each": n, "intersection": out["receiver"]["intersection"], "wall_seconds": round(wall, 2),
            "protocol_seconds": out["receiver"]["seconds"], "peak_rss_mib": rss}


def run_openmined(n: int, work: Path) -> dict[str, Any]:
    wall, out, rss = _run_together({"both": [str(VENV_OPENMINED), str(HERE / "peers" / "openmined_psi.py"),
                                             "--receiver", str(work / f"r{n}.csv"), "--sender", str(work / f"s{n}.csv")]})
    return {"bench": "psi", "peer": "openmined-psi 2.0.6 (P-256)", "transport": "none: both roles in one process",
            "n_each": n, "intersection": out["both"]["intersection"], "wall_seconds": round(wall, 2),
            "protocol_seconds": out["both"]["seconds"], "bytes_receiver_to_sender": out["both"]["bytes_receiver_to_sender"],
            "bytes_sender_to_receiver": out["both"]["bytes_sender_to_receiver"], "peak_rss_mib": rss}


def run_unbalanced(n_server: int, n_client: int, work: Path) -> Iterator[dict[str, Any]]:
    """Unbalanced mode: prepare a server set once (psi-setup), then two client queries
    over TCP + TLS: the first downloads the prepared set, the second reuses its copy."""
    from veilpay.cli.demo import _free_port_base
    from veilpay.net import provision_network

    big, small = work / f"ub_server{n_server}.csv", work / f"ub_client{n_client}.csv"
    _write(big, range(n_server))
    _write(small, range(n_server - n_client // 2, n_server + n_client - n_client // 2))
    cli = [sys.executable, "-m", "veilpay.cli.main"]
    t0 = time.perf_counter()
    setup = subprocess.run(cli + ["psi-setup", "--input", str(big), "--key", "customer_id", "--cache",
                                  str(work / "ub_srv")], capture_output=True, text=True, timeout=7200)
    if setup.returncode != 0:
        raise SystemExit(f"psi-setup failed: {setup.stderr[-2000:]}")
    yield {"bench": "psi", "protocol": "unbalanced-p256 setup (offline)", "n_server": n_server,
           "wall_seconds": round(time.perf_counter() - t0, 2), "us_per_server_id": round(
               1e6 * (time.perf_counter() - t0) / n_server, 1)}
    for query in ("first query (downloads the set)", "second query (cached copy)"):
        net = provision_network(work / f"ubnet{len(query)}", ["receiver", "sender"], base_port=_free_port_base())
        base = cli + ["psi", "--network", str(net), "--mode", "unbalanced", "--timeout", "600"]
        wall, summ, rss = _run_together({
            "receiver": base + ["--role", "receiver", "--party", "receiver", "--input", str(small), "--key",
                                "customer_id", "--cache", str(work / "ub_cli"), "--output", str(work / "ub_o.csv")],
            "sender": base + ["--role", "sender", "--party", "sender", "--cache", str(work / "ub_srv")],
        })
        yield {"bench": "psi", "protocol": f"unbalanced-p256 {query}", "n_server": n_server, "n_client": n_client,
               "intersection": summ["receiver"]["intersection_size"], "wall_seconds": round(wall, 2),
               "protocol_seconds": summ["receiver"]["seconds"],
               "bytes_client_to_server": summ["receiver"]["bytes_sent"],
               "bytes_server_to_client": summ["sender"]["bytes_sent"], "peak_rss_mib": rss}


def peer_rows(n: int, work: Path) -> Iterator[dict[str, Any]]:
    if VENV_SPU.exists():
        for protocol in ("ecdh", "kkrt", "rr22"):
            yield run_spu(n, work, protocol)
    else:
        yield {"bench": "psi", "peer": "spu.psi 0.9.5", "measured": False,
               "why": ".venv-spu missing: run `make bench-peers`"}
    if VENV_OPENMINED.exists():
        yield run_openmined(n, work)
    else:
        yield {"bench": "psi", "peer": "openmined-psi 2.0.6", "measured": False,
               "why": ".venv-openmined missing: run `make bench-peers`"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--protocols", default="kkrt,ecdh", help="ours, comma separated: kkrt, ecdh")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-kkrt-both", dest="kkrt_both", action="store_false",
                    help="skip KKRT with reveal='both' (the sender learns the intersection too)")
    ap.add_argument("--unbalanced", default="100000,1000", help="server,client sizes; '' skips it")
    a = ap.parse_args()
    op_us = x25519_us_per_op()
    with tempfile.TemporaryDirectory(prefix="veilpay-psi-bench-") as tmp:
        work = Path(tmp)
        for n in (int(v) for v in a.sizes.split(",") if v):
            _write(work / f"r{n}.csv", range(n))
            _write(work / f"s{n}.csv", range(n // 2, n + n // 2))
            ours = {}
            for protocol in (p for p in a.protocols.split(",") if p):
                ours[protocol] = run_size(n, work, op_us, protocol)
                print(json.dumps(ours[protocol]), flush=True)
                if protocol == "kkrt" and a.kkrt_both:  # the mode joint training uses
                    print(json.dumps(run_size(n, work, op_us, protocol, "both")), flush=True)
            if a.no_peers:
                continue
            for row in peer_rows(n, work):
                if "wall_seconds" in row:
                    for protocol, mine in ours.items():
                        row[f"{protocol}_over_peer_wall"] = round(mine["wall_seconds"] / row["wall_seconds"], 3)
                print(json.dumps(row), flush=True)
        if a.unbalanced:
            n_server, n_client = (int(v) for v in a.unbalanced.split(","))
            for row in run_unbalanced(n_server, n_client, work):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
