"""Queries on products and reservations; the session (and its transaction) belongs to the caller."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.times import utcnow
from services.product.models import (
    RELEASED,
    ProductRow,
    ReservationItemRow,
    ReservationRow,
)


async def get(session: AsyncSession, product_id: str) -> ProductRow | None:
    return await session.get(ProductRow, product_id)


async def get_many(session: AsyncSession, ids: Collection[str]) -> dict[str, ProductRow]:
    rows = await session.scalars(select(ProductRow).where(ProductRow.id.in_(ids)))
    return {row.id: row for row in rows}


async def page(session: AsyncSession, after_id: str | None, limit: int) -> Sequence[ProductRow]:
    """Up to `limit` products after `after_id`, oldest first (ids sort by creation time)."""
    query = select(ProductRow).order_by(ProductRow.id).limit(limit)
    if after_id is not None:
        query = query.where(ProductRow.id > after_id)
    return (await session.scalars(query)).all()


async def take_stock(session: AsyncSession, product_id: str, quantity: int) -> bool:
    """Takes `quantity` units in one conditional UPDATE; False when short or unknown.

    The condition is checked by the database on the row it updates, under the
    row's write lock, so concurrent callers (in any number of processes) can
    never take more than there is.
    """
    result = await session.execute(
        update(ProductRow)
        .where(ProductRow.id == product_id, ProductRow.stock >= quantity)
        .values(stock=ProductRow.stock - quantity, update_time=utcnow())
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


async def give_back_stock(session: AsyncSession, product_id: str, quantity: int) -> None:
    await session.execute(
        update(ProductRow)
        .where(ProductRow.id == product_id)
        .values(stock=ProductRow.stock + quantity, update_time=utcnow())
        .execution_options(synchronize_session=False)
    )


async def get_reservation(
    session: AsyncSession, reservation_id: str, *, for_update: bool = False
) -> ReservationRow | None:
    return await session.get(ReservationRow, reservation_id, with_for_update=for_update)


async def delete_released(session: AsyncSession, released_before: datetime) -> int:
    """Deletes reservations (and their items) released before the cutoff."""
    old = select(ReservationRow.id).where(
        ReservationRow.state == RELEASED, ReservationRow.release_time < released_before
    )
    await session.execute(
        delete(ReservationItemRow)
        .where(ReservationItemRow.reservation_id.in_(old))
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(
        delete(ReservationRow)
        .where(ReservationRow.state == RELEASED, ReservationRow.release_time < released_before)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
