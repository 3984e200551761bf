"""End-to-end pay throughput, latency and CPU per payment through the real gateway and
reference partners (separate processes on loopback), in two parts.

Modes (``--modes``; SQLite, one gateway): PETs on vs the same code with the field
groups in the clear, and PETs on with amounts secret-shared to privacy nodes (and
scored by them: ``risk``), in one run. One JSON line per mode, with the CPU per payment
of every process (``cpu_ms_per_payment``), their sum (``cpu_ms_per_payment_total``,
the load generator included) and the services' sum (``cpu_ms_per_payment_services``:
gateway, MPP, ACQP and nodes, without the load generator); then a summary that holds
PETs on's total against 1.5 ms and the on/off ratio of totals against 1.2.

Replicas (``--replicas 1,2``; by default both when the PostgreSQL server binaries are
installed, else a skip line): PETs on, clear amounts, the gateway on a throwaway
PostgreSQL (bench/_pg.py: same machine, ``fsync=off``, pg_stat_statements loaded; a
fresh database per run) with 1 and with 2 gateway processes; the load generator
spreads payments over the replicas' URLs round-robin, one SDK client per URL, as a
load balancer would. One JSON line per run: payments/s, p50/p99, CPU per payment of
each process (each replica, and the PostgreSQL server: utime + stime of the
postmaster and its children), and the database's work per payment: statements
(pg_stat_statements, the gateway's role in its database; BEGIN and COMMIT are
statements too), the top statements by calls, transactions committed and rows
inserted/updated/fetched (pg_stat_database, read 11 s after the drain so that idle
backends have reported), and WAL bytes (the WAL insert position). The window runs from
the first timed payment to the drained outbox (to the counters' report for
pg_stat_database); the gateways' background work (polls, leases) at its idle rate,
measured over the 11 s before the window, is taken off the statement and counter
figures (``idle_per_s`` and ``raw_per_payment`` show both; the WAL and CPU figures
keep it). On a 2-core machine two replicas compete for the same cores as the partners,
the load generator and PostgreSQL, so throughput need not rise with the second
replica: the figures to read are CPU per payment per process and the database's
statements and commits per payment, from which docs/gateway.md ("Scale on paper")
derives what a larger network needs.

The load generator is the ACQP's payment front: it uses the partner SDK (signing,
HPKE sealing to the MPP, verifying the gateway's answers) over the SDK's aiohttp
transport with a fixed number of payments in flight (128 by default: enough to keep
both cores busy; with 16 the processes wait on each other's batches and a quarter of
the CPU idles, so the rate measures latency, not capacity). Payment codes are issued
by the MPP before the timed part. Webhooks are counted as delivered when the gateway's
outbox (read from its database, SQLite or PostgreSQL) has none pending; the ACQP's
count of applied webhooks is printed beside it.

Run::

    python bench/gateway.py --payments 3000 --modes off,on,nodes --replicas none
    python bench/gateway.py --payments 3000 --modes off,on --replicas 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvloop
from _pg import pg_bindir, postgres_server, server_cpu_s  # bench/_pg.py (run as a script)
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from veilpay.cli.localnet import LocalNet
from veilpay.sdk import AsyncGatewayClient
from veilpay.sdk.transport import AiohttpTransport

RISK_COLUMNS = [f"v{i}" for i in range(1, 10)] + ["hour"]  # the MPP's columns, as in the ULB split
D_ACQP = 20                                                 # V10..V28 and Amount
RISK_BUDGET_MS = 2000.0
SEQ = 200              # payments one at a time, for the unloaded latency
STATS_FLUSH_S = 11.0   # PostgreSQL's idle backends report their counters within 10 s
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


async def _load(net: LocalNet, codes: list[str], concurrency: int, tag: str, risk: bool = False,
                gateways: tuple[str, ...] = ("gateway",)) -> tuple[float, list[float], dict]:
    """Pay with ``codes``, ``concurrency`` at a time; payment ``i`` goes to
    ``gateways[i % len(gateways)]`` (round-robin, as a load balancer would), through
    one client (and connection pool) per gateway URL."""
    clients = [AsyncGatewayClient(net.keys("acqp-1"), net.url[g], net.gateway_entry(), pets=net.pets,
                                  authority=net.authority, privacy=net.privacy, timeout=30.0,
                                  transport=AiohttpTransport(concurrency)) for g in gateways]
    directory = await clients[0].directory()
    for c in clients[1:]:
        await c.directory()
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
            client = clients[i % len(clients)]
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
    for c in clients:
        await c.aclose()
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


class _GatewayDb:
    """The gateway's database as the bench reads it for the drain checks: the SQLite
    file (read-only), or the PostgreSQL database through one connection opened up front
    as the bench's own role (so pg_stat_statements keeps the bench's statements apart
    from the gateway's). ``queries`` counts the transactions it ran."""

    def __init__(self, url: str) -> None:
        self.queries = 0
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None
        if url.startswith("sqlite:///"):
            self._sqlite = sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True)
        else:
            self._engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            self._pg = self._engine.connect()

    def count(self, sql: str) -> int:
        self.queries += 1
        if self._sqlite is not None:
            return self._sqlite.execute(sql).fetchone()[0]
        return self._pg.execute(text(sql)).scalar_one()

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        else:
            self._pg.close()
            self._engine.dispose()


