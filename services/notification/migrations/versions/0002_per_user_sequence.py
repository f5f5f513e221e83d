"""Per-user sequence numbers: what stream cursors and page tokens point into.

A notification's `user_seq` is taken from `user_sequences` in the transaction that
stores it; the row lock on the user's counter makes one user's numbers commit in
order, so a reader that has seen number n has seen everything below it, whichever
replica stored it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("user_seq", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE notifications SET user_seq = (SELECT count(*) FROM notifications AS earlier "
        "WHERE earlier.user_id = notifications.user_id AND earlier.seq <= notifications.seq)"
    )
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("user_seq", existing_type=sa.BigInteger(), nullable=False)
        batch.drop_index("ix_notifications_user_id_seq")
        batch.create_unique_constraint(
            op.f("uq_notifications_user_id_user_seq"), ["user_id", "user_seq"]
        )
    op.create_table(
        "user_sequences",
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_sequences")),
    )
    op.execute(
        "INSERT INTO user_sequences (user_id, last_seq) "
        "SELECT user_id, max(user_seq) FROM notifications GROUP BY user_id"
    )


def downgrade() -> None:
    op.drop_table("user_sequences")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_constraint(op.f("uq_notifications_user_id_user_seq"), type_="unique")
        batch.create_index("ix_notifications_user_id_seq", ["user_id", "seq"])
        batch.drop_column("user_seq")
