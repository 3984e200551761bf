"""Guard rails state (SQLite): per-day totals per currency, the idempotency record of
each mutating tool call with the money it holds, and the audit log.

A mutating call is opened in one SQLite transaction that claims its idempotency key,
checks the day's cap (payments taken, or money sent back by refunds and cancels)
and, for money sent back, this payment's running total against the confirmation
threshold, and holds its amount; so two concurrent calls, even from two server
processes on one state file, cannot both pass a cap. The hold stays until the call's
outcome is known: a success keeps it, a failure frees it. The holds also say which
payments were made through this server (``[mcp] touch = "mcp"``).

The audit log is JSON lines with a fixed set of fields: tool, outcome, result code,
amounts and ids; never a payment code, an order description or a refund reason."""

from __future__ import annotations

import contextvars
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

__all__ = ["AUDITED", "AuditLog", "Call", "GuardState", "Hold", "Opened"]

# Set per tool call by the server's middleware; AuditLog.write marks it, so the
# middleware knows whether the call still needs a line of its own.
AUDITED: contextvars.ContextVar[list[bool]] = contextvars.ContextVar("veilpay_mcp_audited")

_md = MetaData()
# payments taken, per UTC day and currency
usage = Table("usage", _md, Column("day", String(10), primary_key=True), Column("currency", String(3), primary_key=True),
              Column("total", BigInteger, nullable=False))
# money sent back (refunds and cancels), per UTC day and currency
money_back = Table("money_back", _md, Column("day", String(10), primary_key=True),
                   Column("currency", String(3), primary_key=True), Column("total", BigInteger, nullable=False))
calls = Table("calls", _md, Column("key", String(80), primary_key=True), Column("tool", String(32), nullable=False),
              Column("fingerprint", String(200), nullable=False), Column("result", Text))
# what each call holds: "open" until its outcome is known, then "done" or "freed"
holds = Table("holds", _md, Column("key", String(80), primary_key=True), Column("kind", String(8), nullable=False),
              Column("day", String(10), nullable=False), Column("currency", String(3), nullable=False),
              Column("value", BigInteger, nullable=False), Column("request_id", String(80), index=True),
              Column("payment_id", String(80), index=True), Column("state", String(8), nullable=False))

_AUDIT_FIELDS = ("tool", "outcome", "code", "reason", "currency", "value", "paymentId", "paymentRequestId",
                 "refundId", "refundRequestId", "idempotencyKey", "client")

Kind = Literal["pay", "refund", "cancel"]
Opened = Literal["new", "same", "conflict", "over the day's cap", "over the confirmation threshold"]


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Hold:
    """The money a call moves: a payment taken (``pay``), or money sent back from
    ``payment_id`` (``refund``, ``cancel``). ``request_id``: the gateway request id the
    call sends (``mcp-<key>``; none for a cancel)."""

    kind: Kind
    currency: str
    value: int
    request_id: str | None = None
    payment_id: str | None = None


@dataclass(frozen=True)
class Call:
    """A mutating call as recorded: its final result once known, and its hold."""

    tool: str
    fingerprint: str
    result: dict[str, Any] | None
    hold: Hold | None


