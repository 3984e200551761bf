"""Hidden amounts: sealed amounts and refund counts on payments and refunds, the feed
of share envelopes and status changes to each privacy node, and settlement results.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as b:
        b.alter_column("amount", existing_type=sa.BigInteger, nullable=True)
        b.add_column(sa.Column("amount_sealed", sa.Text))
        b.add_column(sa.Column("refund_count", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("refunds") as b:
        b.alter_column("amount", existing_type=sa.BigInteger, nullable=True)
        b.add_column(sa.Column("amount_sealed", sa.Text))
        b.add_column(sa.Column("checked", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "node_feed",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("item", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_node_feed_node", "node_feed", ["node", "seq"])
    op.create_table(
        "node_cursor",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("delivered", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
        sa.Column("last_error", sa.String(200), nullable=False),
    )
    op.create_table(
        "settlement_runs",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.String(300), nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "settlements",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("acqp_id", sa.String(64), primary_key=True),
        sa.Column("mpp_id", sa.String(64), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("payment_count", sa.Integer, nullable=False),
        sa.Column("payment_total", sa.BigInteger, nullable=False),
        sa.Column("refund_count", sa.Integer, nullable=False),
        sa.Column("refund_total", sa.BigInteger, nullable=False),
        sa.Column("excluded", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settlements")
    op.drop_table("settlement_runs")
    op.drop_table("node_cursor")
    op.drop_index("ix_node_feed_node", "node_feed")
    op.drop_table("node_feed")
    with op.batch_alter_table("refunds") as b:
        b.drop_column("checked")
        b.drop_column("amount_sealed")
    with op.batch_alter_table("payments") as b:
        b.drop_column("refund_count")
        b.drop_column("amount_sealed")
