"""GroupCommit: the writes of one event-loop turn in one transaction, each unit's
failure kept to its own caller, and a result only once its transaction committed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from veilpay.db import Database, GroupCommit, Prepared, make_engine

md = MetaData()
items = Table("items", md, Column("k", String(16), primary_key=True), Column("v", Integer, nullable=False))


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    eng = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    md.create_all(eng)
    yield eng
    eng.dispose()


def _put(k: str, v: int) -> Any:
    def work(conn: Any) -> str:
        conn.execute(insert(items), {"k": k, "v": v})
        return k
    return work


def _count(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(items)).scalar_one())


def test_units_of_one_turn_share_a_transaction(engine: Any) -> None:
    g = GroupCommit(engine)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(g.run(_put(f"k{i}", i)) for i in range(20))))

    assert asyncio.run(main()) == [f"k{i}" for i in range(20)]
    assert (g.groups, g.units) == (1, 20)
    assert _count(engine) == 20


def test_units_of_separate_turns_commit_separately_and_are_visible_when_answered(engine: Any) -> None:
    g = GroupCommit(engine)

    async def main() -> None:
        for i in range(3):
            await g.run(_put(f"k{i}", i))
            assert _count(engine) == i + 1  # committed: another connection sees it

    asyncio.run(main())
    assert (g.groups, g.units) == (3, 3)


def test_a_failing_unit_fails_alone(engine: Any) -> None:
    with engine.begin() as conn:
        conn.execute(insert(items), {"k": "taken", "v": 0})
    g = GroupCommit(engine)

    def boom(conn: Any) -> None:
        conn.execute(insert(items), {"k": "half", "v": 1})
        raise ValueError("bad unit")

    async def main() -> list[Any]:
        return list(await asyncio.gather(g.run(_put("a", 1)), g.run(_put("taken", 2)), g.run(boom),
                                         g.run(_put("b", 3)), return_exceptions=True))

    a, dup, bad, b = asyncio.run(main())
    assert (a, b) == ("a", "b")
    assert isinstance(dup, IntegrityError)
    assert isinstance(bad, ValueError)
    with engine.connect() as conn:
        rows = dict(conn.execute(select(items.c.k, items.c.v)).all())
    assert rows == {"taken": 0, "a": 1, "b": 3}  # nothing of the failed units, the rest as if alone
    assert g.groups == 1 and g.units == 4


def test_max_group_splits_a_turn(engine: Any) -> None:
    g = GroupCommit(engine, max_group=4)

    async def main() -> None:
        await asyncio.gather(*(g.run(_put(f"k{i}", i)) for i in range(10)))

    asyncio.run(main())
    assert (g.groups, g.units) == (3, 10)
    assert _count(engine) == 10
    with pytest.raises(ValueError, match="max_group"):
        GroupCommit(engine, max_group=0)


def test_a_cancelled_caller_writes_nothing(engine: Any) -> None:
    g = GroupCommit(engine)

    async def main() -> None:
        t = asyncio.ensure_future(g.run(_put("gone", 1)))
        kept = asyncio.ensure_future(g.run(_put("kept", 2)))
        await asyncio.sleep(0)  # both units queued, the flush not yet run
        t.cancel()
        assert await kept == "kept"
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    with engine.connect() as conn:
        assert conn.execute(select(items.c.k)).scalars().all() == ["kept"]


def test_database_runs_units_off_the_loop_and_groups_what_arrives_meanwhile(engine: Any) -> None:
    """A slow unit holds a pool thread, not the event loop: the loop keeps ticking while
    it runs, and the writes that arrive meanwhile leave together in the next group."""
    import threading
    import time

    db = Database(engine, threads=2)
    release = threading.Event()
    ticks = 0

    def slow(conn: Any) -> str:
        release.wait(5)
        conn.execute(insert(items), {"k": "slow", "v": 0})
        return "slow"

    async def main() -> list[str]:
        nonlocal ticks
        first = asyncio.ensure_future(db.grouped(slow))
        await asyncio.sleep(0)  # its group is in flight
        rest = [asyncio.ensure_future(db.grouped(_put(f"k{i}", i))) for i in range(10)]
        t = time.monotonic()
        while time.monotonic() - t < 0.2:  # the loop is free while the unit waits
            ticks += 1
            await asyncio.sleep(0.01)
        release.set()
        return [await first, *[await r for r in rest]]

    try:
        assert asyncio.run(main()) == ["slow", *[f"k{i}" for i in range(10)]]
    finally:
        db.close()
    assert ticks >= 10
    assert (db.writes.groups, db.writes.units) == (2, 11)  # one in flight on SQLite; the ten waited together
    assert _count(engine) == 11


def test_database_read_write_and_a_failing_unit_in_a_group(engine: Any) -> None:
    db = Database(engine, threads=2)

    async def main() -> tuple[Any, ...]:
        await db.write(_put("a", 1))
        got = await asyncio.gather(db.grouped(_put("b", 2)), db.grouped(_put("a", 9)), db.grouped(_put("c", 3)),
                                   return_exceptions=True)
        n = await db.read(lambda conn: conn.execute(select(func.count()).select_from(items)).scalar_one())
        return (*got, n)

    try:
        b, dup, c, n = asyncio.run(main())
    finally:
        db.close()
    assert (b, c, n) == ("b", "c", 3)
    assert isinstance(dup, IntegrityError)  # only its own caller hears of it


def test_database_refuses_an_empty_pool(engine: Any) -> None:
    with pytest.raises(ValueError, match="threads"):
        Database(engine, threads=0)


def test_prepared_statements_run_in_the_connections_transaction(engine: Any) -> None:
    """A Prepared statement writes and reads what Connection.execute would, inside the
    connection's transaction (rolled back with it), with SQLAlchemy's IntegrityError."""
    put = Prepared(insert(items), engine.dialect, ["k", "v"])
    bump = Prepared(update(items).where(items.c.k == bindparam("b_k")).values(v=items.c.v + bindparam("b_by")),
                    engine.dialect)
    get = Prepared(select(items.c.v, items.c.k.label("key")).where(items.c.k == bindparam("b_k")), engine.dialect)
    big = Prepared(select(items.c.k).where(items.c.v > 5), engine.dialect)  # a literal's bound value
    with engine.begin() as conn:
        assert put.run(conn, {"k": "a", "v": 1, "extra": 0}) == 1
        assert bump.run(conn, {"b_k": "a", "b_by": 9}) == 1 and bump.run(conn, {"b_k": "zz", "b_by": 1}) == 0
        row = get.first(conn, {"b_k": "a"})
        assert (row.v, row.key) == (10, "a") and get.first(conn, {"b_k": "zz"}) is None
        assert big.scalar(conn, {}) == "a"
        with pytest.raises(IntegrityError):
            put.run(conn, {"k": "a", "v": 2})
        with pytest.raises(KeyError):
            put.run(conn, {"k": "b"})
    with pytest.raises(RuntimeError), engine.begin() as conn:
        put.run(conn, {"k": "c", "v": 3})
        raise RuntimeError("roll back")
    assert _count(engine) == 1


def test_prepared_converts_parameters_and_refuses_what_it_cannot_run(engine: Any) -> None:
    """A Boolean parameter is converted as SQLAlchemy converts it; a Boolean result
    column (which SQLAlchemy would convert back) and an expanding IN are refused; the
    engine's before_cursor_execute listeners see the statement."""
    from sqlalchemy import event

    fmd = MetaData()
    flags = Table("flags", fmd, Column("k", String(8), primary_key=True), Column("on", Boolean))
    fmd.create_all(engine)
    put = Prepared(insert(flags), engine.dialect, ["k", "on"])
    seen: list[str] = []

    def listen(_conn: Any, _cur: Any, sql: str, *_: Any) -> None:
        seen.append(sql)
    event.listen(engine, "before_cursor_execute", listen)
    with engine.begin() as conn:
        put.run(conn, {"k": "a", "on": True})
    event.remove(engine, "before_cursor_execute", listen)
    assert seen == [put.sql]
    with engine.connect() as conn:
        assert conn.execute(select(flags.c.on)).scalar_one() is True
    with pytest.raises(ValueError, match="type conversion"):
        Prepared(select(flags.c.on), engine.dialect)
    counted = Table("counted", fmd, Column("k", String(8), primary_key=True), Column("n", Integer, default=0))
    with pytest.raises(ValueError, match="columns with defaults"):
        Prepared(insert(counted), engine.dialect, ["k"])
    with pytest.raises(ValueError, match="expanding"):
        Prepared(select(items.c.k).where(items.c.k.in_(bindparam("b_ks", expanding=True))), engine.dialect)


def test_a_group_runs_its_units_in_the_order_they_name(engine: Any) -> None:
    """Units that name rows they lock run sorted by them within a group (stable), so two
    groups in flight take shared locks in one order; unnamed units keep their turn."""
    g = GroupCommit(engine)
    ran: list[str] = []

    def unit(tag: str) -> Any:
        def work(conn: Any) -> str:
            ran.append(tag)
            return tag
        return work

    async def main() -> list[str]:
        return list(await asyncio.gather(g.run(unit("b1"), "b"), g.run(unit("x")), g.run(unit("a1"), "a"),
                                         g.run(unit("b2"), "b"), g.run(unit("y"))))

    assert asyncio.run(main()) == ["b1", "x", "a1", "b2", "y"]  # each caller its own result
    assert ran == ["x", "y", "a1", "b1", "b2"] and g.groups == 1
