"""Order use cases: placing an order across user, product and payment, all or nothing;
cancelling it (money and stock back); reading orders; cleaning up
after attempts that failed.

Placing an order, in order: return the stored order if the idempotency key was
used for the same request before; check the user (a read of the replica of users'
statuses, or a question to the user service: services/order/users.py; so an inactive or
unknown user writes nothing); claim the key with a PENDING row; reserve the stock under a
reservation id of this order, which answers with the products' names and prices as
the reservation took them (no read of its own: one call fewer per order); price the
items; authorize the payment (the total, on the request's payment method, under the
order id, which is the payment's idempotency key); then store the order PLACED with
its items and total, its payment AUTHORIZED, and its OrderCreated event in one
transaction; then capture the payment (in one call with the captures of the orders
placed while the previous call was on its way: `Batcher`). Items that cannot be
reserved (unknown, short) or priced together (two currencies, a total beyond int64)
fail the attempt, which is undone as below: the caller gets the error, and nothing is
left of it.

Why capture after placing: an order is placed only when its money is held, and money
is taken only for an order that is stored. Capturing first would take money for an
order that may yet fail to be stored (then it must be refunded, real money moving
twice); placing first leaves at worst a placed order whose capture is still to be
done, which is safe to repeat: Capture is idempotent, so a capture that failed (or
whose process died) is repeated by the sweeper until it succeeds.

Failures. If anything fails after the claim, the attempt is undone: its payment is
voided if it may have been authorized (Void is idempotent; no payment means nothing was
authorized, and a declined one holds nothing), its reservation released, and the claim
removed, so the key is free again (a reservation refused outright, or never sent because
the product service's breaker is open, took nothing and is not released); the caller
gets the error (a decline is the payment service's FAILED_PRECONDITION PAYMENT_DECLINED,
with its details). An attempt given up at its payment (declined, or the provider not
answering even to the retries) is announced with a PaymentFailed event, written in the
transaction that marks it FAILED (the first step of its undoing), so the user's live
stream hears of it: at most one per attempt, and none for an attempt the sweeper undoes
(its process died, so why is not known) or one the payment service itself did not answer
(the mesh's failure, not the payment's: the client retries with the same key). A retry
that meets an attempt whose undoing waits on a peer that is down (FAILED, holding the
key) tries the undoing itself once and, if it still fails, answers UNAVAILABLE
ORDER_ATTEMPT_UNDOING at once rather than waiting out its deadline. A payment provider
that does not answer is UNAVAILABLE from Authorize; the channel's retry policy repeats
Authorize (it is IDEMPOTENT) under the same order id, and the payment service then finds
the charge the lost call made instead of charging again; if it still fails, the attempt
is undone like any other (its hold voided) and a retry with the same key is a new
attempt. If the process dies mid-way, the sweeper does the undoing: a PENDING attempt
older than the attempt timeout (plus a margin) becomes FAILED with its payment to void,
and since PLACED is only ever set on a PENDING order, an attempt is either placed or
voided, never both. Outgoing calls of an attempt carry at most the attempt's time, so
nothing of it still runs at a peer when the sweeper takes it over.

Cancelling: the order becomes CANCELLED (with its event), its payment is refunded
under a request id derived from the order id (so a repeated cancel is the same
refund, and the payment service refunds an order at most once; a payment whose
capture was still to come is voided instead), then its stock is released. A refund or
release that fails is left to the sweeper, which repeats it until it succeeds. The call
that records the refund (REFUNDING -> REFUNDED, which happens once) writes the
PaymentRefunded event in the same transaction: one event per refunded order.

The sweeper, every few seconds: fails stale attempts; undoes FAILED attempts (void,
release, free the key); captures placed orders whose capture failed; refunds and
releases cancelled orders whose refund or release failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

from services.common import deadline
from services.common.batching import Batcher
from services.common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from services.common.ids import new_id
from services.common.pagination import PageTokens, page_size
from services.common.times import utcnow
from services.order.convert import (
    order_cancelled,
    order_created,
    payment_failed,
    payment_refunded,
)
from services.order.models import (
    DEFAULT_PAYMENT_METHOD,
    FAILED,
    PAYMENT_AUTHORIZED,
    PAYMENT_CAPTURED,
    PAYMENT_DECLINED,
    PAYMENT_NONE,
    PAYMENT_REFUNDED,
    PAYMENT_REFUNDING,
    PAYMENT_UNAVAILABLE,
    PENDING,
    PLACED,
    VISIBLE,
    KeyTaken,
    Line,
    OrderItemRow,
    OrderRow,
    PaymentFailure,
    PricedProduct,
)
from services.order.repository import Announce, OrderRepository

log = logging.getLogger("shop.order")

INT64_MAX = 2**63 - 1
# The longest a claimed attempt may take from claim to PLACED (ORDER_ATTEMPT_TIMEOUT):
# if its process dies, its key is free again within this plus CLOCK_MARGIN plus one
# sweep interval.
ATTEMPT_TIMEOUT = 20.0
CLOCK_MARGIN = 5.0
# A placed order whose payment is still AUTHORIZED this long after it was placed had
# its capture fail (or its process die): the sweeper captures it.
CAPTURE_RETRY_AFTER = CLOCK_MARGIN

# A payment's states as the payment service names them (shop.payment.v1.PaymentState).
AUTHORIZED, CAPTURED, VOIDED, REFUNDED = "AUTHORIZED", "CAPTURED", "VOIDED", "REFUNDED"
# A capture the provider did not answer leaves the payment as it was: AUTHORIZED, or
# FAILED (the answer to its authorization was lost too, and is looked up first). The
# sweeper captures it later.
UNANSWERED = {AUTHORIZED, "FAILED"}
# The most captures sent in one call (the payment contract's limit).
CAPTURE_BATCH = 100
# How long CreateOrder waits for its capture (the call on its way, then its own) before
# answering with the payment AUTHORIZED; the capture goes on and is recorded all the same.
CAPTURE_WAIT = 5.0
# A payment in these states (or none at all) holds no money of the customer.
HOLDS_NOTHING = {None, VOIDED, REFUNDED, "DECLINED", "FAILED"}
# What an Authorize answers when it refused and therefore holds nothing: a decline, an
# unknown payment method.
REFUSED = {"FAILED_PRECONDITION", "INVALID_ARGUMENT"}
# What a ReserveStock answers when it refused and therefore took nothing under the id: an
# unknown product, short stock, a reservation id released already.
RESERVE_REFUSED = {"NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT"}
# The reason of a ReserveStock the product service's open circuit breaker refused: never
# sent, so nothing to release either.
RESERVE_NOT_SENT = "PRODUCT_CIRCUIT_OPEN"
# The reason of a call the payment service's open circuit breaker refused: never sent.
NOT_SENT = "PAYMENT_CIRCUIT_OPEN"
# The payment service's reason for a refusal by the provider (ErrorInfo metadata
# "decline_code" says why).
DECLINED_REASON = "PAYMENT_DECLINED"
# The payment service's reason for "the provider did not answer, after the retries"; the
# order service's UNAVAILABLE carries it as metadata "peer_reason". A payment service
# that does not answer itself (a replica gone, the breaker open, the attempt's time spent)
# is the mesh's failure, not the payment's: the client retries with the same key.
PROVIDER_UNAVAILABLE = "PAYMENT_PROVIDER_UNAVAILABLE"


class Peers(Protocol):
    """The user, product and payment services as the use cases need them; their
    failures are DomainErrors (the peer's own reason and details, or UNAVAILABLE)."""

    async def active_user(self, user_id: str) -> None:
        """Raises unless the user exists and is active."""
        ...

    async def reserve(
        self, reservation_id: str, items: Mapping[str, int]
    ) -> Sequence[PricedProduct]:
        """Takes the stock of every item or none of it (repeating an id repeats nothing);
        the products of `items`, in that order, priced as the reservation took them (a
        repeat: as they are now). Raises naming any product that is unknown or short."""
        ...

    async def release(self, reservation_id: str) -> None:
        """Gives a reservation's stock back, once; runs after the caller's deadline too."""
        ...

    async def authorize(
        self,
        order_id: str,
        user_id: str,
        currency_code: str,
        amount_minor: int,
        payment_method: str,
    ) -> None:
        """Holds the amount on the payment method, once per order id (a repeat finds the
        earlier charge). A refusal raises FAILED_PRECONDITION PAYMENT_DECLINED; a
        provider that does not answer, UNAVAILABLE (whether it charged is not known)."""
        ...

    async def capture_all(self, order_ids: Sequence[str]) -> Sequence[str | None]:
        """Takes the held amounts (again: a no-op), in one call. Each payment's state
        after, in the order of `order_ids`: CAPTURED; the state that does not allow it;
        still AUTHORIZED (or FAILED) when the provider did not answer; None when the
        order has no payment. Raises when the payment service does not answer."""
        ...

    async def void(self, order_id: str) -> str | None:
        """Gives the hold back (again: a no-op). The payment's state after: VOIDED, or the
        state that does not allow it (DECLINED, CAPTURED, ...); None when the order has no
        payment. Runs after the caller's deadline too."""
        ...

    async def refund(self, order_id: str, request_id: str, reason: str) -> str | None:
        """Gives the captured amount back, at most once per order. The payment's state
        after: REFUNDED, or the state that does not allow it (AUTHORIZED when never
        captured, ...); None when the order has no payment."""
        ...


def payment_failure(error: DomainError, method: str) -> PaymentFailure | None:
    """What an Authorize that failed means for the user: declined by the provider, or not
    completed by it; None for any other failure (an unknown payment method, a payment
    service that did not answer: nothing to tell the user beyond the call's error)."""
    if error.reason == DECLINED_REASON:
        return PaymentFailure(PAYMENT_DECLINED, method, error.metadata.get("decline_code", ""))
    if PROVIDER_UNAVAILABLE in (error.reason, error.metadata.get("peer_reason")):
        return PaymentFailure(PAYMENT_UNAVAILABLE, method)
    return None


def fingerprint(user_id: str, lines: Sequence[Line], payment_method: str) -> str:
    parts: list[object] = [user_id, [(line.product_id, line.quantity) for line in lines]]
    if payment_method != DEFAULT_PAYMENT_METHOD:
        # Orders stored before payments (all on the default method) keep their print.
        parts.append(payment_method)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def refund_request_id(order_id: str) -> str:
    """The one refund of a cancelled order: every cancel (and the sweeper) asks this one."""
    return f"cancel-{order_id}"


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
        active_user: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._repository = repository
        self._peers = peers
        # Raises unless the user may order: the replica of users' statuses where there is
        # one (services/order/users.py), else the user service.
        self._active_user = active_user or peers.active_user
        self._tokens = page_tokens
        # Tells the outbox relay an event was committed, so it publishes without waiting.
        self._events_committed = events_committed
        self._attempt_timeout = attempt_timeout
        # An attempt never runs longer than attempt_timeout, so a PENDING row older than
        # that (plus a margin for clocks of other replicas) belongs to a dead process.
        self._pending_timeout = attempt_timeout + CLOCK_MARGIN
        self._retry_poll = retry_poll
        self._cleanups: set[asyncio.Task[None]] = set()
        # The captures of the orders placed while one call of them is on its way go
        # together in the next call (services/common/batching.py). The sweeper's have a
        # batcher of their own: a backlog of them never queues ahead of a new order's.
        self.captures = Batcher(self._capture_batch, CAPTURE_BATCH)
        self._swept_captures = Batcher(self._capture_batch, CAPTURE_BATCH)

    # -- placing -------------------------------------------------------------

    async def create(
        self, user_id: str, lines: Sequence[Line], key: str, payment_method: str = ""
    ) -> OrderRow:
        method = payment_method or DEFAULT_PAYMENT_METHOD
        request = fingerprint(user_id, lines, method)
        helped_undo = False
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
                if existing.status == FAILED:
                    # An earlier attempt failed and holds the key until it is undone, which
                    # may wait on a peer that is down (then the sweeper repeats it): undo
                    # it here once, then claim the key, or say so at once rather than
                    # waiting out the caller's deadline.
                    if helped_undo:
                        raise Unavailable(
                            "an earlier attempt with this idempotency key is still being "
                            "undone; retry with the same key",
                            "ORDER_ATTEMPT_UNDOING",
                        )
                    helped_undo = True
                    await self._abandon(existing.id)
                    continue
                # Another attempt with this key is under way: wait for it.
                await asyncio.sleep(self._retry_poll)
                continue
            await self._active_user(user_id)
            order = _pending_order(user_id, key, request)
            try:
                await self._repository.claim(order)
            except KeyTaken:
                claimed = await self._repository.by_key(key)
                if claimed is None or claimed.id != order.id:
                    continue  # a concurrent attempt claimed the key first: look again
                # This claim's own row: its first send committed, the answer was lost.
            break
        # Whether stock may be held when the attempt fails, so undoing it releases it (a
        # refused reservation took nothing: releasing it would leave a tombstone behind;
        # if this undoing fails, the sweeper's releases anyway, which is harmless).
        may_reserve = True
        # Whether a payment may be held when the attempt fails, so undoing it voids it.
        may_hold = False
        # Why the payment failed, when it is what the attempt gives up at (announced as
        # PaymentFailed with the undoing).
        failure: PaymentFailure | None = None
        try:
            async with asyncio.timeout(self._attempt_timeout):
                with deadline.at_most(self._attempt_timeout):
                    try:
                        products = await self._peers.reserve(
                            order.reservation_id,
                            {line.product_id: line.quantity for line in lines},
                        )
                    except DomainError as refused:
                        may_reserve = (
                            refused.code.name not in RESERVE_REFUSED
                            and refused.reason != RESERVE_NOT_SENT
                        )
                        raise
                    _price(order, lines, products)
                    may_hold = True
                    try:
                        await self._peers.authorize(
                            order.id,
                            user_id,
                            order.currency_code,
                            order.total_amount_minor,
                            method,
                        )
                    except DomainError as refused:
                        may_hold = refused.code.name not in REFUSED and refused.reason != NOT_SENT
                        failure = payment_failure(refused, method)
                        raise
                order.payment_state = PAYMENT_AUTHORIZED
                placed = await self._repository.place(order, utcnow(), order_created)
                if placed is None:
                    raise Unavailable("the order attempt expired; retry with the same key")
        except BaseException as error:
            # Shielded: it goes on even if this call is cancelled at its deadline.
            undo = self._abandon(order.id, may_hold, _failed(order, failure), release=may_reserve)
            await asyncio.shield(self._spawn(undo))
            if isinstance(error, TimeoutError):
                raise Unavailable(
                    "the order attempt took too long; retry with the same key"
                ) from None
            raise
        self._events_committed()
        # The order stands whatever the capture does: one that fails is the sweeper's.
        await self._capture(placed, self.captures)
        return placed

    # -- undoing -------------------------------------------------------------

    def _spawn(self, cleanup: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(cleanup)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _abandon(
        self,
        order_id: str,
        void: bool = False,
        announce: Announce | None = None,
        *,
        release: bool = True,
    ) -> None:
        """Undoes a failed attempt: voids its payment if it may hold one (`void`, or as
        the row says), releases its reservation (unless it was refused: `release`
        False), then frees its key. An attempt given up
        at its payment is announced (`announce`: PaymentFailed) in the transaction that
        marks it FAILED, once. Never raises: what fails here is retried by the sweeper."""
        try:
            abandoned = await self._repository.fail(order_id, utcnow(), void, announce)
            if announce is not None and abandoned is not None:
                self._events_committed()
            if abandoned is None:
                if void and await self._repository.get(order_id) is None:
                    # The sweeper undid this attempt while it was authorizing, and its void
                    # may have come before the authorization: void again (idempotent).
                    await self._void(order_id)
                return
            if abandoned.void:
                await self._void(order_id)
            if release:
                await self._peers.release(abandoned.reservation_id)
            await self._repository.remove_failed(order_id)
        except Exception as error:
            log.warning(
                "cleanup of a failed order attempt deferred to the sweeper",
                extra={"order_id": order_id, "error": type(error).__name__},
            )

    async def _void(self, order_id: str) -> None:
        """Gives back whatever a failed attempt's payment holds; raises if it can't."""
        state = await self._peers.void(order_id)
        if state not in HOLDS_NOTHING:
            # CAPTURED: never for an attempt that was not placed (the capture follows the
            # placing); said loudly rather than left unnoticed.
            log.error(
                "the payment of an order attempt that failed is not voidable",
                extra={"order_id": order_id, "state": state},
            )

    async def _capture(self, order: OrderRow, captures: Batcher[str, str | None]) -> None:
        """Takes the payment of a placed order, in one call with the other orders'
        captures under way (`_capture_batch`), waiting CAPTURE_WAIT at most. Never
        raises (the order stands): what fails is left to the sweeper."""
        asking = asyncio.ensure_future(captures.ask(order.id))
        # Past the wait it goes on unawaited: its failure is the sweeper's, not a log line.
        asking.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            state = await asyncio.wait_for(asyncio.shield(asking), CAPTURE_WAIT)
        except Exception as error:
            log.warning(
                "payment capture deferred to the sweeper",
                extra={"order_id": order.id, "error": type(error).__name__},
            )
            return
        if state == CAPTURED:
            order.payment_state = PAYMENT_CAPTURED
        elif state in UNANSWERED:
            log.warning(
                "payment capture deferred to the sweeper",
                extra={"order_id": order.id, "state": state},
            )
        else:
            # The payment of a placed order is AUTHORIZED until captured: anything else
            # is a fault to look into; the sweeper keeps trying meanwhile.
            log.error(
                "the payment of a placed order could not be captured",
                extra={"order_id": order.id, "state": state},
            )

    async def _capture_batch(self, order_ids: Sequence[str]) -> Sequence[str | None]:
        """The captures of several placed orders in one call to the payment service, and
        the orders' payments marked CAPTURED in one transaction."""
        states = await self._peers.capture_all(order_ids)
        captured = [o for o, state in zip(order_ids, states, strict=True) if state == CAPTURED]
        if captured:
            await self._repository.mark_captured(captured)
        return states

    async def sweep(self) -> int:
        """One pass: undoes attempts that failed or died mid-way (void, release, free the
        key), captures placed orders whose capture failed, and refunds and releases
        cancelled orders whose refund or release failed; returns how many orders it
        took up."""
        now = utcnow()
        stale = await self._repository.fail_stale(
            now - timedelta(seconds=self._pending_timeout), now
        )
        failed = await self._repository.failed()
        uncaptured = await self._repository.uncaptured(now - timedelta(seconds=CAPTURE_RETRY_AFTER))
        unrefunded = await self._repository.unrefunded()
        unreleased = await self._repository.unreleased_cancelled()
        for order_id in failed:
            await self._abandon(order_id)
        # Side by side: their captures go in one call.
        to_capture = [await self._repository.get(order_id) for order_id in uncaptured]
        await asyncio.gather(
            *(
                self._capture(o, self._swept_captures)
                for o in to_capture
                if o is not None and o.status == PLACED
            )
        )
        for order_id in unrefunded:
            await self._refund_cancelled(order_id)
        for order_id in unreleased:
            await self._release_cancelled(order_id)
        if stale:
            log.warning("abandoned stale order attempts", extra={"count": len(stale)})
        return len({*failed, *uncaptured, *unrefunded, *unreleased})

    async def run_sweeper(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.sweep()

    # -- cancelling ----------------------------------------------------------

    async def cancel(self, order_id: str, reason: str) -> OrderRow:
        """Cancels a placed order, refunds its payment and gives its stock back; a
        cancelled one stays as it is (its refund, if it failed before, is tried again)."""
        order = await self.get(order_id)
        if order.status == PLACED:
            cancelled = await self._repository.cancel(order_id, reason, utcnow(), order_cancelled)
            # None: another call cancelled it first; it is as that call left it.
            order = cancelled if cancelled is not None else await self.get(order_id)
        self._events_committed()
        if order.payment_state == PAYMENT_REFUNDING and await self._refund_cancelled(order_id):
            order.payment_state = PAYMENT_REFUNDED
        if not order.stock_released:
            order.stock_released = await self._release_cancelled(order_id)
        return order

    async def _refund_cancelled(self, order_id: str) -> bool:
        """Gives a cancelled order's money back; False when that is left to the sweeper.
        Every call asks for the same refund (refund_request_id), so it happens once."""
        order = await self._repository.get(order_id)
        if order is None or order.payment_state != PAYMENT_REFUNDING:
            return True
        request_id = refund_request_id(order_id)
        reason = order.cancel_reason or "order cancelled"
        try:
            state = await self._peers.refund(order_id, request_id, reason)
            if state == AUTHORIZED:
                # Never captured (its capture was still to come): the hold is given back.
                state = await self._peers.void(order_id)
                if state == CAPTURED:  # captured meanwhile: refunded after all
                    state = await self._peers.refund(order_id, request_id, reason)
        except DomainError as error:
            log.warning(
                "refund deferred to the sweeper",
                extra={"order_id": order_id, "error": error.message},
            )
            return False
        if state not in HOLDS_NOTHING:
            log.warning(
                "refund deferred to the sweeper",
                extra={"order_id": order_id, "state": state},
            )
            return False
        # Announced by the one call that records the refund (PaymentRefunded, once), and
        # only when money was given back (a payment that holds nothing for another
        # reason, such as none found, is recorded without an event).
        announce: Announce | None = None
        if state in (REFUNDED, VOIDED):
            announce = partial(payment_refunded, request_id=request_id, voided=state == VOIDED)
        if await self._repository.mark_refunded(order_id, announce) and announce is not None:
            self._events_committed()
        return True

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


def _pending_order(user_id: str, key: str, request: str) -> OrderRow:
    """The PENDING order that claims the key: not priced yet (the reservation prices it),
    not placed."""
    now = utcnow()
    order_id = new_id("ord")
    return OrderRow(
        id=order_id,
        user_id=user_id,
        status=PENDING,
        idempotency_key=key,
        request_fingerprint=request,
        reservation_id=f"res_{order_id}",
        currency_code="",
        total_amount_minor=0,
        cancel_reason="",
        stock_released=False,
        payment_state=PAYMENT_NONE,
        create_time=now,
        update_time=now,
        items=[],
    )


def _price(order: OrderRow, lines: Sequence[Line], products: Sequence[PricedProduct]) -> None:
    """Prices the attempt's `order` with its reserved `products` (in the order of
    `lines`): its items, currency and total."""
    currencies = {p.currency_code for p in products}
    if len(currencies) > 1:
        raise FailedPrecondition(
            "all products of an order must be priced in one currency",
            "MIXED_CURRENCIES",
            [f"product:{p.id}" for p in products],
        )
    order.currency_code = currencies.pop()
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


def _failed(order: OrderRow, failure: PaymentFailure | None) -> Announce | None:
    """How an attempt given up at its payment is announced: PaymentFailed of the attempt's
    own priced order (the stored PENDING row has no total); None for any other failure."""
    if failure is None:
        return None
    return lambda _stored: payment_failed(order, failure)