def _drain(db: _GatewayDb, feed: bool) -> tuple[float, float]:
    """Seconds until the gateway's outbox has nothing left to deliver (read from its
    database, so that waiting costs the ACQP nothing), then (``feed``) until every
    share reached its node."""
    t = time.perf_counter()
    while time.perf_counter() - t < 120:
        if db.count("SELECT COUNT(*) FROM outbox WHERE status = 'PENDING'") == 0:
            break
        time.sleep(0.02)
    drain = time.perf_counter() - t
    feed_drain = 0.0
    if feed:
        t = time.perf_counter()
        while time.perf_counter() - t < 120:
            if db.count("SELECT COUNT(*) FROM node_feed f LEFT JOIN node_cursor c ON c.node = f.node "
                        "WHERE f.pos IS NULL OR f.pos > COALESCE(c.delivered, 0)") == 0:
                break
            time.sleep(0.05)
        feed_drain = time.perf_counter() - t
    return drain, feed_drain


TXN_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "START TRANSACTION")
DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "tup_fetched",
               "tup_returned")


class _PgWatch:
    """What the gateway's database costs the PostgreSQL server: its statements
    (pg_stat_statements, the gateway's role in the gateway's database), the database's
    counters (pg_stat_database), the WAL written (the insert position) and the server's
    CPU (/proc). Read as the bench's role from the ``postgres`` database."""

    def __init__(self, monitor_url: str, database: str, postmaster: int) -> None:
        self.engine = create_engine(monitor_url, isolation_level="AUTOCOMMIT")
        self.database, self.postmaster = database, postmaster

    def statements(self) -> dict[int, tuple[int, int, str]]:
        """queryid -> (calls, rows, text)."""
        with self.engine.connect() as c:
            rows = c.execute(text(
                "SELECT s.queryid, s.calls, s.rows, s.query FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid "
                "WHERE d.datname = :db AND r.rolname = 'veilpay'"), {"db": self.database}).all()
        out: dict[int, tuple[int, int, str]] = {}
        for qid, calls, nrows, query in rows:
            c0, r0, _ = out.get(qid, (0, 0, ""))
            out[qid] = (c0 + calls, r0 + nrows, query)
        return out

    def counters(self) -> dict[str, int]:
        with self.engine.connect() as c:
            row = c.execute(text(f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database WHERE datname = :db"),
                            {"db": self.database}).one()
        return dict(zip(DB_COUNTERS, row, strict=True))

    def wal_bytes(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(text("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')")).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


def _short(query: str, width: int = 100) -> str:
    q = " ".join(query.split())
    return q if len(q) <= width else q[:width - 3] + "..."


def _calls(s: dict[int, tuple[int, int, str]]) -> int:
    return sum(v[0] for v in s.values())


def _db_work(n: int, pg: dict[str, Any]) -> dict[str, Any]:
    """The database's work per payment over the window, less the gateways' background
    work at its idle rate (measured over the ``STATS_FLUSH_S`` before the window): the
    statements over the window to the drain, the counters over the window to their
    report ``STATS_FLUSH_S`` later."""
    s0, s1 = pg["s0"], pg["s1"]
    delta = {q: (calls - s0.get(q, (0, 0, ""))[0], rows - s0.get(q, (0, 0, ""))[1], query)
             for q, (calls, rows, query) in s1.items()}
    delta = {q: v for q, v in delta.items() if v[0] > 0}
    idle_s = pg["t0"] - pg["t_idle"]
    idle_calls = (_calls(s0) - _calls(pg["s_idle"])) / idle_s
    calls = _calls(delta) - idle_calls * (pg["t1"] - pg["t0"])
    control = sum(v[0] for v in delta.values() if v[2].lstrip().upper().startswith(TXN_CONTROL))
    top = sorted(delta.values(), key=lambda v: -v[0])[:8]
    out: dict[str, Any] = {
        "window_s": round(pg["t1"] - pg["t0"], 2), "counters_window_s": round(pg["t2"] - pg["t0"], 2),
        "statements_per_payment": round(calls / n, 2),
        "statements_per_payment_without_begin_commit": round((calls - control) / n, 2),
        "top_statements": [{"calls_per_payment": round(c / n, 3), "rows_per_payment": round(r / n, 2),
                            "query": _short(q)} for c, r, q in top],
        "idle_statements_per_s": round(idle_calls, 1),
        "wal_bytes_per_payment": round((pg["wal1"] - pg["wal0"]) / n),
        "idle_per_s": {}, "raw_per_payment": {},
    }
    c_idle, c0, c1 = pg["c_idle"], pg["c0"], pg["c1"]
    for k in DB_COUNTERS:
        rate = (c0[k] - c_idle[k]) / idle_s
        raw = c1[k] - c0[k] - (pg["own_xacts"] if k == "xact_commit" else 0)
        out["idle_per_s"][k] = round(rate, 1)
        out["raw_per_payment"][k] = round(raw / n, 2)
        out[f"{k}_per_payment"] = round((raw - rate * (pg["t2"] - pg["t0"])) / n, 2) + 0.0   # no -0.0
    return out


def _issue_codes(net: LocalNet, count: int, risk: bool) -> list[str]:
    """Wallets for 200 payers at the MPP and ``count`` (or a few more) payment codes."""
    import random

    users = [f"bench-user-{u}" for u in range(200)]  # payers: the nodes keep velocity windows per payer
    codes = []
    rng = random.Random(7)
    for u in users:
        net.admin("mpp-1", "POST", "/admin/wallets", {"userId": u, "name": "Bench User", "currency": "PHP",
                                                       "balance": 10**14})
        if risk:
            net.admin("mpp-1", "POST", "/admin/risk-profiles",
                      {"userId": u, "features": {c: rng.gauss(0, 1) for c in RISK_COLUMNS if c != "hour"}})
        codes += net.admin("mpp-1", "POST", "/admin/codes", {"userId": u, "count": count // 200 + 1,
                                                              "ttlSeconds": 3600})["codes"]
    rng.shuffle(codes)
    if risk:
        w = [rng.gauss(0, 0.5) for _ in range(len(RISK_COLUMNS) + D_ACQP)]
        net.publish_risk(w, -3.0, D_ACQP, RISK_RULES)
    return codes


def _cpu_fields(cpu_s: dict[str, float], n: int) -> dict[str, Any]:
    """CPU ms per payment of each process, and the sums (``services``: without the load
    generator)."""
    total = sum(cpu_s.values())
    return {"cpu_ms_per_payment": {k: round(1000 * v / n, 2) for k, v in cpu_s.items()},
            "cpu_ms_per_payment_total": round(1000 * total / n, 2),
            "cpu_ms_per_payment_services": round(1000 * (total - cpu_s["load_generator"]) / n, 2)}


def _measure(net: LocalNet, n: int, concurrency: int, warmup: int, risk: bool, db_url: str,
             gateways: tuple[str, ...] = ("gateway",), watch: _PgWatch | None = None) -> dict[str, Any]:
    """Warm up, pay ``SEQ`` one at a time, then the timed ``n`` at ``concurrency``; wait
    for the webhooks (and the node feed) to drain. CPU is counted from the start of the
    timed part to the end of the drain."""
    codes = _issue_codes(net, n + warmup + SEQ, risk)
    _run(_load(net, codes[:warmup], concurrency, "warm", risk, gateways))
    _, one, _ = _run(_load(net, codes[warmup:warmup + SEQ], 1, "seq", risk, gateways))
    db = _GatewayDb(db_url)
    pg: dict[str, Any] = {}
    if watch is not None:   # the warm-up's counters reach pg_stat_database, then the idle rate
        time.sleep(STATS_FLUSH_S)
        pg["s_idle"], pg["c_idle"], pg["t_idle"] = watch.statements(), watch.counters(), time.perf_counter()
        time.sleep(STATS_FLUSH_S)
        pg["s0"], pg["c0"], pg["wal0"] = watch.statements(), watch.counters(), watch.wal_bytes()
        pg["srv0"], pg["t0"] = server_cpu_s(watch.postmaster), time.perf_counter()
    cpu0 = {name: _cpu_s(p.pid) for name, p in net.procs.items()}
    queries0 = db.queries
    me0 = time.process_time()
    wall, lat, results = _run(_load(net, codes[warmup + SEQ:warmup + SEQ + n], concurrency, "run", risk, gateways))
    me1 = time.process_time()
    drain, feed_drain = _drain(db, net.privacy is not None)
    got = net.admin("acqp-1", "GET", "/admin/notifications")
    cpu_s = {name: _cpu_s(p.pid) - cpu0[name] for name, p in net.procs.items()}
    out: dict[str, Any] = {}
    if watch is not None:
        pg["s1"], pg["wal1"], pg["t1"] = watch.statements(), watch.wal_bytes(), time.perf_counter()
        cpu_s["postgres"] = server_cpu_s(watch.postmaster) - pg["srv0"]
        pg["own_xacts"] = db.queries - queries0
        time.sleep(STATS_FLUSH_S)   # the backends report their counters within 10 s of going idle
        pg["c1"], pg["t2"] = watch.counters(), time.perf_counter()
        out["db"] = _db_work(n, pg)
    db.close()
    cpu_s["load_generator"] = me1 - me0
    lat.sort()
    return {"payments": n, "concurrency": concurrency, "wall_s": round(wall, 3), "pay_per_s": round(n / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 2),
            "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 2),
            "unloaded_p50_ms": round(1000 * statistics.median(one), 2),
            "unloaded_p99_ms": round(1000 * sorted(one)[int(0.99 * (len(one) - 1))], 2),
            **_cpu_fields(cpu_s, n), "results": results, "webhooks_applied": len(got["notifications"]),
            "webhook_drain_after_last_pay_s": round(drain, 3), "node_feed_drain_after_last_pay_s": round(feed_drain, 3),
            **out}


def run_mode(pets: bool, n: int, concurrency: int, warmup: int, privacy: str = "", risk: bool = False) -> dict:
    # the MPP waits up to 2 s for a decision under this load (128 payments in flight queue
    # for their micro-batch); the default 50 ms budget holds for the unloaded latency
    opts = {"risk": {"columns": RISK_COLUMNS, "batch_wait_ms": 1.0, "budget_ms": RISK_BUDGET_MS}} if risk else {}
    with tempfile.TemporaryDirectory() as tmp, LocalNet(Path(tmp), pets=pets, privacy=privacy, **opts) as net:
        net.start_all()
        m = _measure(net, n, concurrency, warmup, risk, f"sqlite:///{tmp}/gateway/gateway.db")
        held = {}
        for node in net.nodes[:2] if privacy else []:  # every share taken: a signed bundle each, none refused
            nc = sqlite3.connect(f"file:{tmp}/{node}/node.db?mode=ro", uri=True)
            held[node] = nc.execute("SELECT COUNT(*) FROM items WHERE kind = 'pay' AND opened").fetchone()[0]
            nc.close()
            if held[node] != n + warmup + SEQ:
                raise SystemExit(f"{node} holds {held[node]} shares of {n + warmup + SEQ} payments")
        return {"bench": "gateway_pay", "pets": pets, "amounts": "shared" if privacy else "clear", "risk": risk,
                "risk_budget_ms": RISK_BUDGET_MS if risk else None, "privacy": privacy or None, **m,
                "shares_held": held}


def run_replicas(replicas: int, n: int, concurrency: int, warmup: int, server_url: str, postmaster: int) -> dict:
    """PETs on, clear amounts, the gateway on the bench's PostgreSQL (a fresh database)
    with ``replicas`` gateway processes; payments spread over them round-robin."""
    name = f"bench_gw_{replicas}_{uuid.uuid4().hex[:8]}"
    base = server_url.rsplit("/", 1)[0]
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    fresh = create_engine(f"{base}/{name}", isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with fresh.connect() as c:
        c.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    fresh.dispose()
    bench_base = base.replace("//veilpay@", "//bench@", 1)
    watch = _PgWatch(f"{bench_base}/postgres", name, postmaster)
    try:
        with tempfile.TemporaryDirectory() as tmp, LocalNet(Path(tmp), pets=True, database=f"{base}/{name}",
                                                            replicas=replicas) as net:
            net.start_all()
            m = _measure(net, n, concurrency, warmup, False, f"{bench_base}/{name}", tuple(net.gateways), watch)
    finally:
        watch.close()
    gw = [g for g in m["cpu_ms_per_payment"] if g.startswith("gateway")]
    return {"bench": "gateway_replicas", "replicas": replicas, "pets": True, "amounts": "clear",
            "database": "postgresql, same machine, fsync=off", "cores": os.cpu_count(), **m,
            "cpu_ms_per_payment_gateways": round(sum(m["cpu_ms_per_payment"][g] for g in gw), 2)}


@contextlib.contextmanager
def _bench_server() -> Iterator[tuple[str, int]]:
    """The bench's PostgreSQL (bench/_pg.py) with pg_stat_statements loaded, a ``bench``
    role for the bench's own reads, and the extension in ``postgres`` for reading it."""
    with postgres_server({"shared_preload_libraries": "pg_stat_statements"}) as (url, pid):
        admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as c:
            c.execute(text("CREATE ROLE bench LOGIN SUPERUSER"))
            c.execute(text("CREATE EXTENSION pg_stat_statements"))
        admin.dispose()
        yield url, pid


def _met(value: float, target: float, below: bool = True) -> dict[str, Any]:
    return {"value": value, "target": target, "met": value <= target if below else value >= target}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--payments", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=128,
                    help="payments in flight; throughput is capacity at this load, p50/p99 the latency at it")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--modes", default="off,on,nodes,risk",
                    help="comma-separated: off (PETs off), on (PETs on), nodes (PETs on, amounts shared), risk (nodes, "
                         "and every payment scored at the nodes); 'none' for none")
    ap.add_argument("--replicas", default="auto",
                    help="gateway replica counts to run on PostgreSQL (PETs on, clear amounts), e.g. 1,2; 'auto': 1,2 "
                         "when the PostgreSQL server binaries are installed; 'none' for none")
    a = ap.parse_args()
    modes = {"off": (False, "", False), "on": (True, "", False), "nodes": (True, "semi2k", False),
             "risk": (True, "semi2k", True)}
    chosen = [m for m in a.modes.split(",") if m and m != "none"]
    if not set(chosen) <= set(modes):
        ap.error(f"--modes: choose from {', '.join(modes)}, or none")
    if a.replicas in ("auto", "none", ""):
        replicas = [1, 2] if a.replicas == "auto" else []
    else:
        try:
            replicas = [int(r) for r in a.replicas.split(",")]
        except ValueError:
            ap.error("--replicas: comma-separated counts, auto or none")
        if min(replicas) < 1:
            ap.error("--replicas: counts of at least 1")
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
                          "cpu_ms_per_payment_all": {m: r["cpu_ms_per_payment_total"]
                                                     for m, r in (("shared", nodes), ("scored", scored))}}), flush=True)
    if {"off", "on"} <= set(rows):
        off, on = rows["off"], rows["on"]
        summary: dict[str, Any] = {
            "bench": "gateway_summary", "pets_on_per_s": on["pay_per_s"], "pets_off_per_s": off["pay_per_s"],
            "pets_ratio": round(on["pay_per_s"] / off["pay_per_s"], 3), "target_per_s": 1000, "target_ratio": 0.8,
            "cpu_ms_per_payment_total": {m: r["cpu_ms_per_payment_total"] for m, r in rows.items()},
            "cpu_ms_per_payment_services": {m: r["cpu_ms_per_payment_services"] for m, r in rows.items()},
            # every process's CPU per payment, load generator included
            "pets_on_cpu_ms_total": _met(on["cpu_ms_per_payment_total"], 1.5),
            "on_over_off_cpu_total": _met(round(on["cpu_ms_per_payment_total"] / off["cpu_ms_per_payment_total"], 3),
                                          1.2)}
        if "nodes" in rows:
            summary.update({"shared_amounts_per_s": rows["nodes"]["pay_per_s"],
                            "shared_over_clear_ratio": round(rows["nodes"]["pay_per_s"] / on["pay_per_s"], 3),
                            "target_shared_ratio": 0.7})
        print(json.dumps(summary), flush=True)
    if not replicas:
        return
    if pg_bindir() is None:
        print(json.dumps({"bench": "gateway_replicas", "skipped": "PostgreSQL server binaries not found "
                          "(/usr/lib/postgresql/*/bin, initdb on PATH)"}), flush=True)
        return
    reps = {}
    with _bench_server() as (url, postmaster):
        for r in replicas:
            reps[r] = run_replicas(r, a.payments, a.concurrency, a.warmup, url, postmaster)
            print(json.dumps(reps[r]), flush=True)
    if {1, 2} <= set(reps):
        one, two = reps[1], reps[2]
        print(json.dumps({
            "bench": "gateway_replicas_summary", "cores": os.cpu_count(),
            "per_s": {"1": one["pay_per_s"], "2": two["pay_per_s"]},
            "two_over_one": round(two["pay_per_s"] / one["pay_per_s"], 3),
            "cpu_ms_per_payment_gateways": {"1": one["cpu_ms_per_payment_gateways"],
                                            "2": two["cpu_ms_per_payment_gateways"]},
            "cpu_ms_per_payment_postgres": {"1": one["cpu_ms_per_payment"]["postgres"],
                                            "2": two["cpu_ms_per_payment"]["postgres"]},
            "statements_per_payment": {"1": one["db"]["statements_per_payment"],
                                       "2": two["db"]["statements_per_payment"]},
            "xact_commit_per_payment": {"1": one["db"]["xact_commit_per_payment"],
                                        "2": two["db"]["xact_commit_per_payment"]}}), flush=True)


if __name__ == "__main__":
    main()
