"""Order use cases: placing an order across user and product, all or nothing;
cancelling it; reading orders and the event feed; cleaning up after attempts that failed.

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
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Protocol

from services.common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from services.common.events.envelope import Event
from services.common.events.outbox import Signal
from services.common.ids import new_id
from services.common.pagination import PageTokens, page_size
from services.common.times import utcnow
from services.order.convert import order_cancelled, order_created
from services.order.models import (
    PENDING,
    PLACED,
    VISIBLE,
    KeyTaken,
    Line,
    OrderItemRow,
    OrderRow,
    PricedProduct,
)
from services.order.repository import OrderRepository

log = logging.getLogger("shop.order")

INT64_MAX = 2**63 - 1
# The longest a claimed attempt may take from claim to PLACED (ORDER_ATTEMPT_TIMEOUT):
# if its process dies, its key is free again within this plus CLOCK_MARGIN plus one
# sweep interval.
ATTEMPT_TIMEOUT = 20.0
CLOCK_MARGIN = 5.0


class Peers(Protocol):
    """The user and product services as the use cases need them; their failures are
    DomainErrors (the peer's own reason, or UNAVAILABLE)."""

    async def active_user(self, user_id: str) -> None:
        """Raises unless the user exists and is active."""
        ...

    async def products(self, ids: Sequence[str]) -> Sequence[PricedProduct]:
        """The products of `ids`, in that order; raises naming any that is unknown."""
        ...

    async def reserve(self, reservation_id: str, items: Mapping[str, int]) -> None:
        """Takes the stock of every item or none of it (repeating an id repeats nothing)."""
        ...

    async def release(self, reservation_id: str) -> None:
        """Gives a reservation's stock back, once; runs after the caller's deadline too."""
        ...


def fingerprint(user_id: str, lines: Sequence[Line]) -> str:
    body = json.dumps([user_id, [(line.product_id, line.quantity) for line in lines]])
    return hashlib.sha256(body.encode()).hexdigest()


class Orders:
    def __init__(
        self,
        repository: OrderRepository,
        peers: Peers,
        page_tokens: PageTokens,
        *,
        events_committed: Callable[[], None],
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        retry_poll: float = 0.05,
    ) -> None:
        self._repository = repository
        self._peers = peers
        self._tokens = page_tokens
        # Tells the outbox relay an event was committed, so it publishes without waiting.
        self._events_committed = events_committed
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
            existing = await self._repository.by_key(key)
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
            order = _pending_order(user_id, key, request, lines, products)
            try:
                await self._repository.claim(order)
            except KeyTaken:
                continue  # a concurrent attempt claimed the key first: look again
            break
        try:
            async with asyncio.timeout(self._attempt_timeout):
                await self._peers.reserve(
                    order.reservation_id, {line.product_id: line.quantity for line in lines}
                )
                placed = await self._repository.place(order, utcnow(), order_created)
                if placed is None:
                    raise Unavailable("the order attempt expired; retry with the same key")
        except TimeoutError:
            await asyncio.shield(self._spawn_cleanup(order.id))
            raise Unavailable("the order attempt took too long; retry with the same key") from None
        except BaseException:
            # Shielded: it goes on even if this call is cancelled at its deadline.
            cleanup = self._spawn_cleanup(order.id)
            await asyncio.shield(cleanup)
            raise
        self._events_committed()
        return placed

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
            reservation_id = await self._repository.fail(order_id, utcnow())
            if reservation_id is None:
                return
            await self._peers.release(reservation_id)
            await self._repository.remove_failed(order_id)
        except Exception as error:
            log.warning(
                "cleanup of a failed order attempt deferred to the sweeper",
                extra={"order_id": order_id, "error": type(error).__name__},
            )

    async def sweep(self) -> int:
        """One pass: undoes attempts that died mid-way and releases cancelled orders'
        stock; returns how many orders it took up."""
        now = utcnow()
        stale = await self._repository.fail_stale(
            now - timedelta(seconds=self._pending_timeout), now
        )
        failed = await self._repository.failed()
        unreleased = await self._repository.unreleased_cancelled()
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
        """Cancels a placed order and gives its stock back; a cancelled one stays as it is."""
        order = await self.get(order_id)
        if order.status == PLACED:
            cancelled = await self._repository.cancel(order_id, reason, utcnow(), order_cancelled)
            # None: another call cancelled it first; it is as that call left it.
            order = cancelled if cancelled is not None else await self.get(order_id)
        self._events_committed()
        if not order.stock_released:
            order.stock_released = await self._release_cancelled(order_id)
        return order

    async def _release_cancelled(self, order_id: str) -> bool:
        """Gives a cancelled order's stock back; False when that is left to the sweeper."""
        order = await self._repository.get(order_id)
        if order is None or order.stock_released:
            return True
        try:
            await self._peers.release(order.reservation_id)
        except DomainError as error:
            log.warning(
                "stock release deferred to the sweeper",
                extra={"order_id": order_id, "error": error.message},
            )
            return False
        await self._repository.mark_released(order_id)
        return True

    # -- reading -------------------------------------------------------------

    async def get(self, order_id: str) -> OrderRow:
        order = await self._repository.get(order_id)
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
        rows = await self._repository.page(user_id, before, size + 1)
        return self._tokens.page(rows, size, key=lambda row: row.id, query=query_key)


def _pending_order(
    user_id: str,
    key: str,
    request: str,
    lines: Sequence[Line],
    products: Sequence[PricedProduct],
) -> OrderRow:
    """The PENDING order that claims the key: priced, not yet placed."""
    currencies = {p.currency_code for p in products}
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
        amount = product.amount_minor * line.quantity
        order.items.append(
            OrderItemRow(
                product_id=product.id,
                position=position,
                product_name=product.name,
                quantity=line.quantity,
                unit_amount_minor=product.amount_minor,
                line_amount_minor=amount,
            )
        )
        order.total_amount_minor += amount
    if order.total_amount_minor > INT64_MAX:
        raise FailedPrecondition("the order total is too large", "ORDER_TOTAL_TOO_LARGE")
    return order


# How many events one read of the feed takes.
FEED_BATCH = 200
# How long a caught-up stream waits before looking again (for another replica's relay).
IDLE_POLL = 0.5


class Feed:
    """The embedded event feed: the published outbox, in feed order, for consumers to
    follow over gRPC; `published` wakes every follower when the relay published more."""

    def __init__(self, repository: OrderRepository) -> None:
        self._repository = repository
        self.published = Signal()

    async def events(self, after: int) -> AsyncGenerator[Event, None]:
        """Every published event after position `after`, then each new one, for ever."""
        last = after
        while True:
            events = await self._repository.published_after(last, FEED_BATCH)
            for event in events:
                yield event
                last = event.sequence or last
            if len(events) < FEED_BATCH:
                await self.published.wait(IDLE_POLL)
