"""Every query of the order service. Each method is one transaction of its own; a change
and the event that announces it are one method, so they commit together or not at all.
The use cases see `OrderRepository`, so their tests can hand them an in-memory one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from opentelemetry import propagate
from sqlalchemy import delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.common.events.envelope import Event
from services.common.times import utcnow
from services.order.models import (
    CANCELLED,
    FAILED,
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


class OrderRepository(Protocol):
    async def get(self, order_id: str) -> OrderRow | None: ...

    async def by_key(self, key: str) -> OrderRow | None:
        """The order (in any state) that claimed the idempotency key."""
        ...

    async def claim(self, order: OrderRow) -> None:
        """Stores a PENDING order; raises KeyTaken when its idempotency key is taken."""
        ...

    async def place(self, order: OrderRow, at: datetime, announce: Announce) -> OrderRow | None:
        """The claimed `order` (as this attempt holds it), PENDING -> PLACED, with the event
        `announce` makes of it; None (and nothing written) when it is no longer PENDING."""
        ...

    async def cancel(
        self, order_id: str, reason: str, at: datetime, announce: Announce
    ) -> OrderRow | None:
        """PLACED -> CANCELLED, with the event `announce` makes of it; None (and nothing
        written) when the order is not PLACED any more."""
        ...

    async def fail(self, order_id: str, at: datetime) -> str | None:
        """PENDING or FAILED -> FAILED; the reservation to release, or None when the
        order is in neither state (placed meanwhile, or already removed)."""
        ...

    async def remove_failed(self, order_id: str) -> None:
        """Deletes the order and its items if it is FAILED, freeing its key."""
        ...

    async def fail_stale(self, created_before: datetime, at: datetime) -> Sequence[str]:
        """Every PENDING order created before `created_before` becomes FAILED; their ids."""
        ...

    async def failed(self) -> Sequence[str]:
        """The ids of the FAILED orders (attempts still to undo)."""
        ...

    async def unreleased_cancelled(self) -> Sequence[str]:
        """The ids of the CANCELLED orders whose reservation is not released yet."""
        ...

    async def mark_released(self, order_id: str) -> None: ...

    async def page(self, user_id: str, before_id: str | None, limit: int) -> Sequence[OrderRow]:
        """Up to `limit` of the user's PLACED and CANCELLED orders before `before_id`,
        newest first (ids sort by creation time)."""
        ...

    async def published_after(self, position: int, limit: int) -> Sequence[Event]:
        """Up to `limit` published events after feed position `position`, in feed order."""
        ...


class SqlOrderRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, order_id: str) -> OrderRow | None:
        async with self._db.read() as session:
            return await session.get(OrderRow, order_id)

    async def by_key(self, key: str) -> OrderRow | None:
        async with self._db.read() as session:
            return (
                await session.scalars(select(OrderRow).where(OrderRow.idempotency_key == key))
            ).one_or_none()

    async def claim(self, order: OrderRow) -> None:
        try:
            async with self._db.write() as session:
                session.add(order)
        except IntegrityError:
            raise KeyTaken(order.idempotency_key) from None

    async def place(self, order: OrderRow, at: datetime, announce: Announce) -> OrderRow | None:
        # Two statements under the writer's lock: a conditional UPDATE (the row lock on
        # PostgreSQL; the sweeper's fail() waits on it) and the outbox row. The order and
        # its items are not read back: the attempt holds them already.
        async with self._db.write() as session:
            moved = await session.execute(
                update(OrderRow)
                .where(OrderRow.id == order.id, OrderRow.status == PENDING)
                .values(status=PLACED, update_time=at)
                .execution_options(synchronize_session=False)
            )
            assert isinstance(moved, CursorResult)
            if moved.rowcount != 1:
                return None
            order.status, order.update_time = PLACED, at  # the attempt's own copy
            session.add(_outbox_row(announce(order)))
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
            await session.flush()
            session.add(_outbox_row(announce(order)))
        return order

    async def fail(self, order_id: str, at: datetime) -> str | None:
        async with self._db.write() as session:
            order = await session.get(OrderRow, order_id, with_for_update=True)
            if order is None or order.status not in (PENDING, FAILED):
                return None
            order.status = FAILED
            order.update_time = at
            return order.reservation_id

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
                        .values(status=FAILED, update_time=at)
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

    async def published_after(self, position: int, limit: int) -> Sequence[Event]:
        async with self._db.read() as session:
            rows = (
                await session.scalars(
                    select(OutboxRow)
                    .where(OutboxRow.position > position)
                    .order_by(OutboxRow.position)
                    .limit(limit)
                )
            ).all()
        return [row.to_event() for row in rows]


def _outbox_row(event: Event) -> OutboxRow:
    """The event as an outbox row, carrying the trace context of the change it announces."""
    headers = dict(event.headers)
    propagate.inject(headers)
    return OutboxRow(
        event_id=event.event_id,
        subject=event.subject,
        payload=event.payload,
        headers=headers,
        create_time=utcnow(),
    )
