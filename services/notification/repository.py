"""Queries on notifications; the session (and its transaction) belongs to the caller."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.notification.models import NotificationRow

# Every replica LISTENs here (PostgreSQL): the payload is the user whose stream has news.
CHANNEL = "shop_notifications"


async def next_user_seq(session: AsyncSession, user_id: str) -> int:
    """The user's next sequence number. The counter row stays locked until the caller's
    transaction ends: the user's notifications commit in the order of their numbers."""
    value = await session.scalar(
        text(
            "INSERT INTO user_sequences (user_id, last_seq) VALUES (:user_id, 1) "
            "ON CONFLICT (user_id) DO UPDATE SET last_seq = user_sequences.last_seq + 1 "
            "RETURNING last_seq"
        ),
        {"user_id": user_id},
    )
    return int(value)


async def announce(session: AsyncSession, user_id: str) -> None:
    """PostgreSQL: tells every replica, when the transaction commits, that the user has
    a new notification (NOTIFY is delivered on commit, and never for a rollback)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_notify(:channel, :user_id)"),
            {
                "channel": CHANNEL,
                "user_id": user_id,
            },
        )


async def after(
    session: AsyncSession, user_id: str, after_seq: int, limit: int
) -> Sequence[NotificationRow]:
    """The user's notifications numbered above `after_seq`, in order."""
    query = (
        select(NotificationRow)
        .where(NotificationRow.user_id == user_id, NotificationRow.user_seq > after_seq)
        .order_by(NotificationRow.user_seq)
        .limit(limit)
    )
    return (await session.scalars(query)).all()


async def newest_seq(session: AsyncSession, user_id: str) -> int:
    """The highest number the user's notifications have reached (0: none yet)."""
    value = await session.scalar(
        select(func.max(NotificationRow.user_seq)).where(NotificationRow.user_id == user_id)
    )
    return int(value or 0)


async def unread_up_to(
    session: AsyncSession, user_id: str, up_to: int
) -> Sequence[NotificationRow]:
    query = (
        select(NotificationRow)
        .where(
            NotificationRow.user_id == user_id,
            NotificationRow.read.is_(False),
            NotificationRow.user_seq <= up_to,
        )
        .order_by(NotificationRow.user_seq)
    )
    return (await session.scalars(query)).all()


async def seq_of_legacy_cursor(session: AsyncSession, user_id: str, seq: int) -> int:
    """A cursor from before per-user numbers pointed at the global `seq`: the user's
    number of the last notification at or before it."""
    value = await session.scalar(
        select(func.max(NotificationRow.user_seq)).where(
            NotificationRow.user_id == user_id, NotificationRow.seq <= seq
        )
    )
    return int(value or 0)


async def page(
    session: AsyncSession, user_id: str, unread_only: bool, before: int | None, limit: int
) -> Sequence[NotificationRow]:
    """One user's notifications, newest first, numbered below `before`."""
    query = (
        select(NotificationRow)
        .where(NotificationRow.user_id == user_id)
        .order_by(NotificationRow.user_seq.desc())
        .limit(limit)
    )
    if unread_only:
        query = query.where(NotificationRow.read.is_(False))
    if before is not None:
        query = query.where(NotificationRow.user_seq < before)
    return (await session.scalars(query)).all()


async def by_ids(
    session: AsyncSession, user_id: str, ids: Sequence[str]
) -> Sequence[NotificationRow]:
    query = select(NotificationRow).where(
        NotificationRow.user_id == user_id, NotificationRow.id.in_(ids)
    )
    return (await session.scalars(query)).all()
