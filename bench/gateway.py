"""End-to-end pay throughput and latency through the real gateway and reference
partners (separate processes on loopback, SQLite), PETs on vs the same code with the
field groups in the clear, in one run. Prints one JSON line per mode and a summary.

The load generator is the ACQP's payment front: it uses the partner SDK (signing,
HPKE sealing to the MPP, verifying the gateway's answers) over the SDK's aiohttp
transport with a fixed number of payments in flight (128 by default: enough to keep
both cores busy; with 16 the processes wait on each other's batches and a quarter of
the CPU idles, so the rate measures latency, not capacity). Payment codes are issued
by the MPP before the timed part. Webhooks are counted as delivered when the ACQP's
service has applied all of them."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from veilpay.cli.localnet import LocalNet
from veilpay.sdk import AsyncGatewayClient
from veilpay.sdk.transport import AiohttpTransport

RISK_COLUMNS = [f"v{i}" for i in range(1, 10)] + ["hour"]  # the MPP's columns, as in the ULB split
D_ACQP = 20                                                 # V10..V28 and Amount
RISK_BUDGET_MS = 2000.0
RISK_RULES = {"version": 1, "mode": "live", "review": 0.5, "decline": 0.9,
              "rules": [{"name": "burst", "then": "decline", "if": [["count_1h", ">", 50], ["score", ">", 0.2]]},
                        {"name": "big-day", "then": "review", "if": [["sum_24h", ">=", 5_000_000]]}]}


def _risk_features(keys: Any, d: Any, rid: str, i: int, sessions: Any) -> dict[str, Any]:
    """The ACQP's side: its features of the payment, shared to the nodes and signed."""
    import numpy as np

    from veilpay.sdk.features import share_features

    x = np.random.default_rng(i).normal(size=D_ACQP)  # test data (numpy.random for test data only)
    return share_features(keys, acqp="acqp-1", mpp="mpp-1", request_id=rid, model="local-fraud",
                          features=x, frac=20, nodes=d.nodes(), privacy=d.privacy, amount_usd_cents=500 + i % 5000,
                          sessions=sessions)


