"""How the gateway should keep its database calls off the event loop: CPU per payment,
throughput, latency and the loop's longest stall of three designs, on SQLite and on
PostgreSQL.

Designs:

- ``a``: the sync engine, units of work on a bounded thread pool (``veilpay.db.Database``;
  its ``GroupCommit`` commits a loop turn's writes in one transaction on the pool, one
  group in flight on SQLite, ``threads // 3`` on PostgreSQL; reads on the pool too).
- ``b``: SQLAlchemy's asyncio engine (``create_async_engine``: aiosqlite on SQLite,
  psycopg's async mode on PostgreSQL) with ``AsyncGroupCommit`` below, the same group
  commit written for it (a loop turn's writes in one transaction, the same number of
  groups in flight as ``a``, a failing unit isolated the same way); reads and groups
  together hold at most as many connections as ``a`` has threads
  (``--unbounded-async-reads``: no limit on reads, and the pool's overflow connections
  are closed and opened again all the time).
- ``c``: the sync engine called inline on the loop, as the services do today
  (``GroupCommit`` without an executor): the reference; it blocks the loop.

The workload is the pay path's database shape, under asyncio on uvloop, ``--payments``
payments with ``--in-flight`` at a time. Per payment, three grouped writes, one after
the other, with the MPP call simulated between them by ``asyncio.sleep(0.002)``: 1
inserts a replay-guard row (``seen_requests``: client_id, digest), 2 inserts a
``payments`` row (every column), 3 updates that row to SUCCESS under the gateway's
conditional WHERE (status PROCESSING, no cancel requested) and inserts an ``outbox``
row; then one read of the payment by primary key (an inquiry). The tables are the
gateway's own (``veilpay.gateway.store.metadata``, made with ``create_all``), in a
fresh database per run; ``--warmup`` payments run first, untimed.

Backends: a SQLite file in a temp dir, WAL mode (``veilpay.db.make_engine``'s pragmas,
also on the aiosqlite engine); PostgreSQL: a throwaway cluster (``bench/_pg.py``) started as
tests/conftest.py's ``postgres_server`` fixture does it (initdb from
/usr/lib/postgresql/*/bin, trust auth, a socket in the temp dir, and ``-c fsync=off``,
so commits do not wait on the disk; skipped with a printed reason when the binaries are
missing). It runs on the same machine and its cores.

Measured, per (backend, design), one JSON line, the medians over ``--repeat`` runs (the
designs take turns; a fresh database each run): wall time, payments/s, this process's
CPU per payment (``time.process_time``: every thread, the pool's and aiosqlite's
included), on PostgreSQL also the server's CPU per payment (utime + stime of the
postmaster and its children from /proc, exited backends through the postmaster's
cutime/cstime), p50/p99 of a payment's latency (first write to the read's answer), and
the event loop's longest gap: a ticker task sleeps 1 ms in a loop and records the
largest time between its wake-ups (1 ms plus the longest stall), and the 99th
percentile of those gaps. ``gc_max_pause_ms`` is the longest collection of the cyclic
GC in the run: it holds the GIL, so it stops the loop whichever thread triggered it, so
a ``loop_max_gap_ms`` near it is the GC's, not the design's. ``connections_opened``
counts the DBAPI connections opened during the timed part. A last line gives the
CPU-per-payment ratio of ``b`` to ``a`` per backend (process, and process plus server
on PostgreSQL).

Run::

    .venv/bin/pip install -e '.[bench,postgres]'   # aiosqlite, psycopg
    .venv/bin/python bench/db.py                       # 2,000 payments, 128 in flight
    .venv/bin/python bench/db.py --payments 5000 --backends sqlite --designs a,b
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop
from _pg import postgres_server, server_cpu_s  # bench/_pg.py (run as a script)
from sqlalchemy import Connection, and_, bindparam, create_engine, event, insert, select, text, update

from veilpay.db import Database, GroupCommit, _sqlite_pragmas, make_engine
from veilpay.gateway.store import metadata, outbox, payments, seen_requests

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MPP_CALL_S = 0.002
TICK_S = 0.001

# The statements, built once, as the gateway's service builds its hot path's.
INSERT_SEEN = insert(seen_requests)
INSERT_PAYMENT = insert(payments)
INSERT_OUTBOX = insert(outbox)
PAYMENT_BY_ID = select(payments).where(payments.c.id == bindparam("b_id"))
FINISH_PAYMENT = update(payments).where(and_(
    payments.c.id == bindparam("b_id"), payments.c.status == "PROCESSING", payments.c.cancel_requested.is_(False))
).values(status=bindparam("b_status"), result_code=bindparam("b_code"), result_message=bindparam("b_message"),
         customer_token=bindparam("b_token"), customer_info=bindparam("b_info"), risk_result=bindparam("b_risk"),
         payment_time_ms=bindparam("b_paid"), updated_ms=bindparam("b_now"))

FORWARD = json.dumps({"groups": [{"ct": "x" * 344, "head": "h" * 88, "sid": "s" * 22, "to": "mpp-1"}]})
CUSTOMER_INFO = json.dumps({"ct": "c" * 160, "head": "h" * 88, "sid": "s" * 22})
RISK = json.dumps({"decision": "accept", "score": 0.0312, "rules": []})
NOTIFY_BODY = json.dumps({"notifyType": "PAYMENT_RESULT", "paymentId": "p" * 32, "paymentRequestId": "r" * 32,
                          "acquirerId": "acqp-1", "paymentResult": {"resultCode": "SUCCESS", "resultStatus": "S"},
                          "paymentAmount": {"currency": "SGD", "value": "1234"}})


# ------------------------------------------------------------------ the payment's rows
def _now_ms() -> int:
    return int(time.time() * 1000)


def _params(run: str, i: int) -> dict[str, Any]:
    """The parameters of payment ``i``'s statements."""
    now = _now_ms()
    pid = f"{run}{i:08d}".ljust(32, "0")
    seen = {"client_id": "acqp-1", "digest": uuid.uuid4().hex * 2, "expires_ms": now + 600_000}
    row = {"id": pid, "acqp_id": "acqp-1", "payment_request_id": f"req-{pid}", "request_hash": uuid.uuid4().hex * 2,
           "mpp_id": "mpp-1", "code_issuer": "MPP", "currency": "SGD", "amount": 1234, "amount_sealed": None,
           "refund_count": 0, "status": "PROCESSING", "result_code": "PAYMENT_IN_PROCESS", "result_message": "",
           "customer_token": None, "forward": FORWARD, "customer_info": None, "risk_result": None, "refunded": 0,
           "cancel_requested": False, "created_ms": now, "updated_ms": now, "payment_time_ms": None,
           "expires_ms": now + 120_000, "next_check_ms": now + 5_000, "attempts": 0}
    finish = {"b_id": pid, "b_status": "SUCCESS", "b_code": "SUCCESS", "b_message": "", "b_token": "tok-" + pid[:20],
              "b_info": CUSTOMER_INFO, "b_risk": RISK, "b_paid": now, "b_now": now}
    note = {"notify_id": "n-" + pid, "partner_id": "acqp-1", "kind": "notifyPayment", "body": NOTIFY_BODY,
            "status": "PENDING", "attempts": 0, "next_attempt_ms": now, "lease_until_ms": 0, "last_error": "",
            "created_ms": now}
    return {"id": pid, "seen": seen, "row": row, "finish": finish, "note": note}


