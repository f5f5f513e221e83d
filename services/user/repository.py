"""Queries on the users table; the session (and its transaction) belongs to the caller."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.user.models import UserRow


async def get(session: AsyncSession, user_id: str) -> UserRow | None:
    return await session.get(UserRow, user_id)


async def page(session: AsyncSession, after_id: str | None, limit: int) -> Sequence[UserRow]:
    """Up to `limit` users after `after_id`, oldest first (ids sort by creation time)."""
    query = select(UserRow).order_by(UserRow.id).limit(limit)
    if after_id is not None:
        query = query.where(UserRow.id > after_id)
    return (await session.scalars(query)).all()
