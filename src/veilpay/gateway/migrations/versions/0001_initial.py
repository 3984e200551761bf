"""Payments, refunds, the webhook outbox and the replay guard.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payments",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("acqp_id", sa.String(64), nullable=False),
        sa.Column("payment_request_id", sa.String(64), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("mpp_id", sa.String(64), nullable=False),
        sa.Column("code_issuer", sa.String(8), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result_code", sa.String(48), nullable=False),
        sa.Column("result_message", sa.String(256), nullable=False),
        sa.Column("customer_token", sa.String(64)),
        sa.Column("forward", sa.Text, nullable=False),
        sa.Column("customer_info", sa.Text),
        sa.Column("refunded", sa.BigInteger, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("payment_time_ms", sa.BigInteger),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("next_check_ms", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.UniqueConstraint("acqp_id", "payment_request_id", name="uq_payments_request"),
    )
    op.create_index("ix_payments_pending", "payments", ["status", "next_check_ms"])
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("payment_id", sa.String(40), nullable=False),
        sa.Column("acqp_id", sa.String(64), nullable=False),
        sa.Column("refund_request_id", sa.String(64), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result_code", sa.String(48), nullable=False),
        sa.Column("result_message", sa.String(256), nullable=False),
        sa.Column("forward", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("refund_time_ms", sa.BigInteger),
        sa.Column("next_check_ms", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.UniqueConstraint("acqp_id", "refund_request_id", name="uq_refunds_request"),
    )
    op.create_index("ix_refunds_payment_id", "refunds", ["payment_id"])
    op.create_index("ix_refunds_pending", "refunds", ["status", "next_check_ms"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("notify_id", sa.String(48), nullable=False, unique=True),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=False),
        sa.Column("last_error", sa.String(200), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("delivered_ms", sa.BigInteger),
    )
    op.create_index("ix_outbox_due", "outbox", ["status", "next_attempt_ms"])
    op.create_table(
        "seen_requests",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_seen_requests_expires_ms", "seen_requests", ["expires_ms"])


def downgrade() -> None:
    for t in ("seen_requests", "outbox", "refunds", "payments"):
        op.drop_table(t)
