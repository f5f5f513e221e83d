"""Product use cases: the catalogue, and stock reservations that are atomic and idempotent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.common.ids import new_id
from services.common.pagination import PageTokens, page_size
from services.common.times import utcnow
from services.product import repository
from services.product.models import (
    RELEASED,
    RESERVED,
    ProductRow,
    ReservationItemRow,
    ReservationRow,
)

log = logging.getLogger("shop.product")

UPDATABLE = ("name", "description", "price", "stock")


@dataclass(frozen=True)
class Price:
    currency_code: str
    amount_minor: int


@dataclass(frozen=True)
class ProductDraft:
    name: str
    description: str
    price: Price
    stock: int


class Catalogue:
    def __init__(self, db: Database, page_tokens: PageTokens) -> None:
        self._db = db
        self._tokens = page_tokens

    async def create(self, draft: ProductDraft) -> ProductRow:
        now = utcnow()
        product = ProductRow(
            id=new_id("prd"),
            name=draft.name.strip(),
            description=draft.description,
            price_currency=draft.price.currency_code,
            price_amount_minor=draft.price.amount_minor,
            stock=draft.stock,
            create_time=now,
            update_time=now,
        )
        async with self._db.write() as session:
            session.add(product)
        return product

    async def get(self, product_id: str) -> ProductRow:
        async with self._db.read() as session:
            product = await repository.get(session, product_id)
        if product is None:
            raise NotFound("product", product_id)
        return product

    async def get_many(self, ids: Sequence[str]) -> list[ProductRow]:
        """All of `ids`, in order; NOT_FOUND naming every missing id."""
        async with self._db.read() as session:
            found = await repository.get_many(session, ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound("product", *missing)
        return [found[i] for i in ids]

    async def list_page(
        self, requested_size: int | None, token: str
    ) -> tuple[Sequence[ProductRow], str]:
        size = page_size(requested_size)
        after = self._tokens.decode(token)
        async with self._db.read() as session:
            rows = await repository.page(session, after, size + 1)
        return self._tokens.page(rows, size, key=lambda row: row.id)

    async def update(self, product_id: str, changes: Mapping[str, Any]) -> ProductRow:
        async with self._db.write() as session:
            product = await repository.get(session, product_id)
            if product is None:
                raise NotFound("product", product_id)
            for name, value in changes.items():
                if name == "price":
                    product.price_currency = value.currency_code
                    product.price_amount_minor = value.amount_minor
                elif name == "name":
                    product.name = str(value).strip()
                else:
                    setattr(product, name, value)
            product.update_time = utcnow()
        return product


class Reservations:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(self, reservation_id: str, items: Mapping[str, int]) -> ReservationRow:
        """Takes the stock of every item in one transaction, or none of it."""
        wanted = dict(sorted(items.items()))  # one lock order for every caller: no deadlocks
        try:
            async with self._db.write() as session:
                existing = await repository.get_reservation(session, reservation_id)
                if existing is not None:
                    return _repeated(existing, wanted)
                now = utcnow()
                reservation = ReservationRow(
                    id=reservation_id, state=RESERVED, create_time=now, release_time=None, items=[]
                )
                session.add(reservation)
                await session.flush()  # claims the id first; a concurrent twin waits on it
                failed = [
                    pid
                    for pid, qty in wanted.items()
                    if not await repository.take_stock(session, pid, qty)
                ]
                if failed:
                    found = await repository.get_many(session, failed)
                    missing = [pid for pid in failed if pid not in found]
                    if missing:
                        raise NotFound("product", *missing)
                    raise FailedPrecondition(
                        "not enough stock for " + ", ".join(failed),
                        "INSUFFICIENT_STOCK",
                        [f"product:{pid}" for pid in failed],
                        product_ids=",".join(failed),
                    )
                reservation.items.extend(
                    ReservationItemRow(product_id=pid, quantity=qty) for pid, qty in wanted.items()
                )
                return reservation
        except IntegrityError:
            # The same id was reserved concurrently and committed first.
            async with self._db.read() as session:
                existing = await repository.get_reservation(session, reservation_id)
            if existing is None:
                raise
            return _repeated(existing, wanted)

    async def release(self, reservation_id: str) -> tuple[ReservationRow, bool]:
        """Gives back what the reservation took, once; True for the call that did.

        A release can meet a reservation whose transaction is still open (on
        PostgreSQL the row is not visible yet): its tombstone insert then waits on
        the reservation's id and fails once that commits. The release is tried
        again, and now finds the committed reservation and gives its stock back.
        """
        try:
            return await self._release_once(reservation_id)
        except IntegrityError:
            return await self._release_once(reservation_id)

    async def _release_once(self, reservation_id: str) -> tuple[ReservationRow, bool]:
        try:
            async with self._db.write() as session:
                reservation = await repository.get_reservation(
                    session, reservation_id, for_update=True
                )
                now = utcnow()
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
                    await repository.give_back_stock(session, item.product_id, item.quantity)
                reservation.state = RELEASED
                reservation.release_time = now
                return reservation, True
        except IntegrityError:
            # The id was written concurrently: a release's tombstone (nothing left to do)
            # or a reservation that committed meanwhile (the caller tries again).
            async with self._db.read() as session:
                existing = await repository.get_reservation(session, reservation_id)
            if existing is None or existing.state != RELEASED:
                raise
            return existing, False

    async def purge(self, released_before: datetime) -> int:
        """Deletes released reservations and tombstones released before the cutoff;
        returns how many. They only exist to refuse a late ReserveStock of the same
        id, which can't come after its order attempt's deadline has long passed."""
        async with self._db.write() as session:
            return await repository.delete_released(session, released_before)

    async def run_purge(self, retention: float, interval: float = 60.0) -> None:
        """Purges released reservations older than `retention` seconds, for ever."""
        while True:
            purged = await self.purge(utcnow() - timedelta(seconds=retention))
            if purged:
                log.info("purged released reservations", extra={"count": purged})
            await asyncio.sleep(interval)


def _repeated(existing: ReservationRow, wanted: Mapping[str, int]) -> ReservationRow:
    """A repeated ReserveStock: the same reservation is a no-op, anything else is refused."""
    if existing.state == RELEASED:
        raise FailedPrecondition(
            f"reservation {existing.id} was already released",
            "RESERVATION_RELEASED",
            [f"reservation:{existing.id}"],
            reservation_id=existing.id,
        )
    held = {item.product_id: item.quantity for item in existing.items}
    if held != dict(wanted):
        raise AlreadyExists(
            f"reservation {existing.id} exists with other items",
            "RESERVATION_MISMATCH",
            reservation_id=existing.id,
        )
    return existing
