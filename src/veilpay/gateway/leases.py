"""Named leases in the gateway's database: work that one replica at a time may do.

Replicas of the gateway share one database and no memory. A lease row names the
replica that holds it (``owner``) and when it lapses (``until_ms``); taking it is one
conditional update, so two replicas never both hold it (on PostgreSQL the second
update waits for the first and re-checks the condition). A replica that dies holding
a lease loses it when it lapses; writes made under a lease re-check it in their own
transaction (``renew``), so a replica that was paused past its lease cannot write
over the work of the one that took over."""

from __future__ import annotations

import os
import socket
import time

from sqlalchemy import Connection, bindparam, insert, or_, select, update

from veilpay.crypto.tokens import random_id
from veilpay.gateway.store import leases

__all__ = ["drop", "holder", "replica_id", "renew", "take"]

_TAKE = update(leases).where(leases.c.name == bindparam("b_name"), or_(
    leases.c.until_ms < bindparam("b_now"), leases.c.owner == bindparam("b_me"))).values(
    owner=bindparam("b_me"), until_ms=bindparam("b_until"))
_RENEW = update(leases).where(leases.c.name == bindparam("b_name"), leases.c.owner == bindparam("b_me"),
                              leases.c.until_ms >= bindparam("b_now")).values(until_ms=bindparam("b_until"))
_DROP = update(leases).where(leases.c.name == bindparam("b_name"), leases.c.owner == bindparam("b_me")).values(
    until_ms=0)
_EXISTS = select(leases.c.name).where(leases.c.name == bindparam("b_name"))
_NEW = insert(leases)
_HOLDER = select(leases.c.owner, leases.c.until_ms).where(leases.c.name == bindparam("b_name"),
                                                          leases.c.until_ms >= bindparam("b_now"))


def replica_id() -> str:
    """This process's name as a lease owner: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{random_id('')[:12]}"[:64]


def _now_ms() -> int:
    return int(time.time() * 1000)


def take(conn: Connection, name: str, me: str, ms: int) -> bool:
    """Hold ``name`` for ``ms`` from now if it is free, lapsed or already ours. A
    concurrent first take of a new name can fail with IntegrityError: not taken."""
    now = _now_ms()
    params = {"b_name": name, "b_me": me, "b_now": now, "b_until": now + ms}
    if conn.execute(_TAKE, params).rowcount:
        return True
    if conn.execute(_EXISTS, params).first() is not None:
        return False
    conn.execute(_NEW, {"name": name, "owner": me, "until_ms": now + ms})
    return True


def renew(conn: Connection, name: str, me: str, ms: int) -> bool:
    """Extend ``name`` by ``ms`` from now if we still hold it (in the caller's
    transaction, which then holds its row lock until it commits)."""
    now = _now_ms()
    return bool(conn.execute(_RENEW, {"b_name": name, "b_me": me, "b_now": now, "b_until": now + ms}).rowcount)


def holder(conn: Connection, name: str) -> tuple[str, int] | None:
    """(owner, lapse in ms) of ``name`` while it is held, else None."""
    row = conn.execute(_HOLDER, {"b_name": name, "b_now": _now_ms()}).first()
    return (str(row.owner), int(row.until_ms)) if row is not None else None


def drop(conn: Connection, name: str, me: str) -> None:
    conn.execute(_DROP, {"b_name": name, "b_me": me})
