"""A privacy node's own database (SQLAlchemy 2 Core; SQLite by default, PostgreSQL as
the option). It holds this node's share words of every amount, the public metadata the
gateway relayed with them, each item's status, the feed position and finished jobs.
Share words are stored as signed 64-bit integers (the same bits as the uint64 ring
element)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Engine, Index, MetaData, String, Table, Text

from veilpay.db import make_engine

__all__ = ["items", "jobs", "metadata", "open_store", "state"]

metadata = MetaData()

items = Table(
    "items", metadata,
    Column("id", String(40), primary_key=True),            # the gateway's paymentId / refundId
    Column("kind", String(8), nullable=False),             # pay, refund
    Column("payment_id", String(40), index=True),          # refunds: the payment refunded
    Column("acqp_id", String(64), nullable=False),
    Column("mpp_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("w0", BigInteger, nullable=False),
    Column("w1", BigInteger, nullable=False),
    Column("opened", Boolean, nullable=False),             # False: the envelope did not open here
    Column("error", String(40), nullable=False, default=""),
    Column("status", String(12), nullable=False),          # NEW SUCCESS FAIL CANCELLED | RESERVED REJECTED RELEASED
    Column("day", String(10)),                             # UTC settlement date of a SUCCESS
    Column("seq", BigInteger, nullable=False),
    Index("ix_items_request", "acqp_id", "kind", "request_id"),
    Index("ix_items_day", "day", "status"),
)

state = Table(
    "state", metadata,
    Column("key", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

jobs = Table(
    "jobs", metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("params", String(64), nullable=False),          # SHA-256 of the job's parameters
    Column("result", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)


def open_store(url: str) -> Engine:
    engine = make_engine(url)
    metadata.create_all(engine)
    return engine
