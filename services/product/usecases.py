"""Product use cases: the catalogue, and stock reservations that are atomic and idempotent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.common.ids import new_id
from services.common.pagination import PageTokens, page_size
from services.common.times import utcnow
from services.product.models import (
    RELEASED,
    InsufficientStock,
    ProductDraft,
    ProductRow,
    ReservationExists,
    ReservationInFlight,
    ReservationRow,
    Reserved,
    ReservedProduct,
    UnknownProducts,
)
from services.product.repository import ProductRepository

log = logging.getLogger("shop.product")

UPDATABLE = ("name", "description", "price", "stock")


class Catalogue:
    def __init__(self, repository: ProductRepository, page_tokens: PageTokens) -> None:
        self._repository = repository
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
        await self._repository.add(product)
        return product

    async def get(self, product_id: str) -> ProductRow:
        product = await self._repository.get(product_id)
        if product is None:
            raise NotFound("product", product_id)
        return product

    async def get_many(self, ids: Sequence[str]) -> list[ProductRow]:
        """All of `ids`, in order; NOT_FOUND naming every missing id."""
        found = await self._repository.get_many(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound("product", *missing)
        return [found[i] for i in ids]

    async def list_page(
        self, requested_size: int | None, token: str
    ) -> tuple[Sequence[ProductRow], str]:
        size = page_size(requested_size)
        after = self._tokens.decode(token)
        rows = await self._repository.page(after, size + 1)
        return self._tokens.page(rows, size, key=lambda row: row.id)

    async def update(self, product_id: str, changes: Mapping[str, Any]) -> ProductRow:
        """Applies `changes` (fields of UPDATABLE; the price a `Price`)."""
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "price":
                values["price_currency"] = value.currency_code
                values["price_amount_minor"] = value.amount_minor
            elif name == "name":
                values["name"] = str(value).strip()
            else:
                values[name] = value
        values["update_time"] = utcnow()
        product = await self._repository.update(product_id, values)
        if product is None:
            raise NotFound("product", product_id)
        return product


class Reservations:
    def __init__(self, repository: ProductRepository) -> None:
        self._repository = repository

    async def reserve(self, reservation_id: str, items: Mapping[str, int]) -> Reserved:
        """Takes the stock of every item, or none of it; a repeat of the same
        reservation is a no-op that returns it (with its products read again)."""
        try:
            return await self._repository.reserve(reservation_id, items, utcnow())
        except ReservationExists as taken:
            reservation = _repeated(taken.reservation, items)
        except UnknownProducts as unknown:
            # Named in the order asked.
            missing = set(unknown.product_ids)
            raise NotFound("product", *(pid for pid in items if pid in missing)) from None
        except InsufficientStock as short:
            raise FailedPrecondition(
                "not enough stock for " + ", ".join(short.product_ids),
                "INSUFFICIENT_STOCK",
                [f"product:{pid}" for pid in short.product_ids],
                product_ids=",".join(short.product_ids),
            ) from None
        products = await self._repository.get_many(list(items))
        return Reserved(reservation, {pid: ReservedProduct.of(p) for pid, p in products.items()})

    async def release(self, reservation_id: str) -> tuple[ReservationRow, bool]:
        """Gives back what the reservation took, once; True for the call that did.

        A release can meet a reservation whose transaction is still open (on
        PostgreSQL the row is not visible yet): its tombstone insert then waits on
        the reservation's id and fails once that commits. The release is tried
        again, and now finds the committed reservation and gives its stock back.
        """
        try:
            return await self._repository.release(reservation_id, utcnow())
        except ReservationInFlight:
            return await self._repository.release(reservation_id, utcnow())

    async def purge(self, released_before: datetime) -> int:
        """Deletes released reservations and tombstones released before the cutoff;
        returns how many. They only exist to refuse a late ReserveStock of the same
        id, which can't come after its order attempt's deadline has long passed."""
        return await self._repository.delete_released(released_before)

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