# Sync units (designs a and c): functions of an open connection.
def _sync_units(p: dict[str, Any]) -> tuple[Callable[[Connection], Any], ...]:
    def guard(conn: Connection) -> None:
        conn.execute(INSERT_SEEN, p["seen"])

    def create(conn: Connection) -> None:
        conn.execute(INSERT_PAYMENT, p["row"])

    def finish(conn: Connection) -> int:
        done = conn.execute(FINISH_PAYMENT, p["finish"]).rowcount
        if done:
            conn.execute(INSERT_OUTBOX, p["note"])
        return done

    def inquiry(conn: Connection) -> Any:
        return conn.execute(PAYMENT_BY_ID, {"b_id": p["id"]}).one()

    return guard, create, finish, inquiry


# Async units (design b): coroutine functions of an open async connection.
def _async_units(p: dict[str, Any]) -> tuple[Callable[[AsyncConnection], Awaitable[Any]], ...]:
    async def guard(conn: AsyncConnection) -> None:
        await conn.execute(INSERT_SEEN, p["seen"])

    async def create(conn: AsyncConnection) -> None:
        await conn.execute(INSERT_PAYMENT, p["row"])

    async def finish(conn: AsyncConnection) -> int:
        done = (await conn.execute(FINISH_PAYMENT, p["finish"])).rowcount
        if done:
            await conn.execute(INSERT_OUTBOX, p["note"])
        return done

    async def inquiry(conn: AsyncConnection) -> Any:
        return (await conn.execute(PAYMENT_BY_ID, {"b_id": p["id"]})).one()

    return guard, create, finish, inquiry


