"""PSI benchmark: both parties as separate processes (`veilpay psi`) over TCP + mutual
TLS on loopback, 50 % overlap. Prints one JSON line per size and protocol (RR22, our
default, KKRT and ECDH): wall seconds (process start to exit, reading the CSV and writing
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
    python bench/psi.py --ray 1000000,10000000,30000000 [--ray-spu 10000000] [--ray-protocol kkrt|rr22]
    python bench/psi.py --rr22 1000000,4000000,10000000 [--repeat 3]

``--rr22``: RR22 (our default) at each size, both parties as processes over TCP + TLS,
with each party's time split (ingestion: reading the file and hashing the ids;
OPRF/OKVS: the OKVS, the VOLE and the values; network: time blocked sending or
waiting for the peer; matching; writing the output) and peak RSS; spu.psi RR22 at the
smallest size in the same run, alternating with ours (each size ``--repeat`` times,
the best of each compared); a summary line with the targets: 1M x 1M within 2.5 s and 1.8x
faster than spu.psi RR22, under 400 MiB a party, time per id growing linearly within
15 %.

``--ray``: KKRT partitioned over each party's own local Ray instance (`veilpay psi
--ray-address local`), both parties as processes over TCP + TLS, at each size: wall
time, bytes, the peak RSS of every Ray worker and of each driver (rows
``psi-ray``); the single-process KKRT path at the smallest size in the same run (the
overhead row); and spu.psi KKRT at ``--ray-spu`` a side, stopped after 10 minutes
(reported either way).

KKRT runs in both reveal modes: the receiver alone learns the intersection, and
``both`` (joint training's mode: the receiver also returns the common ids' items).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
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
_WRAP = ("import resource,subprocess,sys;p=subprocess.run(sys.argv[1:]);u=resource.getrusage(resource.RUSAGE_CHILDREN);"
         "print('RSS',u.ru_maxrss,file=sys.stderr);print('CPU',u.ru_utime+u.ru_stime,file=sys.stderr);"
         "sys.exit(p.returncode)")


def _run_together(cmds: dict[str, list[str]], timeout: float = 3600
                  ) -> tuple[float, dict[str, dict[str, Any]], dict[str, int]]:
    """Start every command at once; wall seconds, each one's last stdout JSON line and
    peak RSS in MiB. subprocess.TimeoutExpired (all killed) past ``timeout`` seconds."""
    t0 = time.perf_counter()
    procs = {k: subprocess.Popen([sys.executable, "-c", _WRAP, *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True) for k, c in cmds.items()}
    try:
        outs = {k: p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0))) for k, p in procs.items()}
    except subprocess.TimeoutExpired:
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        raise
    wall = time.perf_counter() - t0
    for k, p in procs.items():
        if p.returncode != 0:
            raise SystemExit(f"{k} failed: {outs[k][1][-2000:]}")
    last = {k: json.loads([ln for ln in outs[k][0].splitlines() if ln.startswith("{")][-1]) for k in outs}
    rss = {k: int(next(ln.split()[1] for ln in outs[k][1].splitlines() if ln.startswith("RSS"))) // 1024 for k in outs}
    cpu = {k: round(float(next(ln.split()[1] for ln in outs[k][1].splitlines() if ln.startswith("CPU"))), 2)
           for k in outs}
    _LAST_CPU.clear()
    _LAST_CPU.update(cpu)
    return wall, last, rss


_LAST_CPU: dict[str, float] = {}  # CPU seconds (user + system) of each process of the last _run_together


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
    names = {"kkrt": "kkrt (ot extension)", "rr22": "rr22 (vole + okvs)", "ecdh": "ecdh-x25519"}
    row: dict[str, Any] = {"bench": "psi", "protocol": names[protocol],
           "reveal": reveal, "transport": "tcp+tls, 2 processes", "n_each": n,
           "intersection": summ["receiver"]["intersection_size"], "wall_seconds": round(wall, 2),
           "protocol_seconds": summ["receiver"]["seconds"], "bytes_receiver_to_sender": summ["receiver"]["bytes_sent"],
           "bytes_sender_to_receiver": summ["sender"]["bytes_sent"], "peak_rss_mib": rss,
           "plaintext_seconds": round(plain, 4), "ms_per_id": round(1000 * wall / n, 4), "cores": cores}
    if protocol == "ecdh":
        row |= {"x25519_us_per_op": round(op_us, 1), "floor_seconds": round(4 * n * op_us / 1e6 / cores, 1)}
    elif protocol == "kkrt":
        row |= {"target_seconds_1m": 7.5, "target_rss_mib": 1536}
    else:
        row["split_seconds"] = {role: _split(summ[role]) for role in ("receiver", "sender")}
        row["cpu_seconds"] = dict(_LAST_CPU)
        row["cpu_us_per_id"] = round(1e6 * sum(_LAST_CPU.values()) / n, 2)
    return row


def _split(summary: dict[str, Any]) -> dict[str, float]:
    """A party's seconds by kind of work, from its summary's phases."""
    ph = summary.get("phases", {})
    return {"ingestion": round(summary.get("read_seconds", 0.0) + ph.get("items", 0.0), 3),
            "oprf_okvs": round(ph.get("okvs", 0.0) + ph.get("vole", 0.0) + ph.get("values", 0.0)
                               + ph.get("shuffle", 0.0), 3),
            "network": round(ph.get("wait", 0.0) + ph.get("send", 0.0), 3),
            "matching": round(ph.get("match", 0.0), 3),
            "writing": round(summary.get("write_seconds", 0.0), 3)}


def rr22_rows(sizes: list[int], work: Path, repeat: int) -> Iterator[dict[str, Any]]:
    """Our RR22 at each size; spu.psi RR22 at the smallest, alternating with ours."""
    per_id: dict[int, float] = {}
    best: dict[int, dict[str, Any]] = {}
    spu_best: dict[str, Any] | None = None
    for n in sizes:
        _write(work / f"r{n}.csv", range(n))
        _write(work / f"s{n}.csv", range(n // 2, n + n // 2))
        for k in range(repeat):
            row = run_size(n, work, 0.0, "rr22") | {"try": k + 1}
            yield row
            if n not in best or row["wall_seconds"] < best[n]["wall_seconds"]:
                best[n] = row
            if n == sizes[0] and VENV_SPU.exists():
                peer = run_spu(n, work, "rr22") | {"try": k + 1}
                yield peer
                if spu_best is None or peer["wall_seconds"] < spu_best["wall_seconds"]:
                    spu_best = peer
        per_id[n] = best[n]["wall_seconds"] / n
        if n == sizes[0]:
            yield run_size(n, work, 0.0, "rr22", "both")
    small = sizes[0]
    growth = {str(n): round(per_id[n] / per_id[small], 3) for n in sizes}
    # linear growth: the seconds each further million ids cost, between consecutive sizes
    # (a fixed cost, process start and the base OTs, drops out of these differences)
    marginal = {f"{a}-{b}": round(1e6 * (best[b]["wall_seconds"] - best[a]["wall_seconds"]) / (b - a), 3)
                for a, b in zip(sizes, sizes[1:], strict=False)}
    spread = max(marginal.values()) / min(marginal.values()) if marginal else 1.0
    cpu = {n: best[n]["cpu_us_per_id"] * n / 1e6 for n in sizes}  # CPU seconds, both parties
    marginal_cpu = {f"{a}-{b}": round(1e6 * (cpu[b] - cpu[a]) / (b - a), 3) for a, b in zip(sizes, sizes[1:], strict=False)}
    summary: dict[str, Any] = {
        "bench": "psi_rr22_summary", "cores": os.cpu_count(), "n_smallest": small,
        "wall_seconds": best[small]["wall_seconds"], "target_seconds": 2.5 if small == 1_000_000 else None,
        "peak_rss_mib": {str(n): best[n]["peak_rss_mib"] for n in sizes}, "target_rss_mib": 400,
        "per_id_wall_vs_smallest": growth, "seconds_per_million_between_sizes": marginal,
        "marginal_spread": round(spread, 3), "growth_target": 1.15, "growth_met": spread <= 1.15,
        "cpu_seconds_per_million_between_sizes": marginal_cpu,
        "bytes_per_id": {str(n): round((best[n]["bytes_receiver_to_sender"] + best[n]["bytes_sender_to_receiver"]) / n, 1)
                         for n in sizes},
    }
    if spu_best is not None:
        speedup = spu_best["wall_seconds"] / best[small]["wall_seconds"]
        summary |= {"spu_rr22_wall_seconds": spu_best["wall_seconds"], "speedup_over_spu_rr22": round(speedup, 3),
                    "cpu_us_per_id": best[small]["cpu_us_per_id"], "spu_cpu_us_per_id": spu_best["cpu_us_per_id"],
                    "speedup_target": 1.8, "speedup_met": speedup >= 1.8,
                    "spu_peak_rss_mib": spu_best["peak_rss_mib"]}
    else:
        summary["spu_rr22"] = "not measured: .venv-spu missing (make bench-peers)"
    yield summary


def run_spu(n: int, work: Path, protocol: str, timeout: float = 3600) -> dict[str, Any]:
    from veilpay.cli.demo import _free_port_base

    port = _free_port_base()
    script = [str(VENV_SPU), str(HERE / "peers" / "spu_psi.py"), "--protocol", protocol, "--ports",
              f"{port},{port + 1}"]
    wall, out, rss = _run_together({
        "receiver": script + ["--rank", "0", "--input", str(work / f"r{n}.csv"), "--output", str(work / "spu0.csv")],
        "sender": script + ["--rank", "1", "--input", str(work / f"s{n}.csv"), "--output", str(work / "spu1.csv")],
    }, timeout)
    return {"bench": "psi", "peer": f"spu.psi 0.9.5 {protocol}", "transport": "brpc (no tls), 2 processes",
            "n_each": n, "intersection": out["receiver"]["intersection"], "wall_seconds": round(wall, 2),
            "protocol_seconds": out["receiver"]["seconds"], "peak_rss_mib": rss, "cpu_seconds": dict(_LAST_CPU),
            "cpu_us_per_id": round(1e6 * sum(_LAST_CPU.values()) / n, 2)}


def run_ray(n: int, work: Path, memory_mib: int = 1024, addresses: tuple[str, str] = ("local", "local"),
            protocol: str = "kkrt") -> dict[str, Any]:
    """KKRT (or ``protocol``) partitioned over a Ray cluster per party (``local``: one
    each starts for the run), both parties as processes."""
    from veilpay.cli.demo import _free_port_base
    from veilpay.net import provision_network

    net = provision_network(work / f"raynet{n}", ["receiver", "sender"], base_port=_free_port_base())
    base = [sys.executable, "-m", "veilpay.cli.main", "psi", "--network", str(net), "--key", "customer_id",
            "--timeout", "1800", "--protocol", protocol, "--memory-per-worker", str(memory_mib), "--worker-port-base"]
    port = _free_port_base(64)
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=work))  # a fresh run each time: nothing to resume
    wall, summ, rss = _run_together({
        "receiver": base + [str(port), "--ray-address", addresses[0], "--role", "receiver", "--party", "receiver",
                            "--input", str(work / f"r{n}.csv"),
                            "--output", str(work / "ray-o.csv"), "--run-dir", str(runs / "receiver")],
        "sender": base + [str(port + 1), "--ray-address", addresses[1], "--role", "sender", "--party", "sender",
                          "--input", str(work / f"s{n}.csv"),
                          "--run-dir", str(runs / "sender")],
    })
    workers = {k: v["worker_peak_rss_mib"] for k, v in summ.items()}
    drivers = {k: v["driver_peak_rss_mib"] for k, v in summ.items()}
    r, s_ = summ["receiver"], summ["sender"]
    return {"bench": "psi-ray", "protocol": f"{protocol} per partition", "transport":
            "tcp+tls, 2 parties x (driver + Ray workers), one Ray cluster per party", "n_each": n,
            "ray": "a local instance per party, started by the run" if addresses[0] == "local" else
            "each party's cluster running before the run (ray start --head, 2 CPUs each)",
            "partitions": r["partitions"], "workers_per_party": r["workers"], "memory_per_worker_mib": memory_mib,
            "padded_to": {"receiver": r["padded_to"], "sender": s_["padded_to"]},
            "intersection": r["intersection_size"], "wall_seconds": round(wall, 2),
            "run_seconds": r["seconds"], "bucket_seconds": {"receiver": r["bucket_seconds"],
                                                            "sender": s_["bucket_seconds"]},
            "bytes_receiver_to_sender": r["bytes_sent"], "bytes_sender_to_receiver": s_["bytes_sent"],
            "driver_peak_rss_mib": drivers, "worker_peak_rss_mib": workers,
            "max_worker_rss_mib": max(max(w.values(), default=0.0) for w in workers.values()),
            "max_child_process_rss_mib": rss,  # the largest process each driver started (Ray's own included)
            "ms_per_id": round(1000 * wall / n, 4), "cores": os.cpu_count() or 1}


def ray_rows(sizes: list[int], work: Path, spu_n: int, addresses: tuple[str, str],
             protocol: str = "kkrt") -> Iterator[dict[str, Any]]:
    rows = []
    for n in sizes:
        _write(work / f"r{n}.csv", range(n))
        _write(work / f"s{n}.csv", range(n // 2, n + n // 2))
        rows.append(run_ray(n, work, addresses=addresses, protocol=protocol))
        if n == sizes[0]:
            if addresses[0] != "local":
                yield run_ray(n, work, protocol=protocol)  # and with the start of a local Ray instance inside the run
            single = run_size(n, work, 0.0, protocol)
            rows[-1]["single_process_wall_seconds"] = single["wall_seconds"]
            rows[-1]["ray_over_single_process"] = round(rows[-1]["wall_seconds"] / single["wall_seconds"], 3)
            yield single
        if len(rows) > 1:  # linear in n: seconds per id against the smallest size's
            rows[-1]["wall_per_id_vs_smallest"] = round(rows[-1]["ms_per_id"] / rows[0]["ms_per_id"], 3)
            rows[-1]["run_per_id_vs_smallest"] = round(
                (rows[-1]["run_seconds"] / n) / (rows[0]["run_seconds"] / rows[0]["n_each"]), 3)
        yield rows[-1]
        for f in (work / f"r{n}.csv", work / f"s{n}.csv"):
            if n != spu_n:
                f.unlink()
    if spu_n:
        if not VENV_SPU.exists():
            yield {"bench": "psi", "peer": "spu.psi 0.9.5 kkrt", "n_each": spu_n, "measured": False,
                   "why": ".venv-spu missing: run `make bench-peers`"}
            return
        if not (work / f"r{spu_n}.csv").exists():
            _write(work / f"r{spu_n}.csv", range(spu_n))
            _write(work / f"s{spu_n}.csv", range(spu_n // 2, spu_n + spu_n // 2))
        try:
            row = run_spu(spu_n, work, "kkrt", timeout=600)
            row["within_1_5_gib"] = max(row["peak_rss_mib"].values()) <= 1536
            yield row
        except subprocess.TimeoutExpired:
            yield {"bench": "psi", "peer": "spu.psi 0.9.5 kkrt", "n_each": spu_n, "completed": False,
                   "why": "did not finish within 10 minutes (both processes killed)"}
        except SystemExit as exc:
            yield {"bench": "psi", "peer": "spu.psi 0.9.5 kkrt", "n_each": spu_n, "completed": False,
                   "why": str(exc)[-300:]}


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
    ap.add_argument("--protocols", default="rr22,kkrt,ecdh", help="ours, comma separated: rr22, kkrt, ecdh")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-kkrt-both", dest="kkrt_both", action="store_false",
                    help="skip KKRT with reveal='both' (the sender learns the intersection too)")
    ap.add_argument("--unbalanced", default="100000,1000", help="server,client sizes; '' skips it")
    ap.add_argument("--ray", help="sizes for KKRT over Ray, comma separated (runs only the Ray rows)")
    ap.add_argument("--ray-spu", type=int, default=10_000_000, help="spu.psi KKRT at this size beside --ray; 0 skips")
    ap.add_argument("--ray-protocol", default="kkrt", choices=["kkrt", "rr22", "ecdh"],
                    help="the protocol each partition runs (and the single-process row beside it)")
    ap.add_argument("--ray-addresses", default="local,local",
                    help="the receiver's and the sender's Ray cluster addresses (default: a local instance each)")
    ap.add_argument("--rr22", help="sizes for the RR22 rows, comma separated (runs only those, with spu.psi RR22)")
    ap.add_argument("--repeat", type=int, default=3, help="--rr22: tries at the smallest size, alternating with spu")
    a = ap.parse_args()
    if a.rr22:
        with tempfile.TemporaryDirectory(prefix="veilpay-psi-rr22-bench-") as tmp:
            for row in rr22_rows([int(v) for v in a.rr22.split(",") if v], Path(tmp), a.repeat):
                print(json.dumps(row), flush=True)
        return
    if a.ray:
        with tempfile.TemporaryDirectory(prefix="veilpay-psi-ray-bench-") as tmp:
            r_addr, s_addr = a.ray_addresses.split(",")
            for row in ray_rows([int(v) for v in a.ray.split(",") if v], Path(tmp), a.ray_spu, (r_addr, s_addr),
                                a.ray_protocol):
                print(json.dumps(row), flush=True)
        return
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
