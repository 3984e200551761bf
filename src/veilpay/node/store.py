"""A privacy node's own database (SQLAlchemy 2 Core; SQLite by default, PostgreSQL as
the option). It holds this node's share words of every amount with the metadata its
partner signed, each item's status (the node's own state machine), the feed
position, the disclosure ledger, and what each release revealed.

Share words are stored as signed 64-bit integers (the same bits as the uint64 ring
element). Times are milliseconds since the epoch; a period is kept as its start."""

from __future__ import annotations

import secrets

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
    insert,
    inspect,
    select,
)

from veilpay.db import make_engine
from veilpay.errors import ConfigError

__all__ = ["SCHEMA", "items", "ledger", "meta", "metadata", "noise_key", "open_store", "releases", "state"]

SCHEMA = "3"
metadata = MetaData()

items = Table(
    "items", metadata,
    Column("id", String(40), primary_key=True),            # the gateway's paymentId / refundId
    Column("kind", String(8), nullable=False),             # pay, refund
    Column("payment_id", String(40), index=True),          # refunds: the node's item of the payment refunded
    Column("acqp_id", String(64), nullable=False),         # the signer of the bundle
    Column("mpp_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("w0", BigInteger, nullable=False),
    Column("w1", BigInteger, nullable=False),
    Column("opened", Boolean, nullable=False),             # False: the signed envelope did not open here
    Column("error", String(40), nullable=False, default=""),
    Column("status", String(12), nullable=False),          # NEW SUCCESS FAIL CANCELLED | RESERVED REJECTED SUCCESS RELEASED
    Column("ts_ms", BigInteger, nullable=False),           # the time the ACQP signed
    Column("period_ms", BigInteger, nullable=False),       # the start of the period of ts_ms
    Column("settled_ms", BigInteger),                      # the period whose settlement took it in
    Column("reversed_ms", BigInteger),                     # payments: the period that took back a later cancel
    Column("seq", BigInteger, nullable=False),
    Column("status_seq", BigInteger, nullable=False),      # the feed position that set the status
    Index("ix_items_request", "acqp_id", "kind", "request_id", unique=True),
    Index("ix_items_period", "period_ms", "status"),
    Index("ix_items_unsettled", "status", "settled_ms"),
)

state = Table(
    "state", metadata,
    Column("key", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

meta = Table(
    "meta", metadata,
    Column("key", String(32), primary_key=True),
    Column("value", Text, nullable=False),
)

# What each release revealed and to whom: one row per (kind, subject), so that asking
# again returns the same answer instead of computing a new one.
releases = Table(
    "releases", metadata,
    Column("kind", String(16), primary_key=True),          # refund_check, settle, analytics
    Column("subject", String(40), primary_key=True),       # a period's label, or a refund's id
    Column("params", String(64), nullable=False),          # SHA-256 of what was computed over
    Column("result", Text, nullable=False),                # the public answer (JSON)
    Column("outputs", Text, nullable=False),               # this node's sealed outputs (JSON), if any
    Column("ledger_seq", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

ledger = Table(
    "ledger", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("prev", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("body", Text, nullable=False),                  # the entry, canonical JSON (what the hash covers)
    Column("function", String(16), nullable=False),
    Column("subject", String(40), nullable=False),
    Column("month", String(7), nullable=False),            # the privacy budget's month (analytics)
    Column("epsilon", String(24), nullable=False),         # spent by this release, a decimal
    Column("at_ms", BigInteger, nullable=False),           # when this node recorded it (not hashed)
    Column("sig", Text, nullable=False),                   # this node's signature over hash and at_ms
    Index("ix_ledger_subject", "function", "subject"),
    Index("ix_ledger_month", "function", "month"),
)

# The risk layer (docs/risk.md): its own ledger chain (risk batches run beside the
# gateway's jobs, on their own mesh, so the two must not race for one chain's head),
# the models' shares, the rule sets in force, the velocity events, the decisions.
risk_ledger = Table(
    "risk_ledger", metadata,
    *[Column(c.name, c.type, primary_key=c.primary_key, autoincrement=False if c.primary_key else "auto",
             nullable=c.nullable, unique=c.unique) for c in ledger.columns],
    Index("ix_risk_ledger_subject", "function", "subject"),
)
risk_models = Table(
    "risk_models", metadata,
    Column("model", String(64), primary_key=True),
    Column("meta", Text, nullable=False),                  # mpp, acqp, protocol, frac, d_mpp, d_acqp (JSON)
    Column("words", Text, nullable=False),                 # this node's share words, (d + 1) x words (JSON)
    Column("created_ms", BigInteger, nullable=False),
)
risk_model_parts = Table(
    "risk_model_parts", metadata,
    Column("model", String(64), primary_key=True),
    Column("party", String(64), primary_key=True),
    Column("part", Text, nullable=False),                  # the signed part (JSON)
    Column("words", Text, nullable=False),                 # what this node opened of it (JSON)
)
risk_rules = Table(
    "risk_rules", metadata,
    Column("mpp", String(64), primary_key=True),
    Column("mode", String(8), primary_key=True),           # live, shadow
    Column("version", BigInteger, nullable=False),
    Column("doc", Text, nullable=False),                   # the MPP-signed rule set (JSON)
    Column("adopted_ms", BigInteger, nullable=False),
)
risk_events = Table(
    "risk_events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("token", String(64), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("w0", BigInteger, nullable=False),              # the amount's share words (USD cents)
    Column("w1", BigInteger, nullable=False),
    Index("ix_risk_events_token", "token", "ts_ms"),
)
risk_statements = Table(
    "risk_statements", metadata,
    Column("batch", String(40), primary_key=True),
    Column("mpp", String(64), primary_key=True),
    Column("statements", Text, nullable=False),            # every holder's signed statement (the leader), or its own
)
risk_decisions = Table(
    "risk_decisions", metadata,
    Column("payment", String(130), primary_key=True),      # acqp/requestId
    Column("mpp", String(64), nullable=False),
    Column("decision", String(8), nullable=False),
    Column("shadow", String(8), nullable=False, default=""),
    Column("model", String(64), nullable=False),
    Column("rules", BigInteger, nullable=False),
    Column("batch", String(40), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)


def open_store(url: str) -> Engine:
    """The node's database at ``url``, created on first use. ConfigError for a database
    written by an older node (its items lack the signed metadata; start it afresh)."""
    engine = make_engine(url)
    existing = set(inspect(engine).get_table_names())
    if "items" in existing and "meta" not in existing:
        raise ConfigError(f"{url}: a privacy-node database of an older schema (before signed bundles and the "
                          "disclosure ledger); there are no node migrations: start every node of the network on a "
                          "new database (docs/design.md)")
    metadata.create_all(engine)
    with engine.begin() as conn:
        have = conn.execute(select(meta.c.value).where(meta.c.key == "schema")).scalar()
        if have is None:
            conn.execute(insert(meta), [{"key": "schema", "value": SCHEMA},
                                        {"key": "noise_key", "value": secrets.token_hex(32)}])
        elif have != SCHEMA:
            raise ConfigError(f"{url}: node database schema {have}, this node writes {SCHEMA}")
    return engine


def noise_key(engine: Engine) -> bytes:
    """This node's secret seed for its share of analytics noise (made on first open):
    computing a release again draws the same noise, so a retry reveals nothing new."""
    with engine.connect() as conn:
        v = conn.execute(select(meta.c.value).where(meta.c.key == "noise_key")).scalar()
    if v is None:
        raise ConfigError("the node database has no noise key")
    return bytes.fromhex(v)
