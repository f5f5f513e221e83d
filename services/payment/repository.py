"""Every query of the payment service's payments. Each method is one transaction of its
own; the use cases see `PaymentRepository`, so their tests can hand them an in-memory one.
(The simulated provider's charges are the provider's, in provider.py.)

The hot path (every order authorizes and captures) skips the ORM: point reads and
driver-level transactions of Core statements compiled once (`Database.transaction`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol, cast

from sqlalchemy import Table, Update, bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.common.db import Database, loaded
from services.payment.models import PaymentExists, PaymentRow

PAYMENTS = cast(Table, PaymentRow.__table__)
COLUMNS = tuple(str(column.key) for column in PAYMENTS.columns)
PAYMENT_BY_ID = select(PAYMENTS).where(PAYMENTS.c.id == bindparam("id"))
PAYMENT_BY_ORDER = select(PAYMENTS).where(PAYMENTS.c.order_id == bindparam("order_id"))
INSERT_PAYMENT = insert(PAYMENTS)


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


# The conditional updates of `transition`, by (from states, columns set): the statements
# are compiled once each, and the use cases ask for a handful of combinations.
_transitions: dict[tuple[frozenset[str], frozenset[str]], Update] = {}


def _transition(from_states: frozenset[str], keys: frozenset[str]) -> Update:
    """UPDATE payments SET <keys> WHERE id = :payment_id AND state is one of
    `from_states` (constants, not IN: an expanding IN cannot be compiled once)
    RETURNING the row as stored."""
    statement = _transitions.get((from_states, keys))
    if statement is None:
        statement = (
            update(PAYMENTS)
            .where(
                PAYMENTS.c.id == bindparam("payment_id"),
                or_(*(PAYMENTS.c.state == state for state in sorted(from_states))),
            )
            # Parameters named apart from the columns (a column's own name is reserved).
            .values(
                {key: bindparam(f"new_{key}", type_=PAYMENTS.c[key].type) for key in sorted(keys)}
            )
            .returning(PAYMENTS)
        )
        _transitions[(from_states, keys)] = statement
    return statement


class SqlPaymentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, payment_id: str) -> PaymentRow | None:
        return await self._db.read_model(PaymentRow, PAYMENT_BY_ID, {"id": payment_id})

    async def by_order(self, order_id: str) -> PaymentRow | None:
        return await self._db.read_model(PaymentRow, PAYMENT_BY_ORDER, {"order_id": order_id})

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
        row = {key: getattr(payment, key) for key in COLUMNS}
        try:
            await self._db.write_one(INSERT_PAYMENT, row)
        except IntegrityError:
            # The order's payment was written concurrently and committed first.
            existing = await self.by_order(payment.order_id)
            if existing is None:
                raise
            raise PaymentExists(existing) from None

    async def transition(
        self, payment_id: str, from_states: Collection[str], values: Mapping[str, Any]
    ) -> PaymentRow | None:
        if not from_states:
            return None  # no state to move from (the ORM's empty IN matched nothing)
        statement = _transition(frozenset(from_states), frozenset(values))
        params = {f"new_{key}": value for key, value in values.items()}
        params["payment_id"] = payment_id
        row = await self._db.write_returning(statement, params)
        return None if row is None else loaded(PaymentRow, row)
