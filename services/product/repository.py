"""Every query of the product service. Each method is one transaction of its own (a
reservation and a release are one each, so they are atomic); the use cases see
`ProductRepository`, so their tests can hand them an in-memory one."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db import Database
from services.product.models import (
    RELEASED,
    RESERVED,
    InsufficientStock,
    ProductRow,
    ReservationExists,
    ReservationInFlight,
    ReservationItemRow,
    ReservationRow,
    UnknownProducts,
)

PRODUCTS = ProductRow.__table__
PRODUCT_BY_ID = select(PRODUCTS).where(PRODUCTS.c.id == bindparam("id"))


class ProductRepository(Protocol):
    async def get(self, product_id: str) -> ProductRow | None: ...

    async def get_many(self, ids: Collection[str]) -> dict[str, ProductRow]:
        """Those of `ids` that exist, by id."""
        ...

    async def page(self, after_id: str | None, limit: int) -> Sequence[ProductRow]:
        """Up to `limit` products after `after_id`, oldest first (ids sort by creation time)."""
        ...

    async def add(self, product: ProductRow) -> None: ...

    async def update(self, product_id: str, values: Mapping[str, Any]) -> ProductRow | None:
        """Sets `values` (columns) on the product; None when there is none."""
        ...

    async def reserve(
        self, reservation_id: str, items: Mapping[str, int], now: datetime
    ) -> ReservationRow:
        """Claims the id and takes every item's stock, all in one transaction or nothing.

        Raises ReservationExists when the id is taken (also by a concurrent call that
        committed first), UnknownProducts or InsufficientStock.
        """
        ...

    async def release(self, reservation_id: str, now: datetime) -> tuple[ReservationRow, bool]:
        """Gives back what the reservation took and marks it released; True for the call
        that did. An id never reserved gets a RELEASED tombstone with no items (False), a
        released one is returned as it is (False). Raises ReservationInFlight."""
        ...

    async def delete_released(self, released_before: datetime) -> int:
        """Deletes reservations (tombstones too, with their items) released before the
        cutoff; returns how many."""
        ...


class SqlProductRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, product_id: str) -> ProductRow | None:
        # The hottest read of the mesh (every GetProduct, every order's pricing): a point
        # read without the ORM session.
        return await self._db.read_model(ProductRow, PRODUCT_BY_ID, {"id": product_id})

    async def get_many(self, ids: Collection[str]) -> dict[str, ProductRow]:
        async with self._db.read() as session:
            return await self._get_many(session, ids)

    async def page(self, after_id: str | None, limit: int) -> Sequence[ProductRow]:
        query = select(ProductRow).order_by(ProductRow.id).limit(limit)
        if after_id is not None:
            query = query.where(ProductRow.id > after_id)
        async with self._db.read() as session:
            return (await session.scalars(query)).all()

    async def add(self, product: ProductRow) -> None:
        async with self._db.write() as session:
            session.add(product)

    async def update(self, product_id: str, values: Mapping[str, Any]) -> ProductRow | None:
        async with self._db.write() as session:
            product = await session.get(ProductRow, product_id)
            if product is None:
                return None
            for name, value in values.items():
                setattr(product, name, value)
        return product

    async def reserve(
        self, reservation_id: str, items: Mapping[str, int], now: datetime
    ) -> ReservationRow:
        wanted = sorted(items.items())  # one lock order for every caller: no deadlocks
        try:
            async with self._db.write() as session:
                existing = await session.get(ReservationRow, reservation_id)
                if existing is None:
                    return await self._claim_and_take(session, reservation_id, wanted, now)
        except IntegrityError:
            # The same id was reserved concurrently and committed first.
            async with self._db.read() as session:
                existing = await session.get(ReservationRow, reservation_id)
            if existing is None:
                raise
        # Raised once the transaction has ended: a rollback would expire what it carries.
        raise ReservationExists(existing)

    async def release(self, reservation_id: str, now: datetime) -> tuple[ReservationRow, bool]:
        try:
            async with self._db.write() as session:
                reservation = await session.get(
                    ReservationRow, reservation_id, with_for_update=True
                )
                if reservation is None:
                    tombstone = ReservationRow(
                        id=reservation_id,
                        state=RELEASED,
                        create_time=now,
                        release_time=now,
                        items=[],
                    )
                    session.add(tombstone)
                    return tombstone, False
                if reservation.state == RELEASED:
                    return reservation, False
                for item in reservation.items:
                    await self._give_back_stock(session, item.product_id, item.quantity, now)
                reservation.state = RELEASED
                reservation.release_time = now
                return reservation, True
        except IntegrityError:
            # The id was written concurrently: a release's tombstone (nothing left to do)
            # or a reservation that was still open when this release looked.
            async with self._db.read() as session:
                existing = await session.get(ReservationRow, reservation_id)
            if existing is None or existing.state != RELEASED:
                raise ReservationInFlight(reservation_id) from None
            return existing, False

    async def delete_released(self, released_before: datetime) -> int:
        old = select(ReservationRow.id).where(
            ReservationRow.state == RELEASED, ReservationRow.release_time < released_before
        )
        async with self._db.write() as session:
            await session.execute(
                delete(ReservationItemRow)
                .where(ReservationItemRow.reservation_id.in_(old))
                .execution_options(synchronize_session=False)
            )
            result = await session.execute(
                delete(ReservationRow)
                .where(
                    ReservationRow.state == RELEASED, ReservationRow.release_time < released_before
                )
                .execution_options(synchronize_session=False)
            )
        assert isinstance(result, CursorResult)
        return int(result.rowcount)

    async def _claim_and_take(
        self,
        session: AsyncSession,
        reservation_id: str,
        wanted: Sequence[tuple[str, int]],
        now: datetime,
    ) -> ReservationRow:
        reservation = ReservationRow(
            id=reservation_id, state=RESERVED, create_time=now, release_time=None, items=[]
        )
        session.add(reservation)
        await session.flush()  # claims the id first; a concurrent twin waits on it
        failed = [
            pid for pid, qty in wanted if not await self.take_stock_in(session, pid, qty, now)
        ]
        if failed:
            found = await self._get_many(session, failed)
            missing = [pid for pid in failed if pid not in found]
            if missing:
                raise UnknownProducts(missing)
            raise InsufficientStock(failed)
        reservation.items.extend(
            ReservationItemRow(product_id=pid, quantity=qty) for pid, qty in wanted
        )
        return reservation

    async def _get_many(self, session: AsyncSession, ids: Collection[str]) -> dict[str, ProductRow]:
        rows = await session.scalars(select(ProductRow).where(ProductRow.id.in_(ids)))
        return {row.id: row for row in rows}

    async def take_stock_in(
        self, session: AsyncSession, product_id: str, quantity: int, now: datetime
    ) -> bool:
        """Takes `quantity` units in one conditional UPDATE inside the caller's transaction;
        False when short or unknown. (A step of `reserve`, public so a race test can hold
        that transaction open here.)

        The condition is checked by the database on the row it updates, under the
        row's write lock, so concurrent callers (in any number of processes) can
        never take more than there is.
        """
        result = await session.execute(
            update(ProductRow)
            .where(ProductRow.id == product_id, ProductRow.stock >= quantity)
            .values(stock=ProductRow.stock - quantity, update_time=now)
            .execution_options(synchronize_session=False)
        )
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    async def _give_back_stock(
        self, session: AsyncSession, product_id: str, quantity: int, now: datetime
    ) -> None:
        await session.execute(
            update(ProductRow)
            .where(ProductRow.id == product_id)
            .values(stock=ProductRow.stock + quantity, update_time=now)
            .execution_options(synchronize_session=False)
        )
