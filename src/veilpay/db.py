"""Database engines for the services that keep state (gateway, privacy nodes, reference
partners): SQLite in WAL mode is the embedded default, PostgreSQL
(``postgresql+psycopg://``) the production option.

``GroupCommit`` lets the asyncio services commit together the writes of requests
that are handled in the same turn of the event loop: one transaction per turn
instead of one per request. On SQLite a commit, with SQLAlchemy's begin and the
connection checkout around it, costs several times what a small insert does, and a
busy gateway handles several requests per turn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event

from veilpay.errors import ConfigError

__all__ = ["GroupCommit", "make_engine"]

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


class GroupCommit:
    """Units of database work, each a function of an open connection, committed
    together when they arrive in the same turn of the event loop.

    A unit must touch nothing but the connection: if any unit of a group raises, the
    group's transaction is rolled back and every unit runs again in a transaction of
    its own, so one unit's failure (a duplicate key, say) reaches only its own caller
    and the others commit as if they had run alone. A caller learns its unit's result
    only after the transaction that holds it has committed."""

    def __init__(self, engine: Engine, max_group: int = 256) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self.engine, self.max_group = engine, max_group
        self._waiting: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self.groups = 0   # transactions committed or tried, for tests and metrics
        self.units = 0

    async def run(self, work: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._waiting.append((work, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._waiting:
            group, self._waiting = self._waiting[:self.max_group], self._waiting[self.max_group:]
            self._commit(group)

    def _commit(self, group: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]]) -> None:
        live = [(w, f) for w, f in group if not f.done()]  # a caller cancelled before the flush: skip it
        if not live:
            return
        self.groups += 1
        self.units += len(live)
        try:
            with self.engine.begin() as conn:
                results = [w(conn) for w, _ in live]
        except Exception as exc:  # noqa: BLE001 - isolate the failing unit below
            if len(live) == 1:
                _settle(live[0][1], exc=exc)
                return
            log.debug("group commit failed; running its units alone", extra={"event": "group_split",
                                                                              "units": len(live)})
            for w, f in live:
                try:
                    with self.engine.begin() as conn:
                        r = w(conn)
                except Exception as exc1:  # noqa: BLE001 - the unit's caller gets its own error
                    _settle(f, exc=exc1)
                else:
                    _settle(f, result=r)
            return
        for (_, f), r in zip(live, results, strict=True):
            _settle(f, result=r)


def _settle(fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
