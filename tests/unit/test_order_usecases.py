"""The order use cases against an in-memory repository and fake peers: placing (all or
nothing, idempotent), compensation, the sweeper, cancelling, paging and the feed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
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
from services.common.pagination import PageTokens
from services.common.times import to_timestamp, utcnow
from services.order.convert import order_to_proto, to_feed_message
from services.order.models import CANCELLED, FAILED, PENDING, PLACED, Line, OrderRow
from services.order.usecases import Feed, Orders
from shop.order.v1 import events_pb2
from tests.fakes.order import FakePeers, InMemoryOrders


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


@pytest.fixture
def shop() -> Shop:
    return Shop()


@pytest.fixture
def orders(shop: Shop) -> Orders:
    return shop.orders()


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
        create_time=created,
        update_time=created,
        items=[],
    )


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


async def test_an_unknown_product_is_refused_before_anything_is_written(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=3)
    with pytest.raises(NotFound) as raised:
        await orders.create(user, [Line(mug, 1), Line("gone", 1)], "k")
    assert raised.value.reason == "PRODUCT_NOT_FOUND"
    assert raised.value.names == ("gone",)
    assert shop.peers.stock[mug] == 3 and not shop.peers.reservations
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
    assert not shop.peers.reservations and shop.peers.stock[dear] == 9
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
    _, announced = shop.repository.events
    assert announced.subject == "order.cancelled"
    message = to_feed_message(announced)
    assert message.WhichOneof("event") == "order_cancelled"
    assert message.order_cancelled.order == order_to_proto(cancelled)

    again = await orders.cancel(placed.id, "another reason")
    assert (again.status, again.cancel_reason) == (CANCELLED, "changed my mind")
    assert len(shop.repository.events) == 2 and shop.peers.stock[mug] == 5


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
