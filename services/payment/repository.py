"""Every query of the payment service's payments. Each method is one transaction of its
own; the use cases see `PaymentRepository`, so their tests can hand them an in-memory one.
(The simulated provider's charges are the provider's, in provider.py.)"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.payment.models import PaymentExists, PaymentRow

PAYMENTS = PaymentRow.__table__
PAYMENT_BY_ID = select(PAYMENTS).where(PAYMENTS.c.id == bindparam("id"))
PAYMENT_BY_ORDER = select(PAYMENTS).where(PAYMENTS.c.order_id == bindparam("order_id"))


class PaymentRepository(Protocol):
    async def get(self, payment_id: str) -> PaymentRow | None: ...

    async def by_order(self, order_id: str) -> PaymentRow | None:
        """The payment of the order, if it has one."""
        ...

    async def page(
        self, user_id: str, order_id: str | None, before_id: str | None, limit: int
    ) -> Sequence[PaymentRow]:
        """Up to `limit` of the user's payments (of `order_id` only, when given) older than
        `before_id`, newest first (ids sort by creation time)."""
        ...

    async def add(self, payment: PaymentRow) -> None:
        """Stores a new payment; raises PaymentExists (with the stored one) when its order
        has one already."""
        ...

    async def transition(
        self, payment_id: str, from_states: Collection[str], values: Mapping[str, Any]
    ) -> PaymentRow | None:
        """Sets `values` on the payment if its state is one of `from_states`, and returns
        it; None (and nothing changed) when it is in another state or does not exist."""
        ...


class SqlPaymentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, payment_id: str) -> PaymentRow | None:
        row = await self._db.read_one(PAYMENT_BY_ID, {"id": payment_id})
        return None if row is None else PaymentRow(**row)

    async def by_order(self, order_id: str) -> PaymentRow | None:
        row = await self._db.read_one(PAYMENT_BY_ORDER, {"order_id": order_id})
        return None if row is None else PaymentRow(**row)

    async def page(
        self, user_id: str, order_id: str | None, before_id: str | None, limit: int
    ) -> Sequence[PaymentRow]:
        query = (
            select(PaymentRow)
            .where(PaymentRow.user_id == user_id)
            .order_by(PaymentRow.id.desc())
            .limit(limit)
        )
        if order_id is not None:
            query = query.where(PaymentRow.order_id == order_id)
        if before_id is not None:
            query = query.where(PaymentRow.id < before_id)
        async with self._db.read() as session:
            return (await session.scalars(query)).all()

    async def add(self, payment: PaymentRow) -> None:
        try:
            async with self._db.write() as session:
                session.add(payment)
        except IntegrityError:
            # The order's payment was written concurrently and committed first.
            existing = await self.by_order(payment.order_id)
            if existing is None:
                raise
            raise PaymentExists(existing) from None

    async def transition(
        self, payment_id: str, from_states: Collection[str], values: Mapping[str, Any]
    ) -> PaymentRow | None:
        async with self._db.write() as session:
            result = await session.execute(
                update(PaymentRow)
                .where(PaymentRow.id == payment_id, PaymentRow.state.in_(list(from_states)))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            assert isinstance(result, CursorResult)
            if result.rowcount != 1:
                return None
            return await session.get(PaymentRow, payment_id, populate_existing=True)
