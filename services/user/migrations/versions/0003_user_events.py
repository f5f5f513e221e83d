"""Users' versions and the outbox of their events; every user there is announced once
(UserStatusChanged), so that other services' replicas of who is active start complete.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import sqlalchemy as sa
from alembic import op

from services.common.events.outbox import outbox_values
from services.user.convert import user_status_changed

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("version", sa.BigInteger(), server_default="1", nullable=False)
    )
    outbox = op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("publish_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
        sa.UniqueConstraint("position", name=op.f("uq_outbox_position")),
    )
    users = sa.table(
        "users",
        sa.column("id", sa.String),
        sa.column("active", sa.Boolean),
        sa.column("update_time", sa.DateTime(timezone=True)),
        sa.column("version", sa.BigInteger),
    )
    rows = op.get_bind().execute(sa.select(users).order_by(users.c.id)).mappings()
    # A row reads as the user it is (id, active, update_time, version).
    events = [outbox_values(user_status_changed(cast(Any, SimpleNamespace(**row)))) for row in rows]
    if events:
        op.bulk_insert(outbox, events)


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_column("users", "version")
