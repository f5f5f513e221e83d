"""Order use cases: placing an order across user and product, all or nothing;
cancelling it; reading orders; and cleaning up after attempts that failed.

Placing an order, in order: return the stored order if the idempotency key was
used for the same request before; check the user and price every item (reads, so
bad input writes nothing); claim the key with a PENDING row; reserve the stock
under a reservation id of this order; then store the order and its OrderCreated
event in one transaction. If anything fails after the claim, the reservation is
released and the claim removed; if the process dies instead, the sweeper does it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry import propagate
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db import Database
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from services.common.events.order_feed import ORDER_CANCELLED, ORDER_CREATED
from services.common.events.outbox import Relay
from services.common.ids import new_id
from services.common.pagination import PageTokens, page_size
from services.common.times import utcnow
from services.order.convert import order_to_proto
from services.order.models import (
    CANCELLED,
    FAILED,
    PENDING,
    PLACED,
    OrderItemRow,
    OrderRow,
    OutboxRow,
)
from services.order.peers import PeerError, Peers
from shop.order.v1 import events_pb2
from shop.product.v1 import product_pb2

log = logging.getLogger("shop.order")

INT64_MAX = 2**63 - 1
# The longest a claimed attempt may take from claim to PLACED (ORDER_ATTEMPT_TIMEOUT):
# if its process dies, its key is free again within this plus CLOCK_MARGIN plus one
# sweep interval.
ATTEMPT_TIMEOUT = 20.0
CLOCK_MARGIN = 5.0
VISIBLE = (PLACED, CANCELLED)


@dataclass(frozen=True)
class Line:
    product_id: str
    quantity: int


def fingerprint(user_id: str, lines: Sequence[Line]) -> str:
    body = json.dumps([user_id, [(line.product_id, line.quantity) for line in lines]])
    return hashlib.sha256(body.encode()).hexdigest()


class Orders:
    def __init__(
        self,
        db: Database,
        peers: Peers,
        page_tokens: PageTokens,
        relay: Relay,
        *,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        retry_poll: float = 0.05,
    ) -> None:
        self._db = db
        self._peers = peers
        self._tokens = page_tokens
        self._relay = relay
        self._attempt_timeout = attempt_timeout
        # An attempt never runs longer than attempt_timeout, so a PENDING row older than
        # that (plus a margin for clocks of other replicas) belongs to a dead process.
        self._pending_timeout = attempt_timeout + CLOCK_MARGIN
        self._retry_poll = retry_poll
        self._cleanups: set[asyncio.Task[None]] = set()

    # -- placing -------------------------------------------------------------

    async def create(self, user_id: str, lines: Sequence[Line], key: str) -> OrderRow:
        request = fingerprint(user_id, lines)
        while True:
            existing = await self._by_key(key)
            if existing is not None:
                if existing.request_fingerprint != request:
                    raise AlreadyExists(
                        "idempotency_key was already used for another request",
                        "IDEMPOTENCY_KEY_REUSED",
                    )
                if existing.status in VISIBLE:
                    return existing
                # Another attempt with this key is under way (or being undone): wait for it.
                await asyncio.sleep(self._retry_poll)
                continue
            await self._peers.active_user(user_id)
            products = await self._peers.products([line.product_id for line in lines])
            order = await self._claim(user_id, key, request, lines, products)
            if order is None:
                continue  # a concurrent attempt claimed the key first: look again
            break
        try:
            async with asyncio.timeout(self._attempt_timeout):
                await self._peers.reserve(
                    order.reservation_id, {line.product_id: line.quantity for line in lines}
                )
                placed = await self._place(order.id)
        except TimeoutError:
            await asyncio.shield(self._spawn_cleanup(order.id))
            raise Unavailable("the order attempt took too long; retry with the same key") from None
        except BaseException:
            # Shielded: it goes on even if this call is cancelled at its deadline.
            cleanup = self._spawn_cleanup(order.id)
            await asyncio.shield(cleanup)
            raise
        self._relay.wake()
        return placed

    async def _by_key(self, key: str) -> OrderRow | None:
        async with self._db.read() as session:
            return (
                await session.scalars(select(OrderRow).where(OrderRow.idempotency_key == key))
            ).one_or_none()

    async def _claim(
        self,
        user_id: str,
        key: str,
        request: str,
        lines: Sequence[Line],
        products: Sequence[product_pb2.Product],
    ) -> OrderRow | None:
        """Writes the PENDING order (priced, not yet placed); None if the key is taken."""
        currencies = {p.price.currency_code for p in products}
        if len(currencies) > 1:
            raise FailedPrecondition(
                "all products of an order must be priced in one currency",
                "MIXED_CURRENCIES",
                [f"product:{p.id}" for p in products],
            )
        now = utcnow()
        order_id = new_id("ord")
        order = OrderRow(
            id=order_id,
            user_id=user_id,
            status=PENDING,
            idempotency_key=key,
            request_fingerprint=request,
            reservation_id=f"res_{order_id}",
            currency_code=currencies.pop(),
            total_amount_minor=0,
            cancel_reason="",
            stock_released=False,
            create_time=now,
            update_time=now,
            items=[],
        )
        for position, (line, product) in enumerate(zip(lines, products, strict=True)):
            amount = product.price.amount_minor * line.quantity
            order.items.append(
                OrderItemRow(
                    product_id=product.id,
                    position=position,
                    product_name=product.name,
                    quantity=line.quantity,
                    unit_amount_minor=product.price.amount_minor,
                    line_amount_minor=amount,
                )
            )
            order.total_amount_minor += amount
        if order.total_amount_minor > INT64_MAX:
            raise FailedPrecondition("the order total is too large", "ORDER_TOTAL_TOO_LARGE")
        try:
            async with self._db.write() as session:
                session.add(order)
        except IntegrityError:
            return None
        return order

    async def _place(self, order_id: str) -> OrderRow:
        """PENDING -> PLACED and the OrderCreated event, in one transaction."""
        async with self._db.write() as session:
            order = await session.get(OrderRow, order_id, with_for_update=True)
            if order is None or order.status != PENDING:
                raise Unavailable("the order attempt expired; retry with the same key")
            order.status = PLACED
            order.update_time = utcnow()
            await session.flush()
            event = events_pb2.OrderCreated(event_id=new_id("evt"), order=order_to_proto(order))
            event.occurred_at.FromDatetime(order.update_time)
            add_event(session, ORDER_CREATED, event)
        return order

    # -- undoing -------------------------------------------------------------

    def _spawn_cleanup(self, order_id: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._abandon(order_id))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _abandon(self, order_id: str) -> None:
        """Releases a failed attempt's reservation, then frees its key. Never raises:
        what fails here is retried by the sweeper."""
        try:
            async with self._db.write() as session:
                order = await session.get(OrderRow, order_id, with_for_update=True)
                if order is None or order.status not in (PENDING, FAILED):
                    return
                order.status = FAILED
                order.update_time = utcnow()
                reservation_id = order.reservation_id
            await self._peers.release(reservation_id)
            async with self._db.write() as session:
                await session.execute(delete(OrderItemRow).where(OrderItemRow.order_id == order_id))
                await session.execute(
                    delete(OrderRow).where(OrderRow.id == order_id, OrderRow.status == FAILED)
                )
        except Exception as error:
            log.warning(
                "cleanup of a failed order attempt deferred to the sweeper",
                extra={"order_id": order_id, "error": type(error).__name__},
            )

    async def sweep(self) -> int:
        """One pass: undoes attempts that died mid-way and releases cancelled orders' stock."""
        now = utcnow()
        async with self._db.write() as session:
            stale = (
                (
                    await session.execute(
                        update(OrderRow)
                        .where(
                            OrderRow.status == PENDING,
                            OrderRow.create_time < now - timedelta(seconds=self._pending_timeout),
                        )
                        .values(status=FAILED, update_time=now)
                        .returning(OrderRow.id)
                    )
                )
                .scalars()
                .all()
            )
        async with self._db.read() as session:
            failed = (
                await session.scalars(select(OrderRow.id).where(OrderRow.status == FAILED))
            ).all()
            unreleased = (
                await session.scalars(
                    select(OrderRow.id).where(
                        OrderRow.status == CANCELLED, OrderRow.stock_released.is_(False)
                    )
                )
            ).all()
        for order_id in failed:
            await self._abandon(order_id)
        for order_id in unreleased:
            await self._release_cancelled(order_id)
        if stale:
            log.warning("abandoned stale order attempts", extra={"count": len(stale)})
        return len(failed) + len(unreleased)

    async def run_sweeper(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.sweep()

    # -- cancelling ----------------------------------------------------------

    async def cancel(self, order_id: str, reason: str) -> OrderRow:
        async with self._db.write() as session:
            order = await session.get(OrderRow, order_id, with_for_update=True)
            if order is None or order.status not in VISIBLE:
                raise NotFound("order", order_id)
            if order.status == PLACED:
                order.status = CANCELLED
                order.cancel_reason = reason
                order.update_time = utcnow()
                await session.flush()
                event = events_pb2.OrderCancelled(
                    event_id=new_id("evt"), order=order_to_proto(order)
                )
                event.occurred_at.FromDatetime(order.update_time)
                add_event(session, ORDER_CANCELLED, event)
        self._relay.wake()
        if not order.stock_released:
            await self._release_cancelled(order_id)
            order.stock_released = True
        return order

    async def _release_cancelled(self, order_id: str) -> None:
        async with self._db.read() as session:
            order = await session.get(OrderRow, order_id)
        if order is None or order.stock_released:
            return
        try:
            await self._peers.release(order.reservation_id)
        except PeerError as error:
            log.warning(
                "stock release deferred to the sweeper",
                extra={"order_id": order_id, "error": error.message},
            )
            return
        async with self._db.write() as session:
            await session.execute(
                update(OrderRow).where(OrderRow.id == order_id).values(stock_released=True)
            )

    # -- reading -------------------------------------------------------------

    async def get(self, order_id: str) -> OrderRow:
        async with self._db.read() as session:
            order = await session.get(OrderRow, order_id)
        if order is None or order.status not in VISIBLE:
            raise NotFound("order", order_id)
        return order

    async def list_page(
        self, user_id: str, requested_size: int | None, token: str
    ) -> tuple[Sequence[OrderRow], str]:
        """One user's orders, newest first."""
        size = page_size(requested_size)
        query_key = f"user={user_id}"
        before = self._tokens.decode(token, query_key)
        query = (
            select(OrderRow)
            .where(OrderRow.user_id == user_id, OrderRow.status.in_(VISIBLE))
            .order_by(OrderRow.id.desc())
            .limit(size + 1)
        )
        if before is not None:
            query = query.where(OrderRow.id < before)
        async with self._db.read() as session:
            rows = (await session.scalars(query)).all()
        return self._tokens.page(rows, size, key=lambda row: row.id, query=query_key)


def add_event(session: AsyncSession, subject: str, event: Any) -> None:
    """Adds the event to the outbox, in the caller's transaction, with the trace context."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    session.add(
        OutboxRow(
            event_id=event.event_id,
            subject=subject,
            payload=event.SerializeToString(),
            headers=headers,
            create_time=utcnow(),
        )
    )
