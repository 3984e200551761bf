"""Database engines for the services that keep state (gateway, privacy nodes, reference
partners): SQLite in WAL mode is the embedded default, PostgreSQL
(``postgresql+psycopg://``) the production option.

``GroupCommit`` lets the asyncio services commit together the writes of requests
that are handled in the same turn of the event loop: one transaction per turn
instead of one per request. On SQLite a commit, with SQLAlchemy's begin and the
connection checkout around it, costs several times what a small insert does, and a
busy gateway handles several requests per turn.

``Database`` keeps a service's blocking database calls off its event loop: each unit
of work (a function of an open connection) runs on a bounded pool of threads, and a
``GroupCommit`` on it commits a turn's writes there, one group in flight at a time on
SQLite (one writer) and a few on PostgreSQL. A request that waits on the database
holds a thread, not the loop; the others go on. Why a thread pool and not SQLAlchemy's
asyncio engine: ``bench/db.py`` and docs/gateway.md, storage.

``Prepared`` runs a hot path's fixed Core statement on the DBAPI cursor of an open
connection, inside its transaction, compiled once: SQLAlchemy's work per execution
(cache key, parameter processing, result set-up) costs several times what SQLite
takes to run a small statement."""

from __future__ import annotations

import asyncio
import logging
from collections import namedtuple
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Dialect, Engine, create_engine, event, exc
from sqlalchemy.sql import ClauseElement, Select
from sqlalchemy.sql.compiler import SQLCompiler

from veilpay.errors import ConfigError

__all__ = ["Database", "GroupCommit", "Prepared", "make_engine"]

T = TypeVar("T")
log = logging.getLogger("veilpay.db")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")   # durable across process crashes; WAL fsync at checkpoints
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql+psycopg://...``."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    raise ConfigError(f"database URL must be sqlite:/// or postgresql+psycopg://, not {url.split(':', 1)[0]!r}")


class Prepared:
    """A Core statement compiled once for ``dialect`` and run straight on the DBAPI
    cursor of an open ``Connection``, in the connection's transaction. For a hot
    path's few fixed statements: no per-call compile-cache lookup, parameter
    processing or result object. ``columns``: an INSERT's column names, every one of
    which each call must give (a missing one is a KeyError; others are ignored).
    Parameters are converted as SQLAlchemy converts them (a Boolean on SQLite);
    statements whose result columns need converting, or with expanding (IN)
    parameters, are refused (ValueError). The engine's ``before_cursor_execute``
    listeners see each statement (without an execution context). Database errors come
    back as SQLAlchemy's (``sqlalchemy.exc.IntegrityError`` for a duplicate key), as
    from ``Connection.execute``."""

    def __init__(self, stmt: ClauseElement, dialect: Dialect, columns: Sequence[str] | None = None) -> None:
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect,
                                                  column_keys=list(columns) if columns is not None else None))
        self.sql = compiled.string
        self._dialect = dialect
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        names = list(compiled.positiontup or []) if compiled.positional else list(compiled.binds)
        if getattr(compiled, "escaped_bind_names", None):
            raise ValueError(f"{self.sql!r}: bind names that need escaping")
        defaults: dict[str, Any] = {}
        convert: dict[str, Callable[[Any], Any]] = {}
        for name in dict.fromkeys(names):
            bind = compiled.binds[name]
            if bind.expanding:
                raise ValueError(f"{self.sql!r}: expanding parameter {name!r}")
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                convert[name] = proc
            if not bind.required:
                defaults[name] = bind.effective_value
        prefetch = [c.key for c in [*compiled.insert_prefetch, *compiled.update_prefetch]
                    if columns is None or c.key not in columns]
        if prefetch:  # a Python-side default the execution context would compute
            raise ValueError(f"{self.sql!r}: give {', '.join(prefetch)} (columns with defaults)")
        self._names, self._defaults, self._positional = names, defaults, bool(compiled.positional)
        self._convert = list(convert.items())
        self._row: Any = None
        if isinstance(stmt, Select):
            cols = list(stmt.selected_columns)
            for c in cols:
                if c.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
                    raise ValueError(f"{self.sql!r}: column {c.key!r} needs type conversion on {dialect.name}")
            self._row = namedtuple("Row", [c.key for c in cols])  # type: ignore[misc]  # noqa: PYI024

    def _execute(self, conn: Connection, params: dict[str, Any]) -> Any:
        if self._defaults or self._convert:
            params = {**self._defaults, **params}
            for name, proc in self._convert:
                params[name] = proc(params[name])
        args: Any = tuple([params[n] for n in self._names]) if self._positional else \
            {n: params[n] for n in self._names}
        cur = conn.connection.cursor()
        if conn.dispatch.before_cursor_execute:
            conn.dispatch.before_cursor_execute(conn, cur, self.sql, args, None, False)
        try:
            cur.execute(self.sql, args)
        except self._dbapi_error as e:
            cur.close()
            raise exc.DBAPIError.instance(self.sql, args, e, self._dbapi_error, dialect=self._dialect) from e
        return cur

    def run(self, conn: Connection, params: dict[str, Any]) -> int:
        """Execute; the number of rows it changed."""
        cur = self._execute(conn, params)
        try:
            return int(cur.rowcount)
        finally:
            cur.close()

    def first(self, conn: Connection, params: dict[str, Any]) -> Any:
        """The first row a SELECT returns (columns by name), or None."""
        cur = self._execute(conn, params)
        try:
            row = cur.fetchone()
        finally:
            cur.close()
        return None if row is None else self._row._make(row)

    def scalar(self, conn: Connection, params: dict[str, Any]) -> Any:
        """The first column of the first row a SELECT returns, or None."""
        cur = self._execute(conn, params)
        try:
            row = cur.fetchone()
        finally:
            cur.close()
        return None if row is None else row[0]


