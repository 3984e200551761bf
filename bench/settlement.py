"""Settlement of N payments by the privacy nodes, each its own OS process over TCP +
mutual TLS on loopback (semi2k: two share holders and a dealer; or aby3).

Setup (not timed): N payments' amounts are split into shares and written straight
into each node's SQLite store, spread over 10 (acquirer, MPP) pairs and 3
currencies, as the feed would leave them (signed time in a closed day, SUCCESS).
Timed: the settle job at every node (the node's policy checks, select the period's
items, agree, the ledger entry agreed and appended by every node, the exact range
check of every amount in MPC, group sums, each holder's share of every group total
sealed and signed to the group's acquirer and MPP, the release stored and the
items marked settled), which is what `veilpay gateway settle` waits for; then, also
timed, the partners opening their totals. The plaintext baseline is a numpy
group-by sum of the same amounts. Prints one JSON line.

    python bench/settlement.py --payments 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DAY = "2026-11-20"


PARTNERS = [f"acqp-{i}" for i in range(10)] + ["mpp-0", "mpp-1"]


def _node(root: Path, me: str, protocol: str) -> None:
    from veilpay.net import connect_mesh, load_network
    from veilpay.node.app import load_privacy
    from veilpay.node.service import NodeService, PinnedPartners
    from veilpay.node.store import open_store
    from veilpay.sdk import load_party
    from veilpay.sdk.authority import load_authority

    net_file = root / "mpcnet" / "network.toml"
    network, privacy = load_network(net_file), load_privacy(net_file)
    keys = load_party(root / "keys" / me)

    def mesh(session: bytes):  # type: ignore[no-untyped-def]
        return connect_mesh(network, me, session, timeout=600, connect_timeout=60, parties=list(privacy.parties))

    pinned = PinnedPartners([root / "keys" / p / "public.json" for p in PARTNERS],
                            load_authority(root / "authority" / "authority.json"))
    svc = NodeService(keys, privacy, open_store(f"sqlite:///{root / me / 'node.db'}"), mesh, pinned)
    cpu, t = time.process_time(), time.perf_counter()
    res = svc.run_job({"jobId": "bench-settle-0001", "kind": "settle", "params": {"period": DAY}})
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    groups = [{k: v for k, v in g.items() if k not in ("ids", "rejected", "outOfRange")}
              for g in res["result"].get("groups", [])]
    print(json.dumps({"node": me, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "bytes_sent": res["bytesSent"],
                      "rounds": res["rounds"], "groups": groups, "outputs": res["outputs"].get("groups", []),
                      "ledger_seq": res["ledger"]["seq"], "peak_rss_mib": rss}))


def _setup(root: Path, n: int, protocol: str, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sqlalchemy import insert

    from veilpay.cli.demo import _free_port_base
    from veilpay.net import provision_network
    from veilpay.node.store import items, open_store, state
    from veilpay.sdk import create_party
    from veilpay.sdk.authority import certify, create_authority
    from veilpay.sdk.periods import Period

    nodes = ["node-a", "node-b", "node-c"]
    holders = nodes[:2] if protocol == "semi2k" else nodes
    net = provision_network(root / "mpcnet", nodes, base_port=_free_port_base(3), name="bench")
    with net.open("a") as fh:
        fh.write(f'[privacy]\nprotocol = "{protocol}"\nnodes = {json.dumps(holders)}\n'
                 + ('dealer = "node-c"\n' if protocol == "semi2k" else ""))
    for node in nodes:
        create_party(root / "keys" / node, node, "node", endpoint="http://127.0.0.1:1")
    create_authority(root / "authority", "bench network")
    for p in PARTNERS:
        create_party(root / "keys" / p, p, "mpp" if p.startswith("mpp") else "acqp")
        certify(root / "authority", root / "keys" / p / "public.json")
    rng = np.random.default_rng(seed)  # test data only
    amounts = rng.integers(100, 5_000_000, size=n, dtype=np.int64)
    group = rng.integers(0, 60, size=n)
    keys = [f"acqp-{g % 10}|mpp-{g % 2}|{['JPY', 'SGD', 'USD'][g % 3]}" for g in range(60)]
    # benchmark data: a numpy generator seeded from os.urandom (the SDK itself draws shares from secrets)
    sec = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    r0 = sec.integers(0, 2**64, size=n, dtype=np.uint64)
    r1 = sec.integers(0, 2**64, size=n, dtype=np.uint64)
    x = amounts.astype(np.uint64)
    if protocol == "semi2k":
        words = {"node-a": (r0, np.zeros(n, np.uint64)), "node-b": (x - r0, np.zeros(n, np.uint64))}
    else:
        c = [r0, r1, x - r0 - r1]
        words = {nd: (c[i], c[(i + 1) % 3]) for i, nd in enumerate(nodes)}
    ids = [f"pay_{i:032x}" for i in range(n)]
    day_ms = Period.parse(DAY).start_ms
    for node, (w0, w1) in words.items():
        engine = open_store(f"sqlite:///{root / node / 'node.db'}")
        a0, a1 = w0.view(np.int64).tolist(), w1.view(np.int64).tolist()
        with engine.begin() as conn:
            step = 50_000
            for lo in range(0, n, step):
                conn.execute(insert(items), [
                    {"id": ids[i], "kind": "pay", "payment_id": None, "acqp_id": keys[group[i]].split("|")[0],
                     "mpp_id": keys[group[i]].split("|")[1], "currency": keys[group[i]].split("|")[2],
                     "request_id": f"r{i}", "w0": a0[i], "w1": a1[i], "opened": True, "error": "", "status": "SUCCESS",
                     "ts_ms": day_ms + 1000, "period_ms": day_ms, "settled_ms": None, "reversed_ms": None,
                     "status_seq": i + 1, "seq": i + 1} for i in range(lo, min(n, lo + step))])
            conn.execute(insert(state).values(key="applied_seq", value=n))
        engine.dispose()
    return amounts, group, keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--payments", type=int, default=1_000_000)
    ap.add_argument("--protocol", choices=["semi2k", "aby3"], default="semi2k")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--node", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.node:
        _node(Path(a.root), a.node, a.protocol)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        amounts, group, keys = _setup(root, a.payments, a.protocol, a.seed)
        setup_s = time.perf_counter() - t
        t = time.perf_counter()
        plain = np.bincount(group, weights=amounts.astype(np.float64), minlength=60)
        counts = np.bincount(group, minlength=60)
        plain_s = time.perf_counter() - t
        nodes = ["node-a", "node-b", "node-c"]
        t = time.perf_counter()
        procs = {nd: subprocess.Popen([sys.executable, __file__, "--node", nd, "--root", tmp, "--protocol", a.protocol],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for nd in nodes}
        out = {}
        for nd, p in procs.items():
            so, se = p.communicate(timeout=900)
            if p.returncode != 0:
                raise SystemExit(f"{nd} failed: {se.decode()[-2000:]}")
            out[nd] = json.loads(so.decode().strip().splitlines()[-1])
        wall = time.perf_counter() - t
        # the partners: each opens the totals the nodes sealed to it (and checks the nodes' signatures)
        from veilpay.node.app import load_privacy
        from veilpay.sdk import load_party
        from veilpay.sdk.settlement import open_total

        privacy = load_privacy(root / "mpcnet" / "network.toml")
        node_keys = {nd: load_party(root / "keys" / nd).public for nd in nodes}
        partner_keys = {p: load_party(root / "keys" / p) for p in PARTNERS}
        holders = list(privacy.nodes)
        t = time.perf_counter()
        opened: dict[str, list[int]] = {}
        agree = True
        for i, g in enumerate(out["node-a"]["groups"]):
            k = f"{g['acqp']}|{g['mpp']}|{g['currency']}"
            seen = []
            for p in (g["acqp"], g["mpp"]):
                outs = {nd: out[nd]["outputs"][i][p] for nd in holders}
                seen.append(open_total(outs, partner_keys[p], node_keys, privacy)[1])
            agree = agree and seen[0] == seen[1]
            opened[k] = [seen[0], g["count"]]
        partner_s = time.perf_counter() - t
        want: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            w = want.setdefault(k, [0, 0])
            w[0] += int(plain[i])
            w[1] += int(counts[i])
        ok = agree and opened == want
        holder = out["node-a"]
        print(json.dumps({
            "bench": "settlement", "protocol": a.protocol, "transport": "tcp+tls, one process per node",
            "payments": a.payments, "groups": len(opened), "totals_equal_plaintext": ok,
            "wall_s": round(wall, 2), "job_s": {nd: o["wall_s"] for nd, o in out.items()},
            "cpu_s": {nd: o["cpu_s"] for nd, o in out.items()},
            "cpu_us_per_payment": round(sum(o["cpu_s"] for o in out.values()) / a.payments * 1e6, 2),
            "partners_open_s": round(partner_s, 3), "ledger_seq": holder["ledger_seq"],
            "bytes_between_nodes": sum(o["bytes_sent"] for o in out.values()),
            "bytes_sent": {nd: o["bytes_sent"] for nd, o in out.items()}, "rounds": holder["rounds"],
            "peak_rss_mib": {nd: o["peak_rss_mib"] for nd, o in out.items()},
            "plaintext_groupby_s": round(plain_s, 4),
            "ratio_to_plaintext": round(wall / max(plain_s, 1e-9), 1), "setup_not_timed_s": round(setup_s, 1),
            "target_s": 30, "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
