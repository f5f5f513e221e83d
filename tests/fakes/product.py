"""An in-memory ProductRepository: the product use cases' tests run against it, no database."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from services.product.models import (
    RELEASED,
    RESERVED,
    InsufficientStock,
    ProductRow,
    ReservationExists,
    ReservationInFlight,
    ReservationItemRow,
    ReservationRow,
    Reserved,
    ReservedProduct,
    UnknownProducts,
)


def _product(row: ProductRow) -> ProductRow:
    """A detached copy, as the SQL repository hands out: changing it changes nothing stored."""
    return ProductRow(
        id=row.id,
        name=row.name,
        description=row.description,
        price_currency=row.price_currency,
        price_amount_minor=row.price_amount_minor,
        stock=row.stock,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _reservation(row: ReservationRow) -> ReservationRow:
    return ReservationRow(
        id=row.id,
        state=row.state,
        create_time=row.create_time,
        release_time=row.release_time,
        items=[
            ReservationItemRow(
                reservation_id=row.id, product_id=item.product_id, quantity=item.quantity
            )
            for item in row.items
        ],
    )


class InMemoryProducts:
    def __init__(self) -> None:
        self.products: dict[str, ProductRow] = {}
        self.reservations: dict[str, ReservationRow] = {}
        # How many of the next releases meet a reservation still being written (what
        # the SQL repository reports as ReservationInFlight).
        self.releases_in_flight = 0
        self.purged = asyncio.Event()  # set by every delete_released

    def stock(self, product_id: str) -> int:
        return self.products[product_id].stock

    async def get(self, product_id: str) -> ProductRow | None:
        row = self.products.get(product_id)
        return _product(row) if row is not None else None

    async def get_many(self, ids: Collection[str]) -> dict[str, ProductRow]:
        return {i: _product(self.products[i]) for i in ids if i in self.products}

    async def page(self, after_id: str | None, limit: int) -> Sequence[ProductRow]:
        ids = sorted(i for i in self.products if after_id is None or i > after_id)
        return [_product(self.products[i]) for i in ids[:limit]]

    async def add(self, product: ProductRow) -> None:
        self.products[product.id] = _product(product)

    async def update(self, product_id: str, values: Mapping[str, Any]) -> ProductRow | None:
        row = self.products.get(product_id)
        if row is None:
            return None
        for name, value in values.items():
            setattr(row, name, value)
        return _product(row)

    async def reserve(
        self, reservation_id: str, items: Mapping[str, int], now: datetime
    ) -> Reserved:
        existing = self.reservations.get(reservation_id)
        if existing is not None:
            raise ReservationExists(_reservation(existing))
        wanted = sorted(items.items())
        missing = [pid for pid, _ in wanted if pid not in self.products]
        if missing:
            raise UnknownProducts(missing)
        short = [pid for pid, qty in wanted if self.products[pid].stock < qty]
        if short:
            raise InsufficientStock(short)
        for pid, qty in wanted:
            self.products[pid].stock -= qty
            self.products[pid].update_time = now
        reservation = ReservationRow(
            id=reservation_id,
            state=RESERVED,
            create_time=now,
            release_time=None,
            items=[
                ReservationItemRow(reservation_id=reservation_id, product_id=pid, quantity=qty)
                for pid, qty in wanted
            ],
        )
        self.reservations[reservation_id] = reservation
        return Reserved(
            _reservation(reservation),
            {pid: ReservedProduct.of(self.products[pid]) for pid, _ in wanted},
        )

    async def release(self, reservation_id: str, now: datetime) -> tuple[ReservationRow, bool]:
        if self.releases_in_flight:
            self.releases_in_flight -= 1
            raise ReservationInFlight(reservation_id)
        reservation = self.reservations.get(reservation_id)
        if reservation is None:
            tombstone = ReservationRow(
                id=reservation_id, state=RELEASED, create_time=now, release_time=now, items=[]
            )
            self.reservations[reservation_id] = tombstone
            return _reservation(tombstone), False
        if reservation.state == RELEASED:
            return _reservation(reservation), False
        for item in reservation.items:
            self.products[item.product_id].stock += item.quantity
            self.products[item.product_id].update_time = now
        reservation.state = RELEASED
        reservation.release_time = now
        return _reservation(reservation), True

    async def delete_released(self, released_before: datetime) -> int:
        old = [
            r.id
            for r in self.reservations.values()
            if r.state == RELEASED
            and r.release_time is not None
            and r.release_time < released_before
        ]
        for reservation_id in old:
            del self.reservations[reservation_id]
        self.purged.set()
        return len(old)