class GroupCommit:
    """Units of database work, each a function of an open connection, committed
    together when they arrive in the same turn of the event loop.

    A unit must touch nothing but the connection: if any unit of a group raises, the
    group's transaction is rolled back and every unit runs again in a transaction of
    its own, so one unit's failure (a duplicate key, say) reaches only its own caller
    and the others commit as if they had run alone. A caller learns its unit's result
    only after the transaction that holds it has committed.

    Without ``executor`` a group commits on the loop's thread. With one, it commits on
    the executor, at most ``in_flight`` groups at once; units that arrive meanwhile wait
    and leave together in the next group, so a busier loop makes larger groups."""

    def __init__(self, engine: Engine, max_group: int = 256, executor: Executor | None = None,
                 in_flight: int = 1) -> None:
        if max_group < 1 or in_flight < 1:
            raise ValueError("max_group and in_flight must be at least 1")
        self.engine, self.max_group, self.executor, self.in_flight = engine, max_group, executor, in_flight
        self._waiting: list[tuple[Callable[[Connection], Any], asyncio.Future[Any], str]] = []
        self._scheduled = False
        self._busy = 0
        self.groups = 0   # transactions committed or tried, for tests and metrics
        self.units = 0

    async def run(self, work: Callable[[Connection], T], order: str = "") -> T:
        """``work``'s result once its group committed. A group runs its units sorted by
        ``order`` (stable): units that lock shared rows (a client's rate-limit row)
        name them, so that two groups in flight at once take those locks in the same
        order and never deadlock (the units of a group are independent, so their order
        changes nothing else)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._waiting.append((work, fut, order))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._waiting and (self.executor is None or self._busy < self.in_flight):
            group, self._waiting = self._waiting[:self.max_group], self._waiting[self.max_group:]
            live = [(w, f) for w, f, _ in sorted(group, key=_order) if not f.done()]  # cancelled: skip it
            if not live:
                continue
            self.groups += 1
            self.units += len(live)
            if self.executor is None:
                for f, outcome in zip([f for _, f in live], self._commit([w for w, _ in live]), strict=True):
                    _settle(f, *outcome)
                continue
            self._busy += 1
            loop = asyncio.get_running_loop()
            done = loop.run_in_executor(self.executor, self._commit, [w for w, _ in live])
            done.add_done_callback(partial(self._landed, futs=[f for _, f in live]))

    def _landed(self, done: asyncio.Future[list[tuple[Any, BaseException | None]]],
                futs: list[asyncio.Future[Any]]) -> None:
        self._busy -= 1
        if done.cancelled():
            for f in futs:
                f.cancel()
        elif done.exception() is not None:  # the pool was shut down under it
            for f in futs:
                _settle(f, exc=done.exception())
        else:
            for f, outcome in zip(futs, done.result(), strict=True):
                _settle(f, *outcome)
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _commit(self, units: list[Callable[[Connection], Any]]) -> list[tuple[Any, BaseException | None]]:
        """(result, error) of each unit: together in one transaction, or, when one of
        them fails, each in its own."""
        try:
            with self.engine.begin() as conn:
                return [(w(conn), None) for w in units]
        except Exception as exc:  # noqa: BLE001 - isolate the failing unit below
            if len(units) == 1:
                return [(None, exc)]
            log.debug("group commit failed; running its units alone", extra={"event": "group_split",
                                                                              "units": len(units)})
        out: list[tuple[Any, BaseException | None]] = []
        for w in units:
            try:
                with self.engine.begin() as conn:
                    out.append((w(conn), None))
            except Exception as exc1:  # noqa: BLE001 - the unit's caller gets its own error
                out.append((None, exc1))
        return out


class Database:
    """A service's engine and the bounded pool of threads that its database calls run
    in, off the event loop. ``read``: a unit on a connection of its own; ``write``: a
    unit in a transaction of its own; ``grouped``: a unit committed with the other
    writes of the same loop turn (``GroupCommit``). A caller that is cancelled while
    its unit runs does not stop the unit: what it wrote stays written, as with a
    client that leaves after its request reached the server."""

    def __init__(self, engine: Engine, threads: int | None = None) -> None:
        sqlite = engine.dialect.name == "sqlite"
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        self.engine = engine
        # PostgreSQL: below the engine's pool (10 + 10 overflow), so no thread waits for a
        # connection; SQLite: one writer at a time anyway, readers need few threads.
        self.threads = threads or (4 if sqlite else 12)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="veilpay-db")
        self.writes = GroupCommit(engine, executor=self._pool, in_flight=1 if sqlite else max(1, self.threads // 3))

    async def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def read(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.connect() as conn:
                return work(conn)
        return await self.call(run)

    async def write(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.begin() as conn:
                return work(conn)
        return await self.call(run)

    async def grouped(self, work: Callable[[Connection], T], order: str = "") -> T:
        return await self.writes.run(work, order)

    def close(self) -> None:
        """Wait for the units running, then close the pool and the engine's connections."""
        self._pool.shutdown(wait=True)
        self.engine.dispose()


def _order(unit: tuple[Any, Any, str]) -> str:
    return unit[2]


def _settle(fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
