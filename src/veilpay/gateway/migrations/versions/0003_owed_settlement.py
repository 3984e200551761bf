"""Settlement owed to the partners: the gateway keeps each group's count, its
transactions and the nodes' outputs sealed to the group's acquirer and MPP, and no
longer any total (the old table's totals are dropped with it). Periods may be
shorter than a day, so a period's label is up to 20 characters.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("settlements")
    with op.batch_alter_table("settlement_runs") as b:
        b.alter_column("day", existing_type=sa.String(10), type_=sa.String(20))
    op.create_table(
        "settlements",
        sa.Column("day", sa.String(20), primary_key=True),
        sa.Column("acqp_id", sa.String(64), primary_key=True),
        sa.Column("mpp_id", sa.String(64), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("ids", sa.Text, nullable=False),
        sa.Column("excluded", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settlements")
    with op.batch_alter_table("settlement_runs") as b:
        b.alter_column("day", existing_type=sa.String(20), type_=sa.String(10))
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