async def _load(net: LocalNet, codes: list[str], concurrency: int, tag: str,
                risk: bool = False) -> tuple[float, list[float], dict]:
    client = AsyncGatewayClient(net.keys("acqp-1"), net.url["gateway"], net.gateway_entry(), pets=net.pets,
                                authority=net.authority, privacy=net.privacy, timeout=30.0,
                                transport=AiohttpTransport(concurrency))
    directory = await client.directory()
    acqp_keys = net.keys("acqp-1")
    from veilpay.sdk.envelope import SessionSealer

    sessions = SessionSealer()  # one HPKE seal per node per session, as the SDK's own amounts
    lat: list[float] = []
    reasons: dict[str, int] = {}
    codes_seen: dict[str, int] = {}
    queue = list(enumerate(codes))

    async def worker() -> None:
        while queue:
            i, code = queue.pop()
            t = time.perf_counter()
            rid = f"{tag}-{i}"
            ans = await client.pay(rid, {"currency": "JPY", "value": str(500 + i % 5000)}, code,
                                   {"orderId": f"o{i}", "goods": "green tea x2", "merchant": "Kyoto Tea House",
                                    "buyer": {"email": "buyer@example.com"}}, {"terminalId": "T-17", "ip": "198.51.100.7"},
                                   risk_features=_risk_features(acqp_keys, directory, rid, i, sessions) if risk else None)
            lat.append(time.perf_counter() - t)
            codes_seen[ans.code] = codes_seen.get(ans.code, 0) + 1
            if ans.risk_result is not None:
                key = f"{ans.risk_result['decision']}:{ans.risk_result['reason']}"
                reasons[key] = reasons.get(key, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    await client.aclose()
    if risk:
        codes_seen = {**codes_seen, "risk": reasons}
    return wall, lat, codes_seen


def _run(coro: Any) -> Any:
    """Run the load generator on uvloop, as the services run."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(pets: bool, n: int, concurrency: int, warmup: int, privacy: str = "", risk: bool = False) -> dict:
    import random

    # the MPP waits up to 2 s for a decision under this load (128 payments in flight queue
    # for their micro-batch); the default 50 ms budget holds for the unloaded latency
    opts = {"risk": {"columns": RISK_COLUMNS, "batch_wait_ms": 1.0, "budget_ms": RISK_BUDGET_MS}} if risk else {}
    with tempfile.TemporaryDirectory() as tmp, LocalNet(Path(tmp), pets=pets, privacy=privacy, **opts) as net:
        net.start_all()
        seq = 200
        users = [f"bench-user-{u}" for u in range(200)]  # payers: the nodes keep velocity windows per payer
        codes = []
        rng = random.Random(7)
        for u in users:
            net.admin("mpp-1", "POST", "/admin/wallets", {"userId": u, "name": "Bench User", "currency": "PHP",
                                                           "balance": 10**14})
            if risk:
                net.admin("mpp-1", "POST", "/admin/risk-profiles",
                          {"userId": u, "features": {c: rng.gauss(0, 1) for c in RISK_COLUMNS if c != "hour"}})
            codes += net.admin("mpp-1", "POST", "/admin/codes", {"userId": u, "count": (n + warmup + seq) // 200 + 1,
                                                                  "ttlSeconds": 3600})["codes"]
        rng.shuffle(codes)
        if risk:
            w = [rng.gauss(0, 0.5) for _ in range(len(RISK_COLUMNS) + D_ACQP)]
            net.publish_risk(w, -3.0, D_ACQP, RISK_RULES)
        _run(_load(net, codes[:warmup], concurrency, "warm", risk))
        _, one, _ = _run(_load(net, codes[warmup:warmup + seq], 1, "seq", risk))
        cpu0 = {name: _cpu_s(p.pid) for name, p in net.procs.items()}
        me0 = time.process_time()
        wall, lat, results = _run(_load(net, codes[warmup + seq:warmup + seq + n], concurrency, "run", risk))
        me1 = time.process_time()
        # Drained when the gateway's outbox has nothing left to deliver (read from its
        # database, so that waiting costs the ACQP nothing); then the ACQP's own count.
        con = sqlite3.connect(f"file:{tmp}/gateway/gateway.db?mode=ro", uri=True)
        t = time.perf_counter()
        while time.perf_counter() - t < 120:
            if con.execute("SELECT COUNT(*) FROM outbox WHERE status = 'PENDING'").fetchone()[0] == 0:
                break
            time.sleep(0.02)
        drain = time.perf_counter() - t
        got = net.admin("acqp-1", "GET", "/admin/notifications")
        feed_drain = 0.0
        if privacy:  # the nodes' feeds must drain too: wait until every share reached its node
            t = time.perf_counter()
            while time.perf_counter() - t < 120:
                left = con.execute("SELECT COUNT(*) FROM node_feed f LEFT JOIN node_cursor c ON c.node = f.node "
                                   "WHERE f.pos IS NULL OR f.pos > COALESCE(c.delivered, 0)").fetchone()[0]
                if left == 0:
                    break
                time.sleep(0.05)
            feed_drain = time.perf_counter() - t
        con.close()
        held = {}
        for node in net.nodes[:2] if privacy else []:  # every share taken: a signed bundle each, none refused
            nc = sqlite3.connect(f"file:{tmp}/{node}/node.db?mode=ro", uri=True)
            held[node] = nc.execute("SELECT COUNT(*) FROM items WHERE kind = 'pay' AND opened").fetchone()[0]
            nc.close()
            if held[node] != n + warmup + seq:
                raise SystemExit(f"{node} holds {held[node]} shares of {n + warmup + seq} payments")
        cpu = {name: round(1000 * (_cpu_s(p.pid) - cpu0[name]) / n, 2) for name, p in net.procs.items()}
        cpu["load_generator"] = round(1000 * (me1 - me0) / n, 2)
        lat.sort()
        return {"bench": "gateway_pay", "pets": pets, "amounts": "shared" if privacy else "clear", "risk": risk,
                "risk_budget_ms": RISK_BUDGET_MS if risk else None,
                "privacy": privacy or None, "node_feed_drain_after_last_pay_s": round(feed_drain, 3),
                "payments": n, "concurrency": concurrency,
                "wall_s": round(wall, 3), "pay_per_s": round(n / wall, 1),
                "p50_ms": round(1000 * statistics.median(lat), 2),
                "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 2),
                "unloaded_p50_ms": round(1000 * statistics.median(one), 2),
                "unloaded_p99_ms": round(1000 * sorted(one)[int(0.99 * (len(one) - 1))], 2), "cpu_ms_per_payment": cpu,
                "results": results, "webhooks_applied": len(got["notifications"]), "shares_held": held,
                "webhook_drain_after_last_pay_s": round(drain, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--payments", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=128,
                    help="payments in flight; throughput is capacity at this load, p50/p99 the latency at it")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--modes", default="off,on,nodes,risk",
                    help="comma-separated: off (PETs off), on (PETs on), nodes (PETs on, amounts shared), risk (nodes, "
                         "and every payment scored at the nodes)")
    a = ap.parse_args()
    modes = {"off": (False, "", False), "on": (True, "", False), "nodes": (True, "semi2k", False),
             "risk": (True, "semi2k", True)}
    chosen = a.modes.split(",")
    if not set(chosen) <= set(modes):
        ap.error(f"--modes: choose from {', '.join(modes)}")
    rows = {}
    for m in chosen:
        pets, privacy, risk = modes[m]
        row = run_mode(pets, a.payments, a.concurrency, a.warmup, privacy, risk)
        print(json.dumps(row), flush=True)
        rows[m] = row
    if {"nodes", "risk"} <= set(rows):
        nodes, scored = rows["nodes"], rows["risk"]
        print(json.dumps({"bench": "gateway_risk_summary", "scored_per_s": scored["pay_per_s"],
                          "shared_per_s": nodes["pay_per_s"],
                          "scored_over_shared_ratio": round(scored["pay_per_s"] / nodes["pay_per_s"], 3),
                          "target_ratio": 0.7,
                          "unloaded_p50_added_ms": round(scored["unloaded_p50_ms"] - nodes["unloaded_p50_ms"], 2),
                          "target_added_p50_ms": 5, "scored_unloaded_p99_ms": scored["unloaded_p99_ms"],
                          "scored_p99_ms": scored["p99_ms"],
                          "cpu_ms_per_payment_all": {m: round(sum(r["cpu_ms_per_payment"].values()), 2)
                                                     for m, r in (("shared", nodes), ("scored", scored))}}))
    if not {"off", "on", "nodes"} <= set(rows):
        return
    off, on, nodes = rows["off"], rows["on"], rows["nodes"]
    print(json.dumps({"bench": "gateway_summary", "pets_on_per_s": on["pay_per_s"], "pets_off_per_s": off["pay_per_s"],
                      "pets_ratio": round(on["pay_per_s"] / off["pay_per_s"], 3), "target_per_s": 1000,
                      "target_ratio": 0.8, "shared_amounts_per_s": nodes["pay_per_s"],
                      "shared_over_clear_ratio": round(nodes["pay_per_s"] / on["pay_per_s"], 3),
                      "target_shared_ratio": 0.7}))


if __name__ == "__main__":
    main()
