"""Every query of the order service. Each method is one transaction of its own; a change
and the event that announces it are one method, so they commit together or not at all.
The use cases see `OrderRepository`, so their tests can hand them an in-memory one.

What every order does (look up its key, claim it, place it, mark it captured) runs as
Core statements on the driver (`Database.transaction`, `read_one`): the ORM's unit of
work cost more CPU than the rest of placing an order in this service. The rest (cancel,
the sweeper's passes, listing) keeps the ORM."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.common.events.envelope import Event
from services.common.events.outbox import outbox_values
from services.order.models import (
    CANCELLED,
    FAILED,
    PAYMENT_AUTHORIZED,
    PAYMENT_CAPTURED,
    PAYMENT_REFUNDED,
    PAYMENT_REFUNDING,
    PAYMENT_VOIDING,
    PENDING,
    PLACED,
    VISIBLE,
    KeyTaken,
    OrderItemRow,
    OrderRow,
    OutboxRow,
)

# Makes the event of an order just changed, inside the transaction that changed it.
Announce = Callable[[OrderRow], Event]


@dataclass(frozen=True)
class Abandoned:
    """What undoing a FAILED attempt takes: its reservation to release, and whether its
    payment's authorization (if it made one) is to be voided."""

    reservation_id: str
    void: bool


class OrderRepository(Protocol):
    async def get(self, order_id: str) -> OrderRow | None: ...

    async def by_key(self, key: str) -> OrderRow | None:
        """The order (in any state) that claimed the idempotency key."""
        ...

    async def claim(self, order: OrderRow) -> None:
        """Stores a PENDING order (not priced yet: no items, no total); raises KeyTaken
        when its idempotency key is taken (possibly by this very claim, committed by a
        first send whose answer was lost)."""
        ...

    async def place(self, order: OrderRow, at: datetime, announce: Announce) -> OrderRow | None:
        """The claimed `order` (as this attempt holds it, priced), PENDING -> PLACED with
        its items, total and payment_state, and the event `announce` makes of it; None
        (and nothing written) when it is no longer PENDING."""
        ...

    async def cancel(
        self, order_id: str, reason: str, at: datetime, announce: Announce
    ) -> OrderRow | None:
        """PLACED -> CANCELLED (a payment authorized or captured becomes REFUNDING), with
        the event `announce` makes of it; None (and nothing written) when the order is
        not PLACED any more."""
        ...

    async def fail(
        self, order_id: str, at: datetime, void: bool, announce: Announce | None = None
    ) -> Abandoned | None:
        """PENDING or FAILED -> FAILED, its payment VOIDING if `void` (and kept VOIDING if
        it was); what undoing it takes, or None when the order is in neither state
        (placed meanwhile, or already removed). The event `announce` makes of it is
        written with the change only when the order was PENDING (the attempt giving up
        itself), so an attempt is announced failed at most once."""
        ...

    async def remove_failed(self, order_id: str) -> None:
        """Deletes the order and its items if it is FAILED, freeing its key."""
        ...

    async def fail_stale(self, created_before: datetime, at: datetime) -> Sequence[str]:
        """Every PENDING order created before `created_before` becomes FAILED with its
        payment VOIDING (its attempt may have authorized one); their ids."""
        ...

    async def failed(self) -> Sequence[str]:
        """The ids of the FAILED orders (attempts still to undo)."""
        ...

    async def unreleased_cancelled(self) -> Sequence[str]:
        """The ids of the CANCELLED orders whose reservation is not released yet."""
        ...

    async def mark_released(self, order_id: str) -> None: ...

    async def uncaptured(self, placed_before: datetime) -> Sequence[str]:
        """The ids of the PLACED orders whose payment is AUTHORIZED (the capture failed
        or its process died) and that were placed before `placed_before`."""
        ...

    async def mark_captured(self, order_ids: Sequence[str]) -> None:
        """The orders' AUTHORIZED payments -> CAPTURED, in one transaction (nothing
        changes in any other state)."""
        ...

    async def unrefunded(self) -> Sequence[str]:
        """The ids of the CANCELLED orders whose payment is REFUNDING."""
        ...

    async def mark_refunded(self, order_id: str, announce: Announce | None = None) -> bool:
        """A REFUNDING payment -> REFUNDED, with the event `announce` makes of the order;
        False (and nothing written) when it was not REFUNDING, so the refund is
        announced once however many calls record it."""
        ...

    async def page(self, user_id: str, before_id: str | None, limit: int) -> Sequence[OrderRow]:
        """Up to `limit` of the user's PLACED and CANCELLED orders before `before_id`,
        newest first (ids sort by creation time)."""
        ...


