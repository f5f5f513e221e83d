"""In-memory fakes of the order service's repository and of its peers (user, product,
payment): the order use cases' tests run against them, no database and no network.
`Shop` puts the use cases on them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import inspect

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.events.envelope import Event
from services.common.pagination import PageTokens
from services.common.times import utcnow
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
    Line,
    OrderItemRow,
    OrderRow,
    PricedProduct,
)
from services.order.repository import Abandoned, Announce
from services.order.usecases import Orders
from shop.order.v1 import events_pb2

_ORDER_COLUMNS = [attribute.key for attribute in inspect(OrderRow).column_attrs]
_ITEM_COLUMNS = [attribute.key for attribute in inspect(OrderItemRow).column_attrs]


def clone(order: OrderRow) -> OrderRow:
    """A copy that shares nothing with `order`, as a fresh read from a database would be."""
    copy = OrderRow(**{name: getattr(order, name) for name in _ORDER_COLUMNS})
    copy.items = [
        OrderItemRow(**{name: getattr(item, name) for name in _ITEM_COLUMNS})
        for item in order.items
    ]
    return copy


class InMemoryOrders:
    """The OrderRepository over dicts. Every event is published as soon as it is stored:
    its feed position is its place in `events`."""

    def __init__(self) -> None:
        self.rows: dict[str, OrderRow] = {}
        self.events: list[Event] = []
        # Raised by the next place(), as a database that refuses the write would.
        self.fail_place: Exception | None = None

    async def get(self, order_id: str) -> OrderRow | None:
        row = self.rows.get(order_id)
        return clone(row) if row is not None else None

    async def by_key(self, key: str) -> OrderRow | None:
        found = [row for row in self.rows.values() if row.idempotency_key == key]
        return clone(found[0]) if found else None

    async def claim(self, order: OrderRow) -> None:
        if any(row.idempotency_key == order.idempotency_key for row in self.rows.values()):
            raise KeyTaken(order.idempotency_key)
        self.rows[order.id] = clone(order)

    async def place(self, order: OrderRow, at: datetime, announce: Announce) -> OrderRow | None:
        row = self.rows.get(order.id)
        if row is None or row.status != PENDING:
            return None
        if self.fail_place is not None:
            error, self.fail_place = self.fail_place, None
            raise error
        priced = clone(order)  # what place() writes of the attempt's own order
        changed = clone(row)
        changed.status = PLACED
        changed.payment_state = order.payment_state
        changed.currency_code = priced.currency_code
        changed.total_amount_minor = priced.total_amount_minor
        changed.items = priced.items
        changed.update_time = at
        self._commit(changed, announce(changed))
        return clone(changed)

    async def cancel(
        self, order_id: str, reason: str, at: datetime, announce: Announce
    ) -> OrderRow | None:
        row = self.rows.get(order_id)
        if row is None or row.status != PLACED:
            return None
        changed = clone(row)
        changed.status = CANCELLED
        changed.cancel_reason = reason
        changed.update_time = at
        if changed.payment_state in (PAYMENT_AUTHORIZED, PAYMENT_CAPTURED):
            changed.payment_state = PAYMENT_REFUNDING
        self._commit(changed, announce(changed))
        return clone(changed)

    def _commit(self, order: OrderRow, event: Event) -> None:
        """The order and its event, together (the repository's one transaction)."""
        self.rows[order.id] = order
        self.events.append(
            Event(event.event_id, event.subject, event.payload, sequence=len(self.events) + 1)
        )

    async def fail(
        self, order_id: str, at: datetime, void: bool, announce: Announce | None = None
    ) -> Abandoned | None:
        row = self.rows.get(order_id)
        if row is None or row.status not in (PENDING, FAILED):
            return None
        changed = clone(row)
        changed.status = FAILED
        changed.update_time = at
        if void:
            changed.payment_state = PAYMENT_VOIDING
        if announce is not None and row.status == PENDING:
            self._commit(changed, announce(changed))
        else:
            self.rows[order_id] = changed
        return Abandoned(changed.reservation_id, changed.payment_state == PAYMENT_VOIDING)

    async def remove_failed(self, order_id: str) -> None:
        row = self.rows.get(order_id)
        if row is not None and row.status == FAILED:
            del self.rows[order_id]

    async def fail_stale(self, created_before: datetime, at: datetime) -> Sequence[str]:
        stale = [
            row
            for row in self.rows.values()
            if row.status == PENDING and row.create_time < created_before
        ]
        for row in stale:
            row.status = FAILED
            row.payment_state = PAYMENT_VOIDING
            row.update_time = at
        return [row.id for row in stale]

    async def failed(self) -> Sequence[str]:
        return [row.id for row in self.rows.values() if row.status == FAILED]

    async def unreleased_cancelled(self) -> Sequence[str]:
        return [
            row.id
            for row in self.rows.values()
            if row.status == CANCELLED and not row.stock_released
        ]

    async def mark_released(self, order_id: str) -> None:
        self.rows[order_id].stock_released = True

    async def uncaptured(self, placed_before: datetime) -> Sequence[str]:
        return [
            row.id
            for row in self.rows.values()
            if row.status == PLACED
            and row.payment_state == PAYMENT_AUTHORIZED
            and row.update_time < placed_before
        ]

    async def mark_captured(self, order_ids: Sequence[str]) -> None:
        for order_id in order_ids:
            row = self.rows[order_id]
            if row.payment_state == PAYMENT_AUTHORIZED:
                row.payment_state = PAYMENT_CAPTURED

    async def unrefunded(self) -> Sequence[str]:
        return [
            row.id
            for row in self.rows.values()
            if row.status == CANCELLED and row.payment_state == PAYMENT_REFUNDING
        ]

    async def mark_refunded(self, order_id: str, announce: Announce | None = None) -> bool:
        row = self.rows[order_id]
        if row.payment_state != PAYMENT_REFUNDING:
            return False
        changed = clone(row)
        changed.payment_state = PAYMENT_REFUNDED
        if announce is not None:
            self._commit(changed, announce(changed))
        else:
            self.rows[order_id] = changed
        return True

    async def page(self, user_id: str, before_id: str | None, limit: int) -> Sequence[OrderRow]:
        ids = sorted(
            (
                row.id
                for row in self.rows.values()
                if row.user_id == user_id
                and row.status in VISIBLE
                and (before_id is None or row.id < before_id)
            ),
            reverse=True,
        )
        return [clone(self.rows[i]) for i in ids[:limit]]

    # The feed's source (services/common/events/feed.py PublishedEvents), as the outbox.
    async def published_after(self, position: int, limit: int) -> Sequence[Event]:
        return [event for event in self.events if event.sequence > position][:limit]

    async def head(self) -> int:
        return max((event.sequence for event in self.events), default=0)

    async def oldest_unnumbered(self) -> datetime | None:
        return None  # numbered as they are stored


# The test payment methods the fake payment service knows (the simulated provider's).
DECLINING = {"card_decline": "card_declined", "card_insufficient_funds": "insufficient_funds"}
KNOWN_METHODS = {"card_approve", "card_timeout", "card_error", *DECLINING}


@dataclass
class FakePayment:
    """One order's payment as the payment service keeps it; `charged` when the provider
    holds (or took) the money, which a payment FAILED by a lost answer may be too."""

    order_id: str
    user_id: str
    currency_code: str
    amount_minor: int
    payment_method: str
    state: str
    charged: bool = False
    refund_request_id: str = ""


@dataclass
class FakePeers:
    """The user, product and payment services: users with their active flag, products
    with a price and stock, reservations that take stock all or nothing and give it back
    once, and one payment per order id, every step idempotent on it as the payment
    service's are (a repeat of an Authorize whose answer was lost finds its charge)."""

    users: dict[str, bool] = field(default_factory=dict)
    products_by_id: dict[str, PricedProduct] = field(default_factory=dict)
    stock: dict[str, int] = field(default_factory=dict)
    # Reservation id -> what it took; `released` holds those given back.
    reservations: dict[str, dict[str, int]] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    # When set, reserve() waits for it (a product service that has not answered yet).
    hold_reserve: asyncio.Event | None = None
    # reserve() calls that have started: a test waits on it to act mid-attempt.
    reserving: asyncio.Event = field(default_factory=asyncio.Event)
    # How many of the next release() calls fail as an unreachable product service.
    failing_releases: int = 0
    # How many of the next reserve() calls fail as an unreachable product service (before
    # doing anything); while product_circuit_open, the breaker refuses them (not sent).
    failing_reserves: int = 0
    product_circuit_open: bool = False
    # Order id -> its payment; `authorize_calls` counts the Authorize calls.
    payments: dict[str, FakePayment] = field(default_factory=dict)
    authorize_calls: int = 0
    # When set, authorize() waits for it (a payment service that has not answered yet).
    hold_authorize: asyncio.Event | None = None
    authorizing: asyncio.Event = field(default_factory=asyncio.Event)
    # How many of the next authorize() calls charge, then lose their answer (a provider
    # timeout: UNAVAILABLE, the charge made); card_timeout does it on an order's first.
    timeouts_after_charge: int = 0
    # How many of the next capture_all() / void() / refund() calls fail as an
    # unreachable payment service (before doing anything).
    failing_captures: int = 0
    failing_voids: int = 0
    failing_refunds: int = 0
    # Calls of each payment step, in order: ("void", order_id), ...
    payment_calls: list[tuple[str, str]] = field(default_factory=list)
    # The order ids of each capture_all() call.
    capture_batches: list[list[str]] = field(default_factory=list)
    # When set, capture_all() waits for it (a batch of captures on its way).
    hold_capture: asyncio.Event | None = None
    # How many of the next captures the provider does not answer (the payment stays
    # AUTHORIZED).
    unanswered_captures: int = 0
    # While set, the order service's breaker refuses payment calls: they are not made.
    payment_circuit_open: bool = False

    def add_user(self, user_id: str, *, active: bool = True) -> str:
        self.users[user_id] = active
        return user_id

    def add_product(
        self, product_id: str, *, stock: int, price: int = 500, currency: str = "EUR"
    ) -> str:
        self.products_by_id[product_id] = PricedProduct(
            product_id, f"Product {product_id}", currency, price
        )
        self.stock[product_id] = stock
        return product_id

    def held(self) -> dict[str, int]:
        """Stock taken by reservations not released, by product."""
        held: dict[str, int] = {}
        for reservation_id, items in self.reservations.items():
            if reservation_id not in self.released:
                for product_id, quantity in items.items():
                    held[product_id] = held.get(product_id, 0) + quantity
        return held

    async def active_user(self, user_id: str) -> None:
        if user_id not in self.users:
            raise NotFound("user", user_id)
        if not self.users[user_id]:
            raise FailedPrecondition(
                f"user {user_id} is not active", "USER_INACTIVE", [f"user:{user_id}"]
            )

    async def reserve(
        self, reservation_id: str, items: Mapping[str, int]
    ) -> Sequence[PricedProduct]:
        self.reserving.set()
        if self.hold_reserve is not None:
            await self.hold_reserve.wait()
        if self.product_circuit_open:
            raise Unavailable("product service is unavailable", "PRODUCT_CIRCUIT_OPEN")
        if self.failing_reserves:
            self.failing_reserves -= 1
            raise Unavailable("product service is unavailable", "PRODUCT_UNAVAILABLE")
        if reservation_id in self.released:
            # Released before it was made (its attempt was undone meanwhile): refused.
            raise FailedPrecondition(
                f"reservation {reservation_id} was already released", "RESERVATION_RELEASED"
            )
        priced = [self.products_by_id.get(pid) for pid in items]
        missing = [pid for pid, product in zip(items, priced, strict=True) if product is None]
        if missing:
            raise NotFound("product", *missing)
        if reservation_id in self.reservations:
            return [p for p in priced if p is not None]
        short = [pid for pid, qty in items.items() if self.stock.get(pid, 0) < qty]
        if short:
            raise FailedPrecondition(
                "not enough stock for " + ", ".join(short),
                "INSUFFICIENT_STOCK",
                [f"product:{pid}" for pid in short],
            )
        for product_id, quantity in items.items():
            self.stock[product_id] -= quantity
        self.reservations[reservation_id] = dict(items)
        return [p for p in priced if p is not None]

    async def release(self, reservation_id: str) -> None:
        if self.failing_releases:
            self.failing_releases -= 1
            raise Unavailable("product service is unavailable", "PRODUCT_UNAVAILABLE")
        if reservation_id in self.released:
            return
        self.released.add(reservation_id)
        for product_id, quantity in self.reservations.get(reservation_id, {}).items():
            self.stock[product_id] += quantity

    # -- payment --------------------------------------------------------------------

    def charges(self, *states: str) -> list[FakePayment]:
        """The payments that charged (the provider held or took money), in those states."""
        return [
            p for p in self.payments.values() if p.charged and (not states or p.state in states)
        ]

    async def authorize(
        self,
        order_id: str,
        user_id: str,
        currency_code: str,
        amount_minor: int,
        payment_method: str,
    ) -> None:
        self._circuit()
        self.authorize_calls += 1
        self.payment_calls.append(("authorize", order_id))
        self.authorizing.set()
        if self.hold_authorize is not None:
            await self.hold_authorize.wait()
        if payment_method not in KNOWN_METHODS:
            raise InvalidArgument.of("payment_method", f"unknown payment method {payment_method!r}")
        payment = self.payments.get(order_id)
        if payment is None:
            payment = FakePayment(
                order_id, user_id, currency_code, amount_minor, payment_method, "FAILED"
            )
            self.payments[order_id] = payment
            if payment_method == "card_error":
                raise _provider_unavailable()
            if payment_method in DECLINING:
                payment.state = "DECLINED"
            else:
                payment.charged = True
                if self.timeouts_after_charge or payment_method == "card_timeout":
                    self.timeouts_after_charge = max(0, self.timeouts_after_charge - 1)
                    raise _provider_unavailable()
                payment.state = "AUTHORIZED"
        elif payment.state == "FAILED":
            if payment.payment_method == "card_error":
                raise _provider_unavailable()
            if self.timeouts_after_charge:
                self.timeouts_after_charge -= 1
                raise _provider_unavailable()
            payment.state = "AUTHORIZED" if payment.charged else "FAILED"
        if payment.state == "DECLINED":
            raise FailedPrecondition(
                f"payment of {order_id} was declined ({DECLINING[payment.payment_method]})",
                "PAYMENT_DECLINED",
                [f"payment:{order_id}"],
                decline_code=DECLINING[payment.payment_method],
            )

    async def capture_all(self, order_ids: Sequence[str]) -> list[str | None]:
        self._circuit()
        self.payment_calls.extend(("capture", order_id) for order_id in order_ids)
        self.capture_batches.append(list(order_ids))
        if self.hold_capture is not None:
            await self.hold_capture.wait()
        if self.failing_captures:
            self.failing_captures -= 1
            raise Unavailable("payment service is unavailable", "PAYMENT_UNAVAILABLE")
        return [self._capture(order_id) for order_id in order_ids]

    def _capture(self, order_id: str) -> str | None:
        if self.unanswered_captures:
            self.unanswered_captures -= 1
            payment = self.payments.get(order_id)
            return None if payment is None else payment.state
        return self._move(order_id, "AUTHORIZED", "CAPTURED")

    async def void(self, order_id: str) -> str | None:
        self._circuit()
        self.payment_calls.append(("void", order_id))
        if self.failing_voids:
            self.failing_voids -= 1
            raise Unavailable("payment service is unavailable", "PAYMENT_UNAVAILABLE")
        return self._move(order_id, "AUTHORIZED", "VOIDED")

    async def refund(self, order_id: str, request_id: str, reason: str) -> str | None:
        self._circuit()
        self.payment_calls.append(("refund", order_id))
        if self.failing_refunds:
            self.failing_refunds -= 1
            raise Unavailable("payment service is unavailable", "PAYMENT_UNAVAILABLE")
        state = self._move(order_id, "CAPTURED", "REFUNDED")
        payment = self.payments.get(order_id)
        if payment is not None and state == "REFUNDED" and not payment.refund_request_id:
            payment.refund_request_id = request_id
        return state

    def _circuit(self) -> None:
        if self.payment_circuit_open:
            raise Unavailable("payment service is unavailable", "PAYMENT_CIRCUIT_OPEN")

    def _move(self, order_id: str, source: str, target: str) -> str | None:
        """source -> target; the payment's state after (the one that kept it from moving)."""
        payment = self.payments.get(order_id)
        if payment is None:
            return None
        if payment.state == "FAILED" and payment.charged:
            payment.state = "AUTHORIZED"  # the lost answer's charge, looked up first
        if payment.state == source:
            payment.state = target
        return payment.state


def _provider_unavailable() -> Unavailable:
    """What the order service's client makes of the payment service's UNAVAILABLE
    PAYMENT_PROVIDER_UNAVAILABLE (services.order.peers.PeerError)."""
    return Unavailable(
        "payment service is unavailable",
        "PAYMENT_UNAVAILABLE",
        peer="payment",
        peer_reason="PAYMENT_PROVIDER_UNAVAILABLE",
    )


@dataclass
class Shop:
    repository: InMemoryOrders = field(default_factory=InMemoryOrders)
    peers: FakePeers = field(default_factory=FakePeers)
    # How often the use cases said an event was committed (the relay's wake-up).
    commits: list[None] = field(default_factory=list)

    def orders(self, attempt_timeout: float = 20.0) -> Orders:
        return Orders(
            self.repository,
            self.peers,
            PageTokens("unit-test-secret"),
            events_committed=lambda: self.commits.append(None),
            attempt_timeout=attempt_timeout,
            retry_poll=0.001,
        )

    def nothing_written(self) -> bool:
        return not self.repository.rows and not self.repository.events and not self.commits

    def only_payment_failed(self) -> events_pb2.PaymentFailed:
        """An attempt given up at its payment leaves no order, only its PaymentFailed
        event (announced to the relay once): that event."""
        assert not self.repository.rows and len(self.commits) == 1
        [event] = self.repository.events
        assert event.subject == "payment.failed"
        return events_pb2.PaymentFailed.FromString(event.payload)


def lines(quantities: dict[str, int]) -> list[Line]:
    return [Line(product_id, quantity) for product_id, quantity in quantities.items()]


def pending_row(order_id: str, user_id: str, key: str, *, age: timedelta) -> OrderRow:
    """A claimed attempt as a process that died mid-way left it."""
    created = utcnow() - age
    return OrderRow(
        id=order_id,
        user_id=user_id,
        status=PENDING,
        idempotency_key=key,
        request_fingerprint="x",
        reservation_id=f"res_{order_id}",
        currency_code="EUR",
        total_amount_minor=1000,
        cancel_reason="",
        stock_released=False,
        payment_state="NONE",
        create_time=created,
        update_time=created,
        items=[],
    )
