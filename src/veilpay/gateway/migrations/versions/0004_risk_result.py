"""Risk decisions: the MPP's riskResult (decision, reason, model and rule-set versions)
kept with the payment, NULL for payments made before or without risk scoring.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as b:
        b.add_column(sa.Column("risk_result", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("payments") as b:
        b.drop_column("risk_result")