# ------------------------------------------------------------------ design b's group commit
class AsyncGroupCommit:
    """``veilpay.db.GroupCommit`` for an ``AsyncEngine``: units (coroutine functions of
    an open ``AsyncConnection``) that arrive in the same loop turn commit together in
    one transaction, at most ``in_flight`` transactions at once (units that arrive
    meanwhile leave together in the next group). If a unit of a group raises, the group
    is rolled back and each unit runs again in a transaction of its own, so its failure
    reaches only its caller; a caller gets its result once its transaction committed."""

    def __init__(self, engine: AsyncEngine, max_group: int = 256, in_flight: int = 1) -> None:
        if max_group < 1 or in_flight < 1:
            raise ValueError("max_group and in_flight must be at least 1")
        self.engine, self.max_group, self.in_flight = engine, max_group, in_flight
        self._waiting: list[tuple[Callable[[AsyncConnection], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._busy = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.groups = 0
        self.units = 0

    async def run(self, work: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((work, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._waiting and self._busy < self.in_flight:
            group, self._waiting = self._waiting[:self.max_group], self._waiting[self.max_group:]
            live = [(w, f) for w, f in group if not f.done()]
            if not live:
                continue
            self.groups += 1
            self.units += len(live)
            self._busy += 1
            task = loop.create_task(self._group(live))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _group(self, live: list[tuple[Callable[[AsyncConnection], Awaitable[Any]], asyncio.Future[Any]]]) -> None:
        futs = [f for _, f in live]
        try:
            outcomes = await self._commit([w for w, _ in live])
        except BaseException as exc:  # cancelled (the loop is closing): nobody waits on a result
            for f in futs:
                if not f.done():
                    f.set_exception(exc)
            raise
        finally:
            self._busy -= 1
            if self._waiting and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        for f, (result, exc1) in zip(futs, outcomes, strict=True):
            if f.done():
                continue
            if exc1 is not None:
                f.set_exception(exc1)
            else:
                f.set_result(result)

    async def _commit(self, units: list[Callable[[AsyncConnection], Awaitable[Any]]]
                      ) -> list[tuple[Any, BaseException | None]]:
        try:
            async with self.engine.begin() as conn:
                return [(await w(conn), None) for w in units]
        except Exception as exc:  # noqa: BLE001 - isolate the failing unit below
            if len(units) == 1:
                return [(None, exc)]
        out: list[tuple[Any, BaseException | None]] = []
        for w in units:
            try:
                async with self.engine.begin() as conn:
                    out.append((await w(conn), None))
            except Exception as exc1:  # noqa: BLE001 - the unit's caller gets its own error
                out.append((None, exc1))
        return out


# ------------------------------------------------------------------ the three designs
class Design:
    """What a payment calls: ``write`` (a grouped write) and ``read``."""

    name = ""
    groups: Any
    opened = 0   # DBAPI connections the engine opened (a pool that churns opens many)

    def count_connects(self, engine: Any) -> None:
        def connected(*_: Any) -> None:
            self.opened += 1
        event.listen(engine, "connect", connected)

    def units(self, p: dict[str, Any]) -> tuple[Any, ...]:
        return _sync_units(p)

    async def write(self, unit: Any) -> Any:
        raise NotImplementedError

    async def read(self, unit: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class OnPool(Design):
    """a: the sync engine on ``veilpay.db.Database``'s thread pool."""

    name = "a_threadpool"

    def __init__(self, url: str) -> None:
        self.db = Database(make_engine(url))
        self.count_connects(self.db.engine)
        self.groups = self.db.writes

    async def write(self, unit: Any) -> Any:
        return await self.db.grouped(unit)

    async def read(self, unit: Any) -> Any:
        return await self.db.read(unit)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.db.close)


class AsyncEngineDesign(Design):
    """b: SQLAlchemy's asyncio engine (aiosqlite / psycopg async)."""

    name = "b_async_engine"

    def __init__(self, url: str, bounded_reads: bool = True) -> None:
        # Imported here: without greenlet (sqlalchemy[asyncio]) only this design fails.
        from sqlalchemy.ext.asyncio import create_async_engine

        if url.startswith("sqlite"):
            self.engine = create_async_engine(url.replace("sqlite:", "sqlite+aiosqlite:", 1))
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            in_flight, threads = 1, 4
        else:   # make_engine's pool; Database's groups in flight (12 threads // 3)
            self.engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
            in_flight, threads = 4, 12
        self.count_connects(self.engine.sync_engine)
        self.groups = AsyncGroupCommit(self.engine, in_flight=in_flight)
        # At most as many connections in use as Database has threads: reads and groups in
        # flight together. Unbounded, 128 inquiries overflow the pool (10 + 10), whose extra
        # connections are closed on return and opened again (a new server backend each).
        self.reads = asyncio.Semaphore(threads - in_flight if bounded_reads else 1 << 30)

    def units(self, p: dict[str, Any]) -> tuple[Any, ...]:
        return _async_units(p)

    async def write(self, unit: Any) -> Any:
        return await self.groups.run(unit)

    async def read(self, unit: Any) -> Any:
        async with self.reads, self.engine.connect() as conn:
            return await unit(conn)

    async def close(self) -> None:
        await self.engine.dispose()


class Inline(Design):
    """c: the sync engine on the loop's thread (today's services)."""

    name = "c_inline"

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.count_connects(self.engine)
        self.groups = GroupCommit(self.engine)

    async def write(self, unit: Any) -> Any:
        return await self.groups.run(unit)

    async def read(self, unit: Any) -> Any:
        with self.engine.connect() as conn:
            return unit(conn)

    async def close(self) -> None:
        self.engine.dispose()


DESIGNS: dict[str, type[Design]] = {"a": OnPool, "b": AsyncEngineDesign, "c": Inline}


# ------------------------------------------------------------------ one measurement
async def _pay(design: Design, p: dict[str, Any]) -> float:
    guard, create, finish, inquiry = design.units(p)
    t0 = time.perf_counter()
    await design.write(guard)
    await asyncio.sleep(MPP_CALL_S)
    await design.write(create)
    await asyncio.sleep(MPP_CALL_S)
    if await design.write(finish) != 1:
        raise RuntimeError(f"payment {p['id']} was not finished")
    await design.read(inquiry)
    return time.perf_counter() - t0


async def _drive(design: Design, run: str, n: int, in_flight: int) -> list[float]:
    latencies: list[float] = []
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            latencies.append(await _pay(design, _params(run, i)))

    await asyncio.gather(*(worker() for _ in range(min(in_flight, n))))
    return latencies


async def _measure(key: str, url: str, args: argparse.Namespace, postmaster: int | None) -> dict[str, Any]:
    design = AsyncEngineDesign(url, not args.unbounded_async_reads) if key == "b" else DESIGNS[key](url)
    try:
        if args.warmup:
            await _drive(design, "w", args.warmup, args.in_flight)
        groups0, units0, opened0 = design.groups.groups, design.groups.units, design.opened
        gaps: list[float] = []
        pauses: list[float] = []   # the cyclic GC's collections: they stop every thread
        started = [0.0]

        def on_gc(phase: str, _info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses.append(time.perf_counter() - started[0])
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(TICK_S)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        gaps.clear()
        gc.callbacks.append(on_gc)
        srv0 = server_cpu_s(postmaster) if postmaster else None
        cpu0, t0 = time.process_time(), time.perf_counter()
        lat = await _drive(design, "m", args.payments, args.in_flight)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        srv = server_cpu_s(postmaster) - srv0 if postmaster and srv0 is not None else None
        gc.callbacks.remove(on_gc)
        stop.set()
        await tick
    finally:
        await design.close()
    lat.sort()
    n = len(lat)
    groups = design.groups.groups - groups0
    out: dict[str, Any] = {
        "wall_s": round(wall, 3), "payments_per_s": round(n / wall, 1),
        "cpu_ms_per_payment": round(1000 * cpu / n, 3),
        "p50_ms": round(1000 * lat[n // 2], 2), "p99_ms": round(1000 * lat[min(n - 1, int(n * 0.99))], 2),
        "loop_max_gap_ms": round(1000 * max(gaps), 2),
        "loop_p99_gap_ms": round(1000 * sorted(gaps)[int(len(gaps) * 0.99)], 2),
        "gc_max_pause_ms": round(1000 * max(pauses, default=0.0), 2),
        "units_per_group": round((design.groups.units - units0) / groups, 2) if groups else 0.0,
        "connections_opened": design.opened - opened0,
    }
    if srv is not None:
        out["server_cpu_ms_per_payment"] = round(1000 * srv / n, 3)
        out["total_cpu_ms_per_payment"] = round(1000 * (cpu + srv) / n, 3)
    return out


def _prepare(url: str) -> None:
    eng = create_engine(url) if url.startswith("postgresql") else make_engine(url)
    metadata.create_all(eng)
    eng.dispose()


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        base = "fsync=off" if backend == "postgresql" else "file, WAL, synchronous=NORMAL"
        postmaster: int | None = None
        if backend == "postgresql":
            try:
                server_url, postmaster = stack.enter_context(postgres_server())
            except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                print(json.dumps({"backend": backend, "skipped": f"{type(exc).__name__}: {exc}"}), flush=True)
                return results
            admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
            stack.callback(admin.dispose)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="veilpay-bench-db-")))
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in args.designs}
        errors: dict[str, str] = {}
        for r in range(args.repeat):   # the designs take turns, so a drift in the machine's load hits each
            for key in args.designs:
                if key in errors:
                    continue
                try:
                    if backend == "postgresql":
                        name = f"bench_{key}_{r}_{uuid.uuid4().hex[:8]}"
                        with admin.connect() as c:
                            c.execute(text(f"CREATE DATABASE {name}"))
                        url = server_url.rsplit("/", 1)[0] + "/" + name
                    else:
                        url = f"sqlite:///{tmp / f'{key}{r}.db'}"
                    _prepare(url)
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        runs[key].append(runner.run(_measure(key, url, args, postmaster)))
                except Exception as exc:  # noqa: BLE001 - a design that cannot run says why in its line
                    errors[key] = f"{type(exc).__name__}: {exc}"[:500]
        for key in args.designs:
            line: dict[str, Any] = {"backend": backend, "design": DESIGNS[key].name, "payments": args.payments,
                                    "in_flight": args.in_flight, "server": base, "repeats": len(runs[key])}
            if key == "b" and args.unbounded_async_reads:
                line["reads"] = "unbounded"
            if runs[key]:   # the median of each metric over the repeats
                line.update({m: round(statistics.median(x[m] for x in runs[key]), 3) for m in runs[key][0]})
                line["cpu_ms_per_payment_each"] = [x["cpu_ms_per_payment"] for x in runs[key]]
            if key in errors:
                line["error"] = errors[key]
            results[key] = line
            print(json.dumps(line), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--payments", type=int, default=2000)
    ap.add_argument("--in-flight", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=200, help="untimed payments first (pools, statement cache)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--designs", default="a,b,c")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each design (taking turns); lines give medians")
    ap.add_argument("--unbounded-async-reads", action="store_true",
                    help="b: no limit on reads at once (by default as many as Database has threads)")
    args = ap.parse_args()
    args.designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if unknown := [d for d in args.designs if d not in DESIGNS]:
        ap.error(f"unknown designs {unknown}: choose from a, b, c")
    summary: dict[str, Any] = {"summary": "cpu per payment, b_async_engine / a_threadpool", "cores": os.cpu_count()}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in ("sqlite", "postgresql"):
            ap.error(f"unknown backend {backend!r}: sqlite or postgresql")
        res = run_backend(backend, args)
        a, b = res.get("a", {}), res.get("b", {})
        if "cpu_ms_per_payment" in a and "cpu_ms_per_payment" in b:
            summary[f"{backend}_process"] = round(b["cpu_ms_per_payment"] / a["cpu_ms_per_payment"], 2)
            if "total_cpu_ms_per_payment" in a and "total_cpu_ms_per_payment" in b:
                summary[f"{backend}_process_plus_server"] = round(
                    b["total_cpu_ms_per_payment"] / a["total_cpu_ms_per_payment"], 2)
            for m in ("loop_max_gap_ms", "loop_p99_gap_ms"):
                summary[f"{backend}_{m}_a_b_c"] = [res.get(k, {}).get(m) for k in "abc"]
        else:
            summary[f"{backend}_process"] = None
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
