"""Replicas: the node feed's delivery order is given by the relay that holds the
node's lease, and leases for work one replica at a time may do.

Several gateway replicas on one PostgreSQL insert feed rows concurrently, and a row's
``seq`` (taken at insert) does not follow commit order: a relay that delivered up to
seq 102 would never see seq 101 committing after it. So ``seq`` only identifies a
row; ``pos``, the order a node applies, is given to committed rows by the one replica
that holds the node's relay lease, after the positions given before (``assigned``).
Existing rows keep their seq as position.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node_feed") as b:
        b.add_column(sa.Column("pos", sa.BigInteger))
    op.execute("UPDATE node_feed SET pos = seq")
    op.create_index("ix_node_feed_pos", "node_feed", ["node", "pos"])
    op.create_index("ix_node_feed_unplaced", "node_feed", ["node", "seq"], sqlite_where=sa.text("pos IS NULL"),
                    postgresql_where=sa.text("pos IS NULL"))
    with op.batch_alter_table("node_cursor") as b:
        b.add_column(sa.Column("assigned", sa.BigInteger, nullable=False, server_default="0"))
    op.execute("UPDATE node_cursor SET assigned = COALESCE((SELECT MAX(f.seq) FROM node_feed f "
               "WHERE f.node = node_cursor.node), 0)")
    op.execute("INSERT INTO node_cursor (node, delivered, attempts, next_attempt_ms, last_error, assigned) "
               "SELECT node, 0, 0, 0, '', MAX(seq) FROM node_feed "
               "WHERE node NOT IN (SELECT node FROM node_cursor) GROUP BY node")
    op.create_table(
        "leases",
        sa.Column("name", sa.String(80), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("until_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
    with op.batch_alter_table("node_cursor") as b:
        b.drop_column("assigned")
    op.drop_index("ix_node_feed_unplaced", "node_feed")
    op.drop_index("ix_node_feed_pos", "node_feed")
    with op.batch_alter_table("node_feed") as b:
        b.drop_column("pos")
