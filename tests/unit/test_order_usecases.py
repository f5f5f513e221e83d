"""The order use cases against an in-memory repository and fake peers: placing (all or
nothing, idempotent), paying (authorize, place, capture; declines, lost answers),
compensation, the sweeper, cancelling (refund once), paging and the feed."""

from __future__ import annotations

import asyncio
import gc
from datetime import timedelta

import pytest

from services.common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.events.envelope import Event
from services.common.events.feed import Feed
from services.common.times import to_timestamp
from services.order import usecases
from services.order.convert import order_to_proto, to_feed_message
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
    KeyTaken,
    Line,
    OrderRow,
    PricedProduct,
)
from services.order.usecases import Orders
from shop.order.v1 import events_pb2
from tests.fakes.order import InMemoryOrders, Shop, lines, pending_row
from tests.waits import eventually

# -- placing ----------------------------------------------------------------------


async def test_an_order_is_priced_reserved_placed_and_announced(shop: Shop, orders: Orders) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10, price=250)
    tea = shop.peers.add_product("tea", stock=5, price=1000)

    order = await orders.create(user, lines({mug: 2, tea: 1}), "key-1")

    assert order.id.startswith("ord_") and order.status == PLACED
    assert [
        (i.product_id, i.quantity, i.unit_amount_minor, i.line_amount_minor) for i in order.items
    ] == [("mug", 2, 250, 500), ("tea", 1, 1000, 1000)]
    assert (order.currency_code, order.total_amount_minor) == ("EUR", 1500)
    assert shop.peers.stock == {"mug": 8, "tea": 4}
    assert shop.peers.reservations == {f"res_{order.id}": {"mug": 2, "tea": 1}}
    [event] = shop.repository.events
    assert event.subject == "order.created"
    created = events_pb2.OrderCreated.FromString(event.payload)
    assert created.event_id == event.event_id
    assert created.order == order_to_proto(order)
    assert created.occurred_at == to_timestamp(order.update_time)
    assert len(shop.commits) == 1
    assert order_to_proto(await orders.get(order.id)) == order_to_proto(order)


async def test_a_retry_with_the_same_key_returns_the_same_order_and_reserves_once(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10)
    first = await orders.create(user, lines({mug: 3}), "retry-me")
    again = await orders.create(user, lines({mug: 3}), "retry-me")
    assert order_to_proto(again) == order_to_proto(first)
    assert shop.peers.stock[mug] == 7
    assert len(shop.peers.reservations) == 1
    assert len(shop.repository.events) == 1


class WatchedOrders(InMemoryOrders):
    """Says when a lookup by key found an attempt still under way."""

    def __init__(self) -> None:
        super().__init__()
        self.saw_attempt_under_way = asyncio.Event()

    async def by_key(self, key: str) -> OrderRow | None:
        row = await super().by_key(key)
        if row is not None and row.status == PENDING:
            self.saw_attempt_under_way.set()
        return row


async def test_a_retry_during_the_attempt_waits_for_it_and_gets_its_order() -> None:
    repository = WatchedOrders()
    shop = Shop(repository=repository)
    orders = shop.orders()
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10)
    shop.peers.hold_reserve = asyncio.Event()

    first = asyncio.create_task(orders.create(user, lines({mug: 3}), "k"))
    await shop.peers.reserving.wait()
    retry = asyncio.create_task(orders.create(user, lines({mug: 3}), "k"))
    await repository.saw_attempt_under_way.wait()
    assert not retry.done()
    shop.peers.hold_reserve.set()

    placed, retried = await asyncio.gather(first, retry)
    assert retried.id == placed.id and retried.status == PLACED
    assert shop.peers.stock[mug] == 7 and len(shop.peers.reservations) == 1


class LostClaimAnswer(InMemoryOrders):
    """A claim that commits, then answers KeyTaken: what a claim sent again after a lost
    connection meets when its first send had committed (Database.write_one resends)."""

    async def claim(self, order: OrderRow) -> None:
        await super().claim(order)
        raise KeyTaken(order.idempotency_key)


async def test_a_claim_whose_first_send_committed_goes_on_with_its_own_row() -> None:
    shop = Shop(repository=LostClaimAnswer())
    orders = shop.orders()
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10)
    async with asyncio.timeout(2):  # not waiting on itself as on another attempt
        order = await orders.create(user, lines({mug: 3}), "k")
    assert order.status == PLACED
    assert [row.id for row in shop.repository.rows.values()] == [order.id]
    assert shop.peers.stock[mug] == 7 and len(shop.peers.reservations) == 1


