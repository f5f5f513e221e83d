"""Orders remember what is still to be done about their payment.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Orders placed before payments have none to act on: NONE. Indexed: the sweeper
    # looks up the few orders whose payment is AUTHORIZED (capture to repeat) or
    # REFUNDING (refund to repeat) every pass.
    op.add_column(
        "orders",
        sa.Column("payment_state", sa.String(16), nullable=False, server_default="NONE"),
    )
    op.create_index(op.f("ix_orders_payment_state"), "orders", ["payment_state"])


def downgrade() -> None:
    op.drop_index(op.f("ix_orders_payment_state"), table_name="orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("payment_state")
