"""Users' versions and the outbox of their events (UserStatusChanged); every user there
is announced once, so that other services' replicas of who is active start complete;
and a trigger that refuses a change of `active` without a new version, so that a writer
that does not announce (a replica older than this, in a rolling update) fails loudly
instead of leaving the replicas stale.

Self-contained (the event is built here, not by the service's code), so that it stays
what it was when the service changes. On SQLite, a later migration that rebuilds `users`
(Alembic's batch mode) drops the trigger with the table: it must create it again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.ids import new_id
from shop.user.v1 import events_pb2

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUBJECT = "user.status.changed"
BATCH = 1000
REFUSAL = "a change of users.active must come with a new version (and its event)"

SQLITE_TRIGGER = f"""
CREATE TRIGGER users_active_needs_a_version BEFORE UPDATE OF active ON users
WHEN NEW.active IS NOT OLD.active AND NEW.version = OLD.version
BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END
"""
POSTGRES_FUNCTION = f"""
CREATE FUNCTION users_active_needs_a_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.active IS DISTINCT FROM OLD.active AND NEW.version = OLD.version THEN
    RAISE EXCEPTION '{REFUSAL}';
  END IF;
  RETURN NEW;
END $$
"""
POSTGRES_TRIGGER = """
CREATE TRIGGER users_active_needs_a_version BEFORE UPDATE ON users
FOR EACH ROW EXECUTE FUNCTION users_active_needs_a_version()
"""


def announced(row: sa.Row[tuple[str, bool, datetime]], now: datetime) -> dict[str, object]:
    """The outbox row announcing one user's status (version 1)."""
    user_id, active, update_time = row
    occurred_at = Timestamp()
    occurred_at.FromDatetime(update_time if update_time.tzinfo else update_time.replace(tzinfo=UTC))
    message = events_pb2.UserStatusChanged(
        event_id=new_id("evt"),
        occurred_at=occurred_at,
        user_id=user_id,
        active=bool(active),
        version=1,
    )
    return {
        "event_id": message.event_id,
        "subject": SUBJECT,
        "payload": message.SerializeToString(),
        "headers": {},
        "create_time": now,
    }


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
    )
    connection = op.get_bind()
    now = datetime.now(UTC)
    after = ""
    while True:  # keyset batches: a large table is never all in memory
        rows = connection.execute(
            sa.select(users.c.id, users.c.active, users.c.update_time)
            .where(users.c.id > after)
            .order_by(users.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        op.bulk_insert(outbox, [announced(row, now) for row in rows])
        after = rows[-1][0]
    if connection.dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        op.execute(POSTGRES_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS users_active_needs_a_version"
        + (" ON users" if op.get_bind().dialect.name == "postgresql" else "")
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS users_active_needs_a_version()")
    op.drop_table("outbox")
    op.drop_column("users", "version")
