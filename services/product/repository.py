"""Every query of the product service. Each method is one transaction of its own (a
reservation and a release are one each, so they are atomic); the use cases see
`ProductRepository`, so their tests can hand them an in-memory one."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from services.common.db import Database, loaded
from services.common.transactions import Transaction
from services.product.models import (
    RELEASED,
    RESERVED,
    InsufficientStock,
    Price,
    ProductRow,
    ReservationExists,
    ReservationInFlight,
    ReservationItemRow,
    ReservationRow,
    Reserved,
    ReservedProduct,
    UnknownProducts,
)

PRODUCTS = cast(Table, ProductRow.__table__)
RESERVATIONS = cast(Table, ReservationRow.__table__)
ITEMS = cast(Table, ReservationItemRow.__table__)
PRODUCT_BY_ID = select(PRODUCTS).where(PRODUCTS.c.id == bindparam("id"))
# get_many on PostgreSQL: past this many ids, one query costs less CPU than a point
# read (a round trip) per id.
POINT_READS_AT_MOST = 8

# The statements of reserve and release (`Database.transaction`), compiled once.
PRODUCT_ID_BY_ID = select(PRODUCTS.c.id).where(PRODUCTS.c.id == bindparam("id"))
CLAIM = insert(RESERVATIONS)
INSERT_ITEM = insert(ITEMS)
# Returns the product's name and price as the stock is taken: the caller prices with them.
TAKE_STOCK = (
    update(PRODUCTS)
    .where(PRODUCTS.c.id == bindparam("product_id"), PRODUCTS.c.stock >= bindparam("quantity"))
    .values(stock=PRODUCTS.c.stock - bindparam("quantity"), update_time=bindparam("now"))
    .returning(
        PRODUCTS.c.id, PRODUCTS.c.name, PRODUCTS.c.price_currency, PRODUCTS.c.price_amount_minor
    )
)
GIVE_BACK = (
    update(PRODUCTS)
    .where(PRODUCTS.c.id == bindparam("product_id"))
    .values(stock=PRODUCTS.c.stock + bindparam("quantity"), update_time=bindparam("now"))
)
RESERVATION_BY_ID = select(RESERVATIONS).where(RESERVATIONS.c.id == bindparam("reservation_id"))
# The release of a reservation still held (no row when there is none).
RELEASE = (
    update(RESERVATIONS)
    .where(RESERVATIONS.c.id == bindparam("reservation_id"), RESERVATIONS.c.state == RESERVED)
    .values(state=RELEASED, release_time=bindparam("now"))
    .returning(RESERVATIONS.c.create_time)
)
ITEMS_OF = (
    select(ITEMS)
    .where(ITEMS.c.reservation_id == bindparam("reservation_id"))
    .order_by(ITEMS.c.product_id)
)


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
    ) -> Reserved:
        """Claims the id and takes every item's stock, all in one transaction or nothing;
        the reservation and its products, named and priced as it took them.

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
        # The hottest read of the mesh (every GetProduct): a point read without the ORM
        # session.
        return await self._db.read_model(ProductRow, PRODUCT_BY_ID, {"id": product_id})

    async def get_many(self, ids: Collection[str]) -> dict[str, ProductRow]:
        # BatchGetProducts: a point read per id costs less than the ORM session's one
        # query, on SQLite always (microseconds each), on PostgreSQL up to a few ids (each
        # is a round trip).
        wanted = list(dict.fromkeys(ids))
        if len(wanted) > POINT_READS_AT_MOST and not self._db.is_sqlite:
            async with self._db.read() as session:
                rows = await session.scalars(select(ProductRow).where(ProductRow.id.in_(wanted)))
                return {row.id: row for row in rows}
        found: dict[str, ProductRow] = {}
        for product_id in wanted:
            product = await self.get(product_id)
            if product is not None:
                found[product_id] = product
        return found

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
    ) -> Reserved:
        # Every order's call: Core statements on the driver, no ORM session. The id is
        # claimed first (a concurrent twin waits on it), then stock is taken in one lock
        # order for every caller (no deadlocks).
        wanted = sorted(items.items())
        try:
            async with self._db.transaction() as tx:
                await tx.execute(
                    CLAIM,
                    {
                        "id": reservation_id,
                        "state": RESERVED,
                        "create_time": now,
                        "release_time": None,
                    },
                )
                products: dict[str, ReservedProduct] = {}
                failed: list[str] = []
                for pid, qty in wanted:
                    product = await self.take_stock_in(tx, pid, qty, now)
                    if product is None:
                        failed.append(pid)
                    else:
                        products[pid] = product
                if failed:
                    missing = [
                        pid
                        for pid in failed
                        if await tx.fetch_one(PRODUCT_ID_BY_ID, {"id": pid}) is None
                    ]
                    if missing:
                        raise UnknownProducts(missing)
                    raise InsufficientStock(failed)
                rows = [
                    {"reservation_id": reservation_id, "product_id": pid, "quantity": qty}
                    for pid, qty in wanted
                ]
                await tx.execute_many(INSERT_ITEM, rows)
        except IntegrityError:
            # The id is taken: by an earlier call, a release's tombstone, or a concurrent
            # twin that committed first.
            existing = await self._stored(reservation_id)
            if existing is None:
                raise
            raise ReservationExists(existing) from None
        return Reserved(_reservation(reservation_id, RESERVED, now, None, rows), products)

    async def release(self, reservation_id: str, now: datetime) -> tuple[ReservationRow, bool]:
        try:
            async with self._db.transaction() as tx:
                # The conditional UPDATE decides which call releases (it waits on the
                # row's lock): the stock is given back once.
                released = await tx.fetch_one(
                    RELEASE, {"reservation_id": reservation_id, "now": now}
                )
                if released is not None:
                    items = await tx.fetch_all(ITEMS_OF, {"reservation_id": reservation_id})
                    for item in items:  # by product id: the lock order of reserve
                        await tx.execute(
                            GIVE_BACK,
                            {
                                "product_id": item["product_id"],
                                "quantity": item["quantity"],
                                "now": now,
                            },
                        )
                    reservation = _reservation(
                        reservation_id, RELEASED, released["create_time"], now, items
                    )
                    return reservation, True
                stored = await tx.fetch_one(RESERVATION_BY_ID, {"reservation_id": reservation_id})
                if stored is None:
                    await tx.execute(
                        CLAIM,
                        {
                            "id": reservation_id,
                            "state": RELEASED,
                            "create_time": now,
                            "release_time": now,
                        },
                    )
                    return _reservation(reservation_id, RELEASED, now, now, []), False
                if stored["state"] != RELEASED:
                    # Committed between the UPDATE and this read (PostgreSQL).
                    raise ReservationInFlight(reservation_id)
                items = await tx.fetch_all(ITEMS_OF, {"reservation_id": reservation_id})
                return _loaded_reservation(stored, items), False
        except IntegrityError:
            # The id was written concurrently: a release's tombstone (nothing left to do)
            # or a reservation that was still open when this release looked.
            existing = await self._stored(reservation_id)
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

    async def _stored(self, reservation_id: str) -> ReservationRow | None:
        """The reservation as committed, with its items (off the hot path: a repeat)."""
        async with self._db.read() as session:
            return await session.get(ReservationRow, reservation_id)

    async def take_stock_in(
        self, tx: Transaction, product_id: str, quantity: int, now: datetime
    ) -> ReservedProduct | None:
        """Takes `quantity` units in one conditional UPDATE inside the caller's transaction;
        the product's name and price, None when short or unknown. (A step of `reserve`,
        public so a race test can hold that transaction open here.)

        The condition is checked by the database on the row it updates, under the
        row's write lock, so concurrent callers (in any number of processes) can
        never take more than there is.
        """
        taken = await tx.fetch_one(
            TAKE_STOCK, {"product_id": product_id, "quantity": quantity, "now": now}
        )
        if taken is None:
            return None
        price = Price(taken["price_currency"], taken["price_amount_minor"])
        return ReservedProduct(taken["id"], taken["name"], price)


def _reservation(
    reservation_id: str,
    state: str,
    create_time: datetime,
    release_time: datetime | None,
    items: Sequence[Mapping[str, Any]],
) -> ReservationRow:
    return _loaded_reservation(
        {
            "id": reservation_id,
            "state": state,
            "create_time": create_time,
            "release_time": release_time,
        },
        items,
    )


def _loaded_reservation(
    row: Mapping[str, Any], items: Sequence[Mapping[str, Any]]
) -> ReservationRow:
    """A reservation and its items as the ORM would load them, in no session."""
    return loaded(
        ReservationRow,
        {**row, "items": [loaded(ReservationItemRow, item) for item in items]},
    )