@pytest.mark.parametrize(
    ("user_id", "quantity"), [("usr_ann", 4), ("usr_bob", 3)], ids=["other items", "other user"]
)
async def test_a_key_reused_for_another_request_is_refused(
    shop: Shop, orders: Orders, user_id: str, quantity: int
) -> None:
    shop.peers.add_user("usr_ann")
    shop.peers.add_user("usr_bob")
    mug = shop.peers.add_product("mug", stock=10)
    await orders.create("usr_ann", lines({mug: 3}), "shared-key")
    with pytest.raises(AlreadyExists) as raised:
        await orders.create(user_id, lines({mug: quantity}), "shared-key")
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert shop.peers.stock[mug] == 7
    assert len(shop.repository.rows) == 1


@pytest.mark.parametrize(
    ("known", "error", "reason"),
    [(True, FailedPrecondition, "USER_INACTIVE"), (False, NotFound, "USER_NOT_FOUND")],
    ids=["inactive", "unknown"],
)
async def test_an_inactive_or_unknown_user_is_refused_before_anything_is_written(
    shop: Shop, orders: Orders, known: bool, error: type[DomainError], reason: str
) -> None:
    if known:
        shop.peers.add_user("usr_ann", active=False)
    mug = shop.peers.add_product("mug", stock=3)
    with pytest.raises(error) as raised:
        await orders.create("usr_ann", lines({mug: 1}), "k")
    assert raised.value.reason == reason
    assert shop.peers.stock[mug] == 3 and not shop.peers.reservations
    assert shop.nothing_written()


async def test_an_unknown_user_with_an_unknown_product_is_refused_for_the_user(
    shop: Shop, orders: Orders
) -> None:
    """Both looked up at once, the user's failure is the one said (as when asked first)."""
    with pytest.raises(NotFound) as raised:
        await orders.create("usr_nobody", [Line("gone", 1)], "k")
    assert raised.value.reason == "USER_NOT_FOUND"
    assert shop.nothing_written()


async def test_the_order_is_priced_as_its_reservation_took_the_stock(
    shop: Shop, orders: Orders
) -> None:
    """No price read of its own: the names and prices come with the reservation, so a
    price changed before the stock is taken is the one charged, and nothing else asks
    the product service."""
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=3, price=500)
    shop.peers.hold_reserve = asyncio.Event()
    attempt = asyncio.create_task(orders.create(user, lines({mug: 2}), "k"))
    await shop.peers.reserving.wait()
    shop.peers.products_by_id[mug] = PricedProduct(mug, "Mug, blue", "EUR", 700)
    shop.peers.hold_reserve.set()
    placed = await attempt
    assert (placed.currency_code, placed.total_amount_minor) == ("EUR", 1400)
    assert [(i.product_name, i.unit_amount_minor) for i in placed.items] == [("Mug, blue", 700)]
    assert shop.peers.payments[placed.id].amount_minor == 1400
    stored = await shop.repository.get(placed.id)
    assert stored is not None and stored.total_amount_minor == 1400
    assert [i.line_amount_minor for i in stored.items] == [1400]


async def test_an_unknown_product_is_refused_and_nothing_is_left_written(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=3)
    with pytest.raises(NotFound) as raised:
        await orders.create(user, [Line(mug, 1), Line("gone", 1)], "k")
    assert raised.value.reason == "PRODUCT_NOT_FOUND"
    assert raised.value.names == ("gone",)
    assert shop.peers.stock[mug] == 3 and not shop.peers.reservations
    # Refused, the reservation took nothing: no release (the product service would keep
    # a tombstone of it).
    assert not shop.peers.released
    assert shop.nothing_written()


