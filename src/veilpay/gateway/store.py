"""The gateway's tables (SQLAlchemy 2 Core), the engine and the Alembic migration.

SQLite in WAL mode is the embedded default; PostgreSQL (``postgresql+psycopg://``) is
the production option. The schema is created and upgraded only by Alembic
(``migrations/``); ``metadata`` here mirrors the newest revision so the code can
build queries."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.exc import OperationalError

from veilpay.db import make_engine as _make_engine
from veilpay.errors import ConfigError, DatabaseUnavailable

__all__ = ["leases", "make_engine", "metadata", "migrate", "node_cursor", "node_feed", "outbox", "payments",
           "rate_windows", "refunds", "seen_requests", "settlement_runs", "settlements"]

metadata = MetaData()

payments = Table(
    "payments", metadata,
    Column("id", String(40), primary_key=True),
    Column("acqp_id", String(64), nullable=False),
    Column("payment_request_id", String(64), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("mpp_id", String(64), nullable=False),
    Column("code_issuer", String(8), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger),                          # NULL when amounts are hidden (privacy nodes)
    Column("amount_sealed", Text),                         # hidden mode: the amount sealed to the MPP and ACQP
    Column("refund_count", Integer, nullable=False, default=0),  # refunds reserved or made
    Column("status", String(16), nullable=False),          # PROCESSING, SUCCESS, FAIL, CANCELLED
    Column("result_code", String(48), nullable=False),
    Column("result_message", String(256), nullable=False, default=""),
    Column("customer_token", String(64)),                  # the MPP's pseudonym for the payer
    Column("forward", Text, nullable=False),               # sealed groups for the MPP, JSON
    Column("customer_info", Text),                         # sealed by the MPP to the ACQP, JSON
    Column("risk_result", Text),                           # the MPP's risk decision, JSON (veilpay.gateway.risk)
    Column("refunded", BigInteger, nullable=False, default=0),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("payment_time_ms", BigInteger),
    Column("expires_ms", BigInteger, nullable=False),
    Column("next_check_ms", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    UniqueConstraint("acqp_id", "payment_request_id", name="uq_payments_request"),
    Index("ix_payments_pending", "status", "next_check_ms"),
)

refunds = Table(
    "refunds", metadata,
    Column("id", String(40), primary_key=True),
    Column("payment_id", String(40), nullable=False, index=True),
    Column("acqp_id", String(64), nullable=False),
    Column("refund_request_id", String(64), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger),
    Column("amount_sealed", Text),
    Column("checked", Boolean, nullable=False, default=False),  # hidden mode: the nodes found it within bounds
    Column("status", String(16), nullable=False),          # PROCESSING, SUCCESS, FAIL
    Column("result_code", String(48), nullable=False),
    Column("result_message", String(256), nullable=False, default=""),
    Column("forward", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("refund_time_ms", BigInteger),
    Column("next_check_ms", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    UniqueConstraint("acqp_id", "refund_request_id", name="uq_refunds_request"),
    Index("ix_refunds_pending", "status", "next_check_ms"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("notify_id", String(48), nullable=False, unique=True),
    Column("partner_id", String(64), nullable=False),
    Column("kind", String(24), nullable=False),            # notifyPayment, notifyRefund
    Column("body", Text, nullable=False),
    Column("status", String(12), nullable=False),          # PENDING, DELIVERED, DEAD
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("lease_until_ms", BigInteger, nullable=False, default=0),
    Column("last_error", String(200), nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("delivered_ms", BigInteger),
    Index("ix_outbox_due", "status", "next_attempt_ms"),
)

node_feed = Table(
    "node_feed", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("node", String(64), nullable=False),
    Column("item", Text, nullable=False),                  # JSON: a share envelope or a status change
    Column("created_ms", BigInteger, nullable=False),
    Column("pos", BigInteger),                             # the order the node applies; NULL until the relay places it
    Index("ix_node_feed_node", "node", "seq"),
    Index("ix_node_feed_pos", "node", "pos"),
    Index("ix_node_feed_unplaced", "node", "seq", sqlite_where=text("pos IS NULL"), postgresql_where=text("pos IS NULL")),
)

node_cursor = Table(
    "node_cursor", metadata,
    Column("node", String(64), primary_key=True),
    Column("delivered", BigInteger, nullable=False),       # the node has applied every item up to this seq
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("last_error", String(200), nullable=False),
    Column("assigned", BigInteger, nullable=False, default=0),   # the last position given to one of its rows
)

# Work that one gateway replica at a time may do: relaying to a node ("relay:<node>"),
# running a job at the nodes ("jobs"). Held until ``until_ms``; a replica that dies
# loses it then.
leases = Table(
    "leases", metadata,
    Column("name", String(80), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("until_ms", BigInteger, nullable=False),
)

settlement_runs = Table(
    "settlement_runs", metadata,
    Column("day", String(20), primary_key=True),           # the period: a UTC day, or a shorter cycle's start
    Column("status", String(16), nullable=False),          # WAITING, DONE
    Column("message", String(300), nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# One settlement group of a period: what the nodes owe its acquirer and MPP. The
# gateway keeps the count and the transactions it routed, and the nodes' outputs
# sealed to the two partners; no total.
settlements = Table(
    "settlements", metadata,
    Column("day", String(20), primary_key=True),
    Column("acqp_id", String(64), primary_key=True),
    Column("mpp_id", String(64), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("kind", String(8), primary_key=True),           # pay, refund, reversal
    Column("count", Integer, nullable=False),
    Column("ids", Text, nullable=False),                   # JSON: the transactions totalled
    Column("excluded", Text, nullable=False),              # JSON: id -> why it was left out
    Column("outputs", Text, nullable=False),               # JSON: node -> partner -> sealed output
)

# Requests per acquirer per second, counted by every replica in the same row: the
# shared rate limit (``rate_limit_per_s``). Rows older than a minute are purged.
rate_windows = Table(
    "rate_windows", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("second", BigInteger, primary_key=True),          # Unix time, whole seconds
    Column("count", Integer, nullable=False),
)

seen_requests = Table(
    "seen_requests", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("digest", String(64), primary_key=True),        # SHA-256 of the request's signature
    Column("expires_ms", BigInteger, nullable=False, index=True),
)


def make_engine(url: str) -> Engine:
    """``veilpay.db.make_engine``; ConfigError naming the extra to install when the
    PostgreSQL driver is missing."""
    try:
        return _make_engine(url)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"database {url.split('://', 1)[0]}: the driver is not installed ({exc.name}); "
                          "pip install 'veilpay[postgres]' (in a clone: pip install -e '.[postgres]')") from exc


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision; DatabaseUnavailable, one line
    naming the server and database, when it cannot be reached."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    try:
        conn = engine.connect()
    except OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[-1] if exc.orig is not None else type(exc).__name__
        raise DatabaseUnavailable(f"database {where}: {reason[:200]}") from exc
    conn.close()
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # replicas starting together on a new database: one migrates, the others wait
            # for it and find the schema at the newest revision
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7310531)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