class GuardState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})
        _md.create_all(self.engine)

    # ------------------------------------------------------------ opening a call
    def open(self, key: str, tool: str, fingerprint: str, hold: Hold, day_cap: int,
             confirm_limit: int | None = None) -> Opened:
        """Claim ``key`` for this call and hold its money, all or nothing.

        "new": claimed and held. "same": the key is this call's, claimed before.
        "conflict": the key was used for another call. "over the day's cap": the hold
        would take today's total past ``day_cap``. "over the confirmation threshold":
        the payment's money back through this server would pass ``confirm_limit``
        (given when nobody confirmed this call: another call came first)."""
        day = today()
        table = usage if hold.kind == "pay" else money_back
        with self.engine.connect() as conn:
            try:
                conn.execute(insert(calls).values(key=key, tool=tool, fingerprint=fingerprint, result=None))
            except IntegrityError:
                conn.rollback()
                old = self.call(key)
                return "same" if old is not None and (old.tool, old.fingerprint) == (tool, fingerprint) else "conflict"
            # The insert took SQLite's write lock: nothing else changes the totals
            # until this transaction ends.
            if (confirm_limit is not None and hold.payment_id is not None
                    and self._back_total(conn, hold.payment_id) + hold.value > confirm_limit):
                conn.rollback()
                return "over the confirmation threshold"
            conn.execute(sqlite_insert(table).values(day=day, currency=hold.currency, total=0)
                         .on_conflict_do_nothing())
            n = conn.execute(update(table).where(table.c.day == day, table.c.currency == hold.currency,
                                                 table.c.total + hold.value <= day_cap)
                             .values(total=table.c.total + hold.value)).rowcount
            if not n:
                conn.rollback()
                return "over the day's cap"
            conn.execute(insert(holds).values(key=key, kind=hold.kind, day=day, currency=hold.currency,
                                              value=hold.value, request_id=hold.request_id,
                                              payment_id=hold.payment_id, state="open"))
            conn.commit()
        return "new"

    def call(self, key: str) -> Call | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(calls).where(calls.c.key == key)).first()
            h = conn.execute(select(holds).where(holds.c.key == key)).first()
        if row is None:
            return None
        hold = Hold(h.kind, h.currency, int(h.value), h.request_id, h.payment_id) if h is not None else None
        return Call(row.tool, row.fingerprint, json.loads(row.result) if row.result else None, hold)

    # ------------------------------------------------------------ closing a call
    def finish(self, key: str, result: dict[str, Any], failed: bool, payment_id: str | None = None) -> None:
        """Record a call's final result; a failure frees what it held."""
        with self.engine.begin() as conn:
            conn.execute(update(calls).where(calls.c.key == key).values(result=json.dumps(result)))
            if failed:
                self._free(conn, key)
            else:
                change: dict[str, Any] = {"state": "done"}
                if payment_id is not None:
                    change["payment_id"] = payment_id
                conn.execute(update(holds).where(holds.c.key == key, holds.c.state == "open").values(**change))

    def abandon(self, key: str) -> None:
        """Drop a call that never reached the gateway (refused by the SDK): the key is
        free again and its hold released."""
        with self.engine.begin() as conn:
            conn.execute(calls.delete().where(calls.c.key == key, calls.c.result.is_(None)))
            self._free(conn, key)
            conn.execute(holds.delete().where(holds.c.key == key))

    @staticmethod
    def _free(conn: Connection, key: str) -> None:
        h = conn.execute(select(holds).where(holds.c.key == key, holds.c.state == "open")).first()
        if h is None:
            return
        table = usage if h.kind == "pay" else money_back
        conn.execute(update(table).where(table.c.day == h.day, table.c.currency == h.currency)
                     .values(total=table.c.total - h.value))
        conn.execute(update(holds).where(holds.c.key == key).values(state="freed"))

    # ------------------------------------------------------------ reading
    def spent(self, currency: str) -> int:
        """Payments taken today (held or done)."""
        return self._today(usage, currency)

    def sent_back(self, currency: str) -> int:
        """Money sent back today by refunds and cancels (held or done)."""
        return self._today(money_back, currency)

    def _today(self, table: Table, currency: str) -> int:
        with self.engine.connect() as conn:
            v = conn.execute(select(table.c.total).where(table.c.day == today(), table.c.currency == currency)).scalar()
        return int(v or 0)

    def back_total(self, payment_id: str) -> int:
        """The money this server sent back from one payment (held or done), any day."""
        with self.engine.connect() as conn:
            return self._back_total(conn, payment_id)

    @staticmethod
    def _back_total(conn: Connection, payment_id: str) -> int:
        v = conn.execute(select(func.sum(holds.c.value)).where(and_(
            holds.c.payment_id == payment_id, holds.c.kind.in_(("refund", "cancel")),
            holds.c.state != "freed"))).scalar()
        return int(v or 0)

    def made_here(self, payment_request_id: str) -> bool:
        """Whether this server sent the payment with this paymentRequestId (also one
        recorded before holds were: ``mcp-<key>`` of a create_payment call)."""
        if self._sent("pay", payment_request_id):
            return True
        key = payment_request_id.removeprefix("mcp-")
        if key == payment_request_id:
            return False
        with self.engine.connect() as conn:
            return conn.execute(select(calls.c.key).where(calls.c.key == key, calls.c.tool == "create_payment")
                                .limit(1)).first() is not None

    def refund_made_here(self, refund_request_id: str) -> bool:
        return self._sent("refund", refund_request_id)

    def _sent(self, kind: Kind, request_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(holds.c.key).where(holds.c.kind == kind, holds.c.request_id == request_id)
                                .limit(1)).first() is not None


class AuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()

    def write(self, **fields: Any) -> None:
        flag = AUDITED.get(None)
        if flag is not None:
            flag[0] = True
        rec = {"ts": round(time.time(), 3)}
        rec.update({k: fields[k] for k in _AUDIT_FIELDS if fields.get(k) is not None})
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