ORDERS = cast(Table, OrderRow.__table__)
ITEMS = cast(Table, OrderItemRow.__table__)
OUTBOX = cast(Table, OutboxRow.__table__)
ORDER_COLUMNS = tuple(column.key for column in ORDERS.columns)
ITEM_COLUMNS = tuple(column.key for column in ITEMS.columns if column.key != "order_id")
ORDER_ID_BY_KEY = select(ORDERS.c.id).where(ORDERS.c.idempotency_key == bindparam("key"))
INSERT_ORDER = insert(ORDERS)
INSERT_ITEM = insert(ITEMS)
# The outbox row of an event; its id is the database's, its position the relay's.
# (inline: no RETURNING of the id, which PostgreSQL would otherwise send back.)
INSERT_EVENT = (
    insert(OUTBOX)
    .values(
        {
            name: bindparam(name)
            for name in ("event_id", "subject", "payload", "headers", "create_time")
        }
    )
    .inline()
)
PLACE = (
    update(ORDERS)
    .where(ORDERS.c.id == bindparam("order_id"), ORDERS.c.status == PENDING)
    .values(
        status=PLACED,
        payment_state=bindparam("payment_state"),
        currency_code=bindparam("currency_code"),
        total_amount_minor=bindparam("total_amount_minor"),
        update_time=bindparam("at"),
    )
)
CAPTURED = (
    update(ORDERS)
    .where(ORDERS.c.id == bindparam("order_id"), ORDERS.c.payment_state == PAYMENT_AUTHORIZED)
    .values(payment_state=PAYMENT_CAPTURED)
)


class SqlOrderRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, order_id: str) -> OrderRow | None:
        async with self._db.read() as session:
            return await session.get(OrderRow, order_id)

    async def by_key(self, key: str) -> OrderRow | None:
        # Nearly always none (a key's first attempt): one point read says so.
        found = await self._db.read_one(ORDER_ID_BY_KEY, {"key": key})
        return None if found is None else await self.get(found["id"])

    async def claim(self, order: OrderRow) -> None:
        # One statement: on PostgreSQL in autocommit, one round trip instead of three. Sent
        # again if the connection dropped, so a KeyTaken may be this claim's own first send
        # (the caller reads the key back: services/order/usecases.py). If the second send
        # loses its answer too, the caller gets the error and a row that did commit waits
        # for the sweeper, as a lost COMMIT's did before.
        try:
            await self._db.write_one(INSERT_ORDER, _values(order, ORDER_COLUMNS))
        except IntegrityError:
            raise KeyTaken(order.idempotency_key) from None

    async def place(self, order: OrderRow, at: datetime, announce: Announce) -> OrderRow | None:
        # A conditional UPDATE (the row lock on PostgreSQL; the sweeper's fail() waits on
        # it), the items and the outbox row. The order and its items are not read back:
        # the attempt holds them already.
        async with self._db.transaction() as tx:
            moved = await tx.execute(
                PLACE,
                {
                    "order_id": order.id,
                    "payment_state": order.payment_state,
                    "currency_code": order.currency_code,
                    "total_amount_minor": order.total_amount_minor,
                    "at": at,
                },
            )
            if moved != 1:
                return None
            items = [{"order_id": order.id, **_values(i, ITEM_COLUMNS)} for i in order.items]
            await tx.execute_many(INSERT_ITEM, items)
            order.status, order.update_time = PLACED, at  # the attempt's own copy
            await tx.execute(INSERT_EVENT, outbox_values(announce(order)))
        return order

    async def cancel(
        self, order_id: str, reason: str, at: datetime, announce: Announce
    ) -> OrderRow | None:
        async with self._db.write() as session:
            order = await session.get(OrderRow, order_id, with_for_update=True)
            if order is None or order.status != PLACED:
                return None
            order.status = CANCELLED
            order.cancel_reason = reason
            order.update_time = at
            if order.payment_state in (PAYMENT_AUTHORIZED, PAYMENT_CAPTURED):
                order.payment_state = PAYMENT_REFUNDING
            await session.flush()
            session.add(_outbox_row(announce(order)))
        return order

    async def fail(
        self, order_id: str, at: datetime, void: bool, announce: Announce | None = None
    ) -> Abandoned | None:
        async with self._db.write() as session:
            order = await session.get(OrderRow, order_id, with_for_update=True)
            if order is None or order.status not in (PENDING, FAILED):
                return None
            if announce is not None and order.status == PENDING:
                session.add(_outbox_row(announce(order)))
            order.status = FAILED
            order.update_time = at
            if void:
                order.payment_state = PAYMENT_VOIDING
            return Abandoned(order.reservation_id, order.payment_state == PAYMENT_VOIDING)

    async def remove_failed(self, order_id: str) -> None:
        async with self._db.write() as session:
            await session.execute(delete(OrderItemRow).where(OrderItemRow.order_id == order_id))
            await session.execute(
                delete(OrderRow).where(OrderRow.id == order_id, OrderRow.status == FAILED)
            )

    async def fail_stale(self, created_before: datetime, at: datetime) -> Sequence[str]:
        async with self._db.write() as session:
            return (
                (
                    await session.execute(
                        update(OrderRow)
                        .where(OrderRow.status == PENDING, OrderRow.create_time < created_before)
                        .values(status=FAILED, payment_state=PAYMENT_VOIDING, update_time=at)
                        .returning(OrderRow.id)
                    )
                )
                .scalars()
                .all()
            )

    async def failed(self) -> Sequence[str]:
        async with self._db.read() as session:
            return (
                await session.scalars(select(OrderRow.id).where(OrderRow.status == FAILED))
            ).all()

    async def unreleased_cancelled(self) -> Sequence[str]:
        async with self._db.read() as session:
            return (
                await session.scalars(
                    select(OrderRow.id).where(
                        OrderRow.status == CANCELLED, OrderRow.stock_released.is_(False)
                    )
                )
            ).all()

    async def mark_released(self, order_id: str) -> None:
        async with self._db.write() as session:
            await session.execute(
                update(OrderRow).where(OrderRow.id == order_id).values(stock_released=True)
            )

    async def uncaptured(self, placed_before: datetime) -> Sequence[str]:
        async with self._db.read() as session:
            return (
                await session.scalars(
                    select(OrderRow.id).where(
                        OrderRow.status == PLACED,
                        OrderRow.payment_state == PAYMENT_AUTHORIZED,
                        OrderRow.update_time < placed_before,
                    )
                )
            ).all()

    async def mark_captured(self, order_ids: Sequence[str]) -> None:
        if len(order_ids) == 1:  # on PostgreSQL in autocommit: no BEGIN and COMMIT
            await self._db.write_one(CAPTURED, {"order_id": order_ids[0]})
            return
        async with self._db.transaction() as tx:
            # In one order on every replica: two batches lock their rows without deadlock.
            rows = [{"order_id": order_id} for order_id in sorted(order_ids)]
            await tx.execute_many(CAPTURED, rows)

    async def unrefunded(self) -> Sequence[str]:
        async with self._db.read() as session:
            return (
                await session.scalars(
                    select(OrderRow.id).where(
                        OrderRow.status == CANCELLED, OrderRow.payment_state == PAYMENT_REFUNDING
                    )
                )
            ).all()

    async def mark_refunded(self, order_id: str, announce: Announce | None = None) -> bool:
        return await self._move_payment(order_id, PAYMENT_REFUNDING, PAYMENT_REFUNDED, announce)

    async def _move_payment(
        self, order_id: str, source: str, target: str, announce: Announce | None = None
    ) -> bool:
        # The conditional UPDATE takes the row lock (PostgreSQL) or the writer's lock
        # (SQLite): of two concurrent moves, one changes the row and announces it.
        async with self._db.write() as session:
            moved = await session.execute(
                update(OrderRow)
                .where(OrderRow.id == order_id, OrderRow.payment_state == source)
                .values(payment_state=target)
                .execution_options(synchronize_session=False)
            )
            assert isinstance(moved, CursorResult)
            if moved.rowcount != 1:
                return False
            if announce is not None:
                order = await session.get(OrderRow, order_id)
                assert order is not None
                session.add(_outbox_row(announce(order)))
        return True

    async def page(self, user_id: str, before_id: str | None, limit: int) -> Sequence[OrderRow]:
        query = (
            select(OrderRow)
            .where(OrderRow.user_id == user_id, OrderRow.status.in_(VISIBLE))
            .order_by(OrderRow.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            query = query.where(OrderRow.id < before_id)
        async with self._db.read() as session:
            return (await session.scalars(query)).all()


def _values(row: object, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


def _outbox_row(event: Event) -> OutboxRow:
    return OutboxRow(**outbox_values(event))