async def test_mixed_currencies_and_totals_beyond_int64_are_refused(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    euro = shop.peers.add_product("euro", stock=9, currency="EUR")
    dollar = shop.peers.add_product("dollar", stock=9, currency="USD")
    dear = shop.peers.add_product("dear", stock=9, price=2**62)
    with pytest.raises(FailedPrecondition) as mixed:
        await orders.create(user, lines({euro: 1, dollar: 1}), "k1")
    assert mixed.value.reason == "MIXED_CURRENCIES"
    assert mixed.value.subjects == ["product:euro", "product:dollar"]
    with pytest.raises(FailedPrecondition) as large:
        await orders.create(user, lines({dear: 2}), "k2")
    assert large.value.reason == "ORDER_TOTAL_TOO_LARGE"
    # Priced once reserved: each reservation was given back, so no stock moved.
    assert shop.peers.released == set(shop.peers.reservations) and len(shop.peers.released) == 2
    assert shop.peers.stock == {euro: 9, dollar: 9, dear: 9}
    assert shop.nothing_written()


async def test_short_stock_of_one_item_moves_nothing_and_frees_the_key(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    a, b = shop.peers.add_product("a", stock=5), shop.peers.add_product("b", stock=5)
    c = shop.peers.add_product("c", stock=1)
    with pytest.raises(FailedPrecondition) as raised:
        await orders.create(user, lines({a: 2, b: 2, c: 2}), "short-1")
    assert raised.value.reason == "INSUFFICIENT_STOCK"
    assert shop.peers.stock == {a: 5, b: 5, c: 1}
    assert not shop.peers.released
    assert shop.nothing_written()

    shop.peers.stock[c] = 3
    placed = await orders.create(user, lines({a: 2, b: 2, c: 2}), "short-1")
    assert placed.status == PLACED
    assert shop.peers.stock == {a: 3, b: 3, c: 1}


# -- compensation and the sweeper ------------------------------------------------------


async def test_a_failure_after_the_reservation_releases_it_and_frees_the_key(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    a, b = shop.peers.add_product("a", stock=6), shop.peers.add_product("b", stock=6)
    shop.repository.fail_place = RuntimeError("disk on fire")
    with pytest.raises(RuntimeError, match="disk on fire"):
        await orders.create(user, lines({a: 2, b: 3}), "store-fails")
    [reservation] = shop.peers.reservations
    assert shop.peers.released == {reservation}, "the reservation was taken, then released"
    assert shop.peers.stock == {a: 6, b: 6}
    assert shop.nothing_written()

    retried = await orders.create(user, lines({a: 2, b: 3}), "store-fails")
    assert retried.status == PLACED
    assert shop.peers.stock == {a: 4, b: 3}
    assert shop.peers.held() == {a: 2, b: 3}


async def test_a_compensation_that_cannot_release_is_finished_by_the_sweeper(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    shop.repository.fail_place = RuntimeError("disk on fire")
    shop.peers.failing_releases = 1
    with pytest.raises(RuntimeError):
        await orders.create(user, lines({mug: 2}), "k")
    # The attempt is FAILED, its stock still held and its key still claimed.
    [row] = shop.repository.rows.values()
    assert row.status == FAILED and shop.peers.stock[mug] == 3
    with pytest.raises(NotFound):
        await orders.get(row.id)

    assert await orders.sweep() == 1
    assert shop.peers.stock[mug] == 5 and not shop.repository.rows
    assert await orders.sweep() == 0
    assert (await orders.create(user, lines({mug: 2}), "k")).status == PLACED


async def test_a_reservation_the_breaker_refused_is_not_released(
    shop: Shop, orders: Orders
) -> None:
    """Never sent, it took nothing: the attempt is undone at once, the key free again."""
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    shop.peers.product_circuit_open = True
    with pytest.raises(Unavailable) as raised:
        await orders.create(user, lines({mug: 2}), "k")
    assert raised.value.reason == "PRODUCT_CIRCUIT_OPEN"
    assert not shop.peers.released and shop.nothing_written()


async def test_a_retry_meeting_an_attempt_still_to_undo_undoes_it_or_fails_at_once(
    shop: Shop, orders: Orders
) -> None:
    """The product service went away mid-attempt: the reservation may have been made and
    its release fails, so the attempt stays FAILED, holding the key. A retry with that
    key does not wait out its deadline: it tries the undoing itself, and says
    UNAVAILABLE at once while that still fails; once the product service is back, the
    retry undoes the earlier attempt and places the order."""
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    shop.peers.failing_reserves = 1
    shop.peers.failing_releases = 2  # the attempt's own undoing, then the retry's
    with pytest.raises(Unavailable):
        await orders.create(user, lines({mug: 2}), "k")
    [failed] = shop.repository.rows.values()
    assert failed.status == FAILED

    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(2):
        with pytest.raises(Unavailable) as raised:
            await orders.create(user, lines({mug: 2}), "k")
    assert raised.value.reason == "ORDER_ATTEMPT_UNDOING"
    assert shop.peers.failing_releases == 0, "the retry tried the release itself"
    assert asyncio.get_running_loop().time() - started < 0.5
    assert list(shop.repository.rows) == [failed.id]

    shop.peers.failing_releases = 0  # the product service is back
    placed = await orders.create(user, lines({mug: 2}), "k")
    assert placed.status == PLACED and placed.id != failed.id
    assert failed.reservation_id in shop.peers.released
    assert list(shop.repository.rows) == [placed.id] and shop.peers.stock[mug] == 3


async def test_an_attempt_cut_off_at_the_attempt_timeout_is_undone(shop: Shop) -> None:
    orders = shop.orders(attempt_timeout=0.05)
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=4)
    shop.peers.hold_reserve = asyncio.Event()  # the product service never answers
    with pytest.raises(Unavailable) as raised:
        await orders.create(user, lines({mug: 1}), "slow")
    assert "retry with the same key" in raised.value.message
    assert shop.peers.stock[mug] == 4 and shop.peers.held() == {}
    assert shop.nothing_written()


async def test_the_sweeper_undoes_an_attempt_that_died_mid_way(shop: Shop, orders: Orders) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    # One attempt died 30 s ago (beyond the 20 s attempt bound and its 5 s margin) after
    # reserving; another is under way right now.
    dead = pending_row("ord_dead", user, "dead-key", age=timedelta(seconds=30))
    await shop.repository.claim(dead)
    await shop.peers.reserve("res_ord_dead", {mug: 2})
    await shop.repository.claim(pending_row("ord_live", user, "live-key", age=timedelta()))

    assert await orders.sweep() == 1
    assert shop.peers.stock[mug] == 5 and "res_ord_dead" in shop.peers.released
    assert set(shop.repository.rows) == {"ord_live"}
    assert shop.repository.rows["ord_live"].status == PENDING
    placed = await orders.create(user, lines({mug: 2}), "dead-key")
    assert placed.status == PLACED and shop.peers.stock[mug] == 3


async def test_an_attempt_the_sweeper_undid_meanwhile_is_not_placed(shop: Shop) -> None:
    """A slow attempt outlived by the sweeper (its process looked dead): the stock
    stays unreserved, the caller is told to retry, and the retry places the order."""
    orders = shop.orders()
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    shop.peers.hold_reserve = asyncio.Event()
    attempt = asyncio.create_task(orders.create(user, lines({mug: 2}), "k"))
    await shop.peers.reserving.wait()
    [row] = shop.repository.rows.values()
    row.create_time -= timedelta(minutes=1)
    assert await orders.sweep() == 1
    shop.peers.hold_reserve.set()
    with pytest.raises(DomainError):
        await attempt
    assert shop.peers.stock[mug] == 5 and shop.nothing_written()
    shop.peers.hold_reserve = None
    assert (await orders.create(user, lines({mug: 2}), "k")).status == PLACED


# -- paying -----------------------------------------------------------------------


async def test_an_order_is_authorized_placed_then_captured(shop: Shop, orders: Orders) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10, price=250)

    order = await orders.create(user, lines({mug: 3}), "k")

    # The payment's key is the order id; the money is held before the order is stored,
    # and taken after.
    assert shop.peers.payment_calls == [("authorize", order.id), ("capture", order.id)]
    payment = shop.peers.payments[order.id]
    assert (payment.user_id, payment.currency_code, payment.amount_minor) == (user, "EUR", 750)
    assert payment.payment_method == "card_approve", "the default method"
    assert payment.state == "CAPTURED"
    assert shop.repository.rows[order.id].payment_state == PAYMENT_CAPTURED
    assert await orders.sweep() == 0


async def test_a_declined_payment_releases_the_stock_frees_the_key_and_places_nothing(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    with pytest.raises(FailedPrecondition) as raised:
        await orders.create(user, lines({mug: 2}), "k", "card_decline")
    assert raised.value.reason == "PAYMENT_DECLINED"
    assert raised.value.metadata["decline_code"] == "card_declined"
    assert shop.peers.stock[mug] == 5 and shop.peers.held() == {}
    failed = shop.only_payment_failed()
    assert (failed.failure, failed.decline_code) == (
        events_pb2.PAYMENT_FAILURE_DECLINED,
        "card_declined",
    )
    # A declined payment holds nothing: no void is asked for.
    assert [step for step, _ in shop.peers.payment_calls] == ["authorize"]
    assert shop.peers.charges() == []

    placed = await orders.create(user, lines({mug: 2}), "k", "card_approve")
    assert placed.status == PLACED and shop.peers.stock[mug] == 3


async def test_an_unknown_payment_method_is_refused_and_holds_nothing(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    with pytest.raises(InvalidArgument):
        await orders.create(user, lines({mug: 2}), "k", "card_bogus")
    assert shop.peers.stock[mug] == 5 and shop.nothing_written()
    assert [step for step, _ in shop.peers.payment_calls] == ["authorize"]


async def test_a_provider_timeout_voids_the_charge_and_releases_the_stock(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    with pytest.raises(Unavailable):
        await orders.create(user, lines({mug: 2}), "k", "card_timeout")
    # The provider charged before its answer was lost: the compensation found and voided it.
    [payment] = shop.peers.payments.values()
    assert payment.charged and payment.state == "VOIDED"
    assert shop.peers.stock[mug] == 5 and shop.peers.held() == {}
    assert shop.only_payment_failed().failure == events_pb2.PAYMENT_FAILURE_UNAVAILABLE


async def test_a_retry_after_a_timeout_leaves_exactly_one_charge_taken(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    shop.peers.timeouts_after_charge = 1  # the provider's answer is lost once
    with pytest.raises(Unavailable):
        await orders.create(user, lines({mug: 2}), "k")
    placed = await orders.create(user, lines({mug: 2}), "k")

    assert placed.status == PLACED
    [taken] = shop.peers.charges("CAPTURED")
    assert taken.order_id == placed.id
    # The lost attempt's hold was given back; nothing else holds money.
    assert [p.state for p in shop.peers.charges() if p is not taken] == ["VOIDED"]
    assert shop.peers.stock[mug] == 3
    again = await orders.create(user, lines({mug: 2}), "k")
    assert again.id == placed.id and len(shop.peers.charges()) == 2


async def test_a_void_that_fails_is_retried_by_the_sweeper(shop: Shop, orders: Orders) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    shop.peers.failing_voids = 1
    with pytest.raises(Unavailable):
        await orders.create(user, lines({mug: 2}), "k", "card_timeout")
    [row] = shop.repository.rows.values()
    assert (row.status, row.payment_state) == (FAILED, PAYMENT_VOIDING)
    assert shop.peers.payments[row.id].state == "FAILED" and shop.peers.stock[mug] == 3

    assert await orders.sweep() == 1
    assert shop.peers.payments[row.id].state == "VOIDED"
    assert shop.peers.stock[mug] == 5 and not shop.repository.rows


async def test_an_authorize_the_breaker_refused_voids_nothing(shop: Shop, orders: Orders) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=4)

    shop.peers.payment_circuit_open = True  # a void would be refused too
    with pytest.raises(Unavailable) as raised:
        await orders.create(user, lines({mug: 1}), "k")
    assert raised.value.reason == "PAYMENT_CIRCUIT_OPEN"
    # Never sent, so nothing can be held: undone at once, without the payment service.
    assert shop.peers.payment_calls == []
    assert shop.peers.stock[mug] == 4 and shop.nothing_written()


async def test_an_attempt_timing_out_while_authorizing_voids_and_releases(shop: Shop) -> None:
    orders = shop.orders(attempt_timeout=0.05)
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=4)
    shop.peers.hold_authorize = asyncio.Event()  # the payment service never answers
    with pytest.raises(Unavailable) as raised:
        await orders.create(user, lines({mug: 1}), "slow")
    assert "retry with the same key" in raised.value.message
    # Whether it authorized is not known: the void is asked for (there was none).
    assert [step for step, _ in shop.peers.payment_calls] == ["authorize", "void"]
    assert shop.peers.stock[mug] == 4 and shop.nothing_written()


async def test_a_capture_that_fails_after_placing_is_retried_by_the_sweeper(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    shop.peers.failing_captures = 1

    placed = await orders.create(user, lines({mug: 2}), "k")

    # The order stands: its money is held, and taking it is the sweeper's now.
    assert placed.status == PLACED
    assert shop.peers.payments[placed.id].state == "AUTHORIZED"
    assert shop.repository.rows[placed.id].payment_state == PAYMENT_AUTHORIZED
    assert await orders.sweep() == 0, "not while the attempt's own capture may be under way"
    shop.repository.rows[placed.id].update_time -= timedelta(seconds=30)
    assert await orders.sweep() == 1
    assert shop.peers.payments[placed.id].state == "CAPTURED"
    assert shop.repository.rows[placed.id].payment_state == PAYMENT_CAPTURED
    assert await orders.sweep() == 0
    assert shop.peers.stock[mug] == 3


async def test_the_captures_of_orders_placed_meanwhile_go_in_one_call(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10)
    shop.peers.hold_capture = asyncio.Event()
    first = asyncio.create_task(orders.create(user, lines({mug: 1}), "k0"))
    await eventually(lambda: bool(shop.peers.capture_batches), "the first capture sent")
    meanwhile = [
        asyncio.create_task(orders.create(user, lines({mug: 1}), f"k{n}")) for n in (1, 2, 3)
    ]
    await eventually(lambda: orders.captures.queued == 3, "three placed, waiting for the first")
    shop.peers.hold_capture.set()
    placed = await asyncio.gather(first, *meanwhile)

    ids = [order.id for order in placed]
    assert [sorted(batch) for batch in shop.peers.capture_batches] == [ids[:1], sorted(ids[1:])]
    assert [order.payment_state for order in placed] == [PAYMENT_CAPTURED] * 4
    assert all(shop.repository.rows[i].payment_state == PAYMENT_CAPTURED for i in ids)
    assert all(shop.peers.payments[i].state == "CAPTURED" for i in ids)
    assert (orders.captures.batches, orders.captures.keys) == (2, 4)


async def test_an_order_whose_capture_is_slow_is_answered_authorized_and_captured_after(
    shop: Shop, orders: Orders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CreateOrder waits CAPTURE_WAIT at most for its capture (a slow payment service, or
    a batch ahead of it): then the order is answered with its payment AUTHORIZED, and the
    capture, still on its way, is recorded when it comes back."""
    monkeypatch.setattr(usecases, "CAPTURE_WAIT", 0.05)
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10)
    shop.peers.hold_capture = asyncio.Event()
    placed = await asyncio.wait_for(orders.create(user, lines({mug: 1}), "k"), 2)
    assert (placed.status, placed.payment_state) == (PLACED, PAYMENT_AUTHORIZED)
    shop.peers.hold_capture.set()
    row = shop.repository.rows[placed.id]
    await eventually(lambda: row.payment_state == PAYMENT_CAPTURED, "the late capture recorded")
    assert shop.peers.payments[placed.id].state == "CAPTURED"
    assert shop.peers.capture_batches == [[placed.id]]


async def test_a_slow_capture_that_fails_after_the_answer_is_left_to_the_sweeper_quietly(
    shop: Shop, orders: Orders, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(usecases, "CAPTURE_WAIT", 0.05)
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10)
    shop.peers.hold_capture = asyncio.Event()
    shop.peers.failing_captures = 1
    placed = await asyncio.wait_for(orders.create(user, lines({mug: 1}), "k"), 2)
    assert placed.payment_state == PAYMENT_AUTHORIZED
    shop.peers.hold_capture.set()
    await eventually(lambda: not shop.peers.failing_captures, "the held capture failed")
    await asyncio.sleep(0.01)
    gc.collect()  # an exception never retrieved is reported when its task is collected
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert shop.repository.rows[placed.id].payment_state == PAYMENT_AUTHORIZED  # the sweeper's


async def test_a_capture_the_provider_did_not_answer_is_left_to_the_sweeper(
    shop: Shop, orders: Orders, caplog: pytest.LogCaptureFixture
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10)
    shop.peers.unanswered_captures = 2
    placed = [await orders.create(user, lines({mug: 1}), f"k{n}") for n in range(2)]

    assert [order.payment_state for order in placed] == [PAYMENT_AUTHORIZED] * 2
    deferred = [r for r in caplog.records if r.message == "payment capture deferred to the sweeper"]
    assert [(r.levelname, vars(r)["order_id"], vars(r)["state"]) for r in deferred] == [
        ("WARNING", order.id, "AUTHORIZED") for order in placed
    ]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    # The sweeper captures both in one call.
    for order in placed:
        shop.repository.rows[order.id].update_time -= timedelta(seconds=30)
    assert await orders.sweep() == 2
    assert shop.peers.capture_batches[-1] == [order.id for order in placed]
    assert all(shop.repository.rows[o.id].payment_state == PAYMENT_CAPTURED for o in placed)


async def test_the_sweeper_voids_and_releases_an_attempt_that_died_after_authorizing(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    dead = pending_row("ord_dead", user, "dead-key", age=timedelta(seconds=30))
    await shop.repository.claim(dead)
    await shop.peers.reserve("res_ord_dead", {mug: 2})
    await shop.peers.authorize("ord_dead", user, "EUR", 1000, "card_approve")
    # Another died before it authorized anything; a third is under way right now.
    await shop.repository.claim(pending_row("ord_early", user, "early", age=timedelta(minutes=1)))
    await shop.repository.claim(pending_row("ord_live", user, "live-key", age=timedelta()))

    assert await orders.sweep() == 2
    assert shop.peers.payments["ord_dead"].state == "VOIDED"
    assert "ord_early" not in shop.peers.payments
    assert shop.peers.stock[mug] == 5
    assert set(shop.repository.rows) == {"ord_live"}
    assert not shop.repository.events, "nothing was placed"
    placed = await orders.create(user, lines({mug: 2}), "dead-key")
    assert placed.status == PLACED and shop.peers.payments[placed.id].state == "CAPTURED"


async def test_an_attempt_the_sweeper_undid_while_it_authorized_is_voided_not_placed(
    shop: Shop, orders: Orders
) -> None:
    """The sweeper took an attempt for dead while its Authorize was under way, and its void
    came before the authorization: the attempt can't be placed any more and voids it."""
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    shop.peers.hold_authorize = asyncio.Event()
    attempt = asyncio.create_task(orders.create(user, lines({mug: 2}), "k"))
    await shop.peers.authorizing.wait()
    [row] = shop.repository.rows.values()
    row.create_time -= timedelta(minutes=1)
    assert await orders.sweep() == 1
    assert not shop.repository.rows and shop.peers.stock[mug] == 5
    shop.peers.hold_authorize.set()
    with pytest.raises(DomainError):
        await attempt
    assert shop.peers.payments[row.id].state == "VOIDED"
    assert shop.peers.charges("AUTHORIZED", "CAPTURED") == []
    assert shop.peers.stock[mug] == 5 and shop.nothing_written()


async def test_a_key_reused_with_another_payment_method_is_refused(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    placed = await orders.create(user, lines({mug: 1}), "k")
    assert (await orders.create(user, lines({mug: 1}), "k", "card_approve")).id == placed.id
    with pytest.raises(AlreadyExists):
        await orders.create(user, lines({mug: 1}), "k", "card_decline")


# -- cancelling ---------------------------------------------------------------


async def test_cancelling_gives_the_stock_back_and_announces_it_once(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    placed = await orders.create(user, lines({mug: 2}), "k")

    cancelled = await orders.cancel(placed.id, "changed my mind")
    assert (cancelled.status, cancelled.cancel_reason) == (CANCELLED, "changed my mind")
    assert cancelled.stock_released and shop.peers.stock[mug] == 5
    assert cancelled.update_time >= placed.update_time
    _, announced, refunded = shop.repository.events
    assert (announced.subject, refunded.subject) == ("order.cancelled", "payment.refunded")
    message = to_feed_message(announced)
    assert message.WhichOneof("event") == "order_cancelled"
    assert message.order_cancelled.order == order_to_proto(cancelled)

    again = await orders.cancel(placed.id, "another reason")
    assert (again.status, again.cancel_reason) == (CANCELLED, "changed my mind")
    assert len(shop.repository.events) == 3 and shop.peers.stock[mug] == 5


async def test_cancelling_refunds_the_payment_once(shop: Shop, orders: Orders) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    placed = await orders.create(user, lines({mug: 2}), "k")

    first, second = await asyncio.gather(
        orders.cancel(placed.id, "changed my mind"), orders.cancel(placed.id, "twice")
    )
    again = await orders.cancel(placed.id, "three times")

    payment = shop.peers.payments[placed.id]
    assert payment.state == "REFUNDED"
    assert payment.refund_request_id == f"cancel-{placed.id}"
    assert shop.repository.rows[placed.id].payment_state == PAYMENT_REFUNDED
    refunds = [order_id for step, order_id in shop.peers.payment_calls if step == "refund"]
    assert 1 <= len(refunds) <= 2, "concurrent cancels ask for the same refund"
    assert {first.status, second.status, again.status} == {CANCELLED}
    assert shop.peers.stock[mug] == 5
    assert len(shop.peers.charges("REFUNDED")) == 1
    calls = len(shop.peers.payment_calls)
    await orders.cancel(placed.id, "")
    assert len(shop.peers.payment_calls) == calls, "a refunded order asks nothing more"


async def test_a_refund_that_fails_on_cancel_is_retried_by_the_sweeper(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    placed = await orders.create(user, lines({mug: 2}), "k")
    shop.peers.failing_refunds = 1

    cancelled = await orders.cancel(placed.id, "")
    assert cancelled.status == CANCELLED and cancelled.payment_state == PAYMENT_REFUNDING
    assert cancelled.stock_released and shop.peers.stock[mug] == 5
    assert shop.peers.payments[placed.id].state == "CAPTURED"

    assert await orders.sweep() == 1
    assert shop.peers.payments[placed.id].state == "REFUNDED"
    assert shop.repository.rows[placed.id].payment_state == PAYMENT_REFUNDED
    assert await orders.sweep() == 0


async def test_cancelling_an_order_whose_capture_failed_voids_its_hold(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    shop.peers.failing_captures = 1
    placed = await orders.create(user, lines({mug: 2}), "k")

    cancelled = await orders.cancel(placed.id, "")
    assert cancelled.payment_state == PAYMENT_REFUNDED
    assert shop.peers.payments[placed.id].state == "VOIDED"
    shop.repository.rows[placed.id].update_time -= timedelta(seconds=30)
    assert await orders.sweep() == 0, "a cancelled order is not captured"
    assert shop.peers.stock[mug] == 5


async def test_only_visible_orders_can_be_cancelled(shop: Shop, orders: Orders) -> None:
    user = shop.peers.add_user("usr_ann")
    await shop.repository.claim(pending_row("ord_attempt", user, "k", age=timedelta()))
    for order_id in ("ord_missing", "ord_attempt"):
        with pytest.raises(NotFound) as raised:
            await orders.cancel(order_id, "no")
        assert raised.value.reason == "ORDER_NOT_FOUND"
    assert shop.repository.rows["ord_attempt"].status == PENDING
    assert not shop.repository.events


async def test_a_release_that_fails_on_cancel_is_retried_by_the_sweeper(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    placed = await orders.create(user, lines({mug: 2}), "k")
    shop.peers.failing_releases = 1

    cancelled = await orders.cancel(placed.id, "")
    assert cancelled.status == CANCELLED and not cancelled.stock_released
    assert shop.peers.stock[mug] == 3

    assert await orders.sweep() == 1
    assert shop.peers.stock[mug] == 5
    assert shop.repository.rows[placed.id].stock_released
    assert await orders.sweep() == 0


# -- reading -------------------------------------------------------------------


async def test_pages_walk_a_users_orders_newest_first_and_only_theirs(
    shop: Shop, orders: Orders
) -> None:
    ann, bob = shop.peers.add_user("usr_ann"), shop.peers.add_user("usr_bob")
    mug = shop.peers.add_product("mug", stock=100)
    ids = [(await orders.create(ann, lines({mug: 1}), f"k{i}")).id for i in range(5)]
    await orders.cancel(ids[1], "")
    await orders.create(bob, lines({mug: 1}), "bob-1")
    await shop.repository.claim(pending_row("ord_zzz_attempt", ann, "k-attempt", age=timedelta()))

    seen: list[str] = []
    token = ""
    while True:
        page, token = await orders.list_page(ann, 2, token)
        assert len(page) <= 2
        seen += [order.id for order in page]
        if not token:
            break
    assert seen == sorted(ids, reverse=True)

    _, first_token = await orders.list_page(ann, 1, "")
    with pytest.raises(InvalidArgument):
        await orders.list_page(bob, None, first_token)  # a token is bound to its user


async def test_the_feed_streams_from_a_position_then_each_new_event(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=10)
    placed = [await orders.create(user, lines({mug: 1}), f"k{i}") for i in range(2)]
    feed = Feed(shop.repository)
    stream = feed.events(1)

    second = await anext(stream)
    assert second.sequence == 2
    assert to_feed_message(second).order_created.order == order_to_proto(placed[1])

    async def next_event() -> Event:
        return await anext(stream)

    following = asyncio.create_task(next_event())
    third = await orders.create(user, lines({mug: 1}), "k2")
    feed.published.fire()
    event = await following
    assert event.sequence == 3
    assert to_feed_message(event).order_created.order.id == third.id
    await stream.aclose()
