"""Guard rails state: per-day spending per currency, idempotency records of mutating
tool calls, and the audit log.

Spending is reserved before a payment is sent and released if it fails, in one
SQLite transaction each, so two concurrent calls cannot both pass a daily cap. The
audit log is JSON lines with a fixed set of fields: tool, outcome, result code,
amounts and ids; never a payment code, an order description or a refund reason."""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text, create_engine, insert, select, update
from sqlalchemy.exc import IntegrityError

__all__ = ["AUDITED", "AuditLog", "GuardState"]

# Set per tool call by the server's middleware; AuditLog.write marks it, so the
# middleware knows whether the call still needs a line of its own.
AUDITED: contextvars.ContextVar[list[bool]] = contextvars.ContextVar("veilpay_mcp_audited")

_md = MetaData()
usage = Table("usage", _md, Column("day", String(10), primary_key=True), Column("currency", String(3), primary_key=True),
              Column("total", BigInteger, nullable=False))
calls = Table("calls", _md, Column("key", String(80), primary_key=True), Column("tool", String(32), nullable=False),
              Column("fingerprint", String(200), nullable=False), Column("result", Text))

_AUDIT_FIELDS = ("tool", "outcome", "code", "reason", "currency", "value", "paymentId", "paymentRequestId",
                 "refundId", "refundRequestId", "idempotencyKey", "client")


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


class GuardState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})
        _md.create_all(self.engine)

    def reserve(self, currency: str, value: int, cap: int) -> bool:
        """Add ``value`` to today's total if it stays within ``cap``."""
        day = today()
        with contextlib.suppress(IntegrityError), self.engine.begin() as conn:
            conn.execute(insert(usage).values(day=day, currency=currency, total=0))
        with self.engine.begin() as conn:
            n = conn.execute(update(usage).where(usage.c.day == day, usage.c.currency == currency,
                                                 usage.c.total + value <= cap)
                             .values(total=usage.c.total + value)).rowcount
        return bool(n)

    def release(self, currency: str, value: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(usage).where(usage.c.day == today(), usage.c.currency == currency)
                         .values(total=usage.c.total - value))

    def spent(self, currency: str) -> int:
        with self.engine.connect() as conn:
            v = conn.execute(select(usage.c.total).where(usage.c.day == today(), usage.c.currency == currency)).scalar()
        return int(v or 0)

    def claim(self, key: str, tool: str, fingerprint: str) -> tuple[str, dict[str, Any] | None]:
        """("new", None) for a first call; ("same", result) for a repeat with the same
        arguments (result None while the first is still running); ("conflict", None)
        for the key reused with other arguments or another tool."""
        with self.engine.begin() as conn:
            try:
                conn.execute(insert(calls).values(key=key, tool=tool, fingerprint=fingerprint, result=None))
                return "new", None
            except IntegrityError:
                pass
        with self.engine.connect() as conn:
            row = conn.execute(select(calls).where(calls.c.key == key)).one()
        if row.tool != tool or row.fingerprint != fingerprint:
            return "conflict", None
        return "same", json.loads(row.result) if row.result else None

    def record(self, key: str, result: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(calls).where(calls.c.key == key).values(result=json.dumps(result)))

    def forget(self, key: str) -> None:
        """Drop a claim whose call was refused before it reached the gateway."""
        with self.engine.begin() as conn:
            conn.execute(calls.delete().where(calls.c.key == key, calls.c.result.is_(None)))


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
