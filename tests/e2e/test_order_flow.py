"""The order flow across four real gRPC servers: placing, events, live notifications."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from services.common.events.feed import HEAD, HEARTBEAT
from services.common.times import utcnow
from services.notification import wiring as notification_wiring
from services.order import users
from shop.notification.v1 import notification_pb2
from shop.order.v1 import order_internal_pb2, order_internal_pb2_grpc, order_pb2
from tests.conftest import require
from tests.mesh import Mesh, running_mesh
from tests.rpc import detail, fails, next_message, until_quiet
from tests.waits import eventually


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        "sqlite+nats",
    ]
)
async def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mesh]:
    """The mesh on SQLite files and on PostgreSQL with the embedded event feed, and on
    SQLite with NATS JetStream (the shared server, a stream of the test's own)."""
    database, _, transport = request.param.partition("+")
    broker = ""
    if transport == "nats":
        require("127.0.0.1", 4222, "NATS")
        broker = "nats://127.0.0.1:4222"
    async with running_mesh(tmp_path, broker, database=database) as running:
        yield running


async def feed_events(
    mesh: Mesh, wait: float = 0.5
) -> list[order_internal_pb2.StreamOrderEventsResponse]:
    """Everything in the order service's event feed (read until `wait` passes quietly)."""
    stub = order_internal_pb2_grpc.OrderInternalServiceStub(mesh.channels["order"])
    call = stub.StreamOrderEvents(order_internal_pb2.StreamOrderEventsRequest(after_sequence=0))
    return await until_quiet(call, wait)


async def notifications_of(mesh: Mesh, user_id: str) -> list[notification_pb2.Notification]:
    reply = await mesh.notifications.ListNotifications(
        notification_pb2.ListNotificationsRequest(user_id=user_id, page_size=1000)
    )
    return list(reply.notifications)


async def wait_for_notifications(
    mesh: Mesh, user_id: str, count: int, within: float = 10.0
) -> list[notification_pb2.Notification]:
    deadline = time.monotonic() + within
    while True:
        found = await notifications_of(mesh, user_id)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def stream_is_open(mesh: Mesh, count: int = 1) -> None:
    hub = mesh.services["notification"].parts.hub
    await eventually(lambda: hub.open_streams == count, "the stream is open before the order")


async def test_an_order_reaches_an_open_stream(mesh: Mesh) -> None:
    """How fast is the bench's business (order -> live notification p99); here, that it
    arrives, whole, and that a stream resumed from its cursor gets the next ones."""
    user = await mesh.user()
    mug, tea = await mesh.product(stock=10, price=250), await mesh.product(stock=5, price=1000)
    stream = mesh.notifications.StreamNotifications(
        notification_pb2.StreamNotificationsRequest(user_id=user.id)
    )
    await stream_is_open(mesh)

    placed = (
        await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 2, tea.id: 1}))
    ).order
    first = await next_message(stream)
    stream.cancel()
    await stream_is_open(mesh, 0)

    assert placed.id.startswith("ord_") and placed.status == order_pb2.ORDER_STATUS_PLACED
    assert [(i.product_id, i.quantity, i.unit_price.amount_minor) for i in placed.items] == [
        (mug.id, 2, 250),
        (tea.id, 1, 1000),
    ]
    assert (placed.total.currency_code, placed.total.amount_minor) == ("EUR", 1500)
    stored = (await mesh.orders.GetOrder(order_pb2.GetOrderRequest(id=placed.id))).order
    assert stored == placed
    assert await mesh.stock_of(mug.id, tea.id) == [8, 4]

    note = first.notification
    assert (note.user_id, note.order_id, note.kind) == (
        user.id,
        placed.id,
        notification_pb2.NOTIFICATION_KIND_ORDER_PLACED,
    )
    assert "15.00 EUR" in note.body and first.cursor
    assert len(await notifications_of(mesh, user.id)) == 1
    events = await feed_events(mesh)
    assert [e.WhichOneof("event") for e in events] == ["order_created"]
    assert events[0].order_created.order == placed

    cursor = first.cursor
    for _ in range(2):
        stream = mesh.notifications.StreamNotifications(
            notification_pb2.StreamNotificationsRequest(user_id=user.id, cursor=cursor)
        )
        await stream_is_open(mesh)
        next_order = (await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 1}))).order
        message = await next_message(stream)
        assert message.notification.order_id == next_order.id  # the next, nothing again
        stream.cancel()
        await stream_is_open(mesh, 0)
        cursor = message.cursor


async def reservation_count(mesh: Mesh) -> int:
    return int(await mesh.sql("product", "SELECT count(*) FROM reservations"))


REFUSE_PLACING = {
    "sqlite": [
        "CREATE TRIGGER refuse_placing BEFORE UPDATE OF status ON orders "
        "WHEN NEW.status = 'PLACED' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_placing() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'disk on fire'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_placing BEFORE UPDATE OF status ON orders "
        "FOR EACH ROW WHEN (NEW.status = 'PLACED') EXECUTE FUNCTION refuse_placing()",
    ],
}
ALLOW_PLACING = {
    "sqlite": ["DROP TRIGGER refuse_placing"],
    "postgresql": ["DROP TRIGGER refuse_placing ON orders"],
}


async def assert_nothing_happened(mesh: Mesh, user_id: str) -> None:
    listed = await mesh.orders.ListOrders(order_pb2.ListOrdersRequest(user_id=user_id))
    assert list(listed.orders) == []
    assert await feed_events(mesh, wait=0.3) == []
    assert await notifications_of(mesh, user_id) == []


async def set_active(mesh: Mesh, user_id: str, active: bool) -> None:
    from google.protobuf import field_mask_pb2

    from shop.user.v1 import user_pb2

    await mesh.users.UpdateUser(
        user_pb2.UpdateUserRequest(
            user=user_pb2.User(id=user_id, active=active),
            update_mask=field_mask_pb2.FieldMask(paths=["active"]),
        )
    )


async def test_inactive_user_is_refused_before_any_stock_moves(mesh: Mesh) -> None:
    """The order service checks users against its replica of their statuses (the user
    service's events): a deactivation reaches it within the feed's lag, then orders are
    refused as the user service refuses them."""
    user = await mesh.user()
    await mesh.replica_holds(user.id, True)
    await set_active(mesh, user.id, False)
    lag = await mesh.replica_holds(user.id, False)
    assert lag < 2.0
    mug = await mesh.product(stock=3)
    error = await fails(
        mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 1})),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert detail(error, error_details_pb2.ErrorInfo).reason == "USER_INACTIVE"
    assert await mesh.stock_of(mug.id) == [3]
    assert await reservation_count(mesh) == 0
    await assert_nothing_happened(mesh, user.id)
    # Active again: orders go through again, once the replica has it.
    await set_active(mesh, user.id, True)
    await mesh.replica_holds(user.id, True)
    await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 1}))
    assert await mesh.stock_of(mug.id) == [2]


async def test_users_the_replica_knows_active_are_not_asked_about(mesh: Mesh) -> None:
    """One question fewer per order: the user service is asked about a user only while
    the replica cannot answer for it (not known yet, or not active)."""
    mug = await mesh.product(stock=10)
    user = await mesh.user()
    await mesh.replica_holds(user.id, True)
    asked = mesh.validations()
    for n in range(3):
        await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 1}, f"known-{n}"))
    assert mesh.validations() == asked
    # A user the replica does not know (never announced: written behind the user
    # service's back) is asked about: the user service's answer decides.
    await mesh.sql(
        "user",
        "INSERT INTO users (id, email, display_name, active, create_time, update_time,"
        " version) VALUES ('usr_unannounced', 'u@x.io', 'U', true, CURRENT_TIMESTAMP,"
        " CURRENT_TIMESTAMP, 1)",
    )
    await mesh.orders.CreateOrder(mesh.order_request("usr_unannounced", {mug.id: 1}, "unknown"))
    assert mesh.validations() == asked + 1
    error = await fails(
        mesh.orders.CreateOrder(mesh.order_request("usr_missing", {mug.id: 1}, "missing")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert detail(error, error_details_pb2.ErrorInfo).reason == "USER_NOT_FOUND"
    assert mesh.validations() == asked + 2
    assert await mesh.stock_of(mug.id) == [6]


async def test_without_the_user_service_the_replica_answers_for_no_one(mesh: Mesh) -> None:
    """The replica is trusted only while the user service's feed is followed (a silent
    feed cannot tell "no changes" from "cut off"): with the user service away, orders
    wait for it, UNAVAILABLE, and nothing moves; back, its feed is followed again."""
    mug = await mesh.product(stock=5)
    user = await mesh.user()
    await mesh.replica_holds(user.id, True)
    order = mesh.services["order"].parts
    assert order.user_feed.following()
    assert order.user_feed.heartbeats == users.HEARTBEAT  # asked for, and sent
    await mesh.stop("user")
    await eventually(lambda: not order.user_feed.following(), "the feed seen gone")
    request = mesh.order_request(user.id, {mug.id: 1}, "user-service-away")
    await fails(mesh.orders.CreateOrder(request), grpc.StatusCode.UNAVAILABLE)
    assert await mesh.stock_of(mug.id) == [5]
    await mesh.start("user")
    await eventually(order.user_feed.following, "the feed followed again", within=15)
    asked = mesh.validations()
    await mesh.orders.CreateOrder(request)
    assert await mesh.stock_of(mug.id) == [4]
    assert mesh.validations() == asked  # spared again


async def test_the_order_feed_beats_and_the_notification_service_follows_it_by_them(
    mesh: Mesh,
) -> None:
    """The notification service asks the order feed for heartbeats, so that an order
    service that hangs with its connection up is noticed (and its feed opened again),
    and gets them. Asked directly, the feed sends its events, then a heartbeat with its
    head; bad intervals are refused."""
    followed = mesh.services["notification"].parts.order_feed
    if mesh.broker_url:  # the events come through NATS: no feed to follow
        assert followed is None
        return
    assert followed is not None
    await eventually(followed.following, "the order feed followed")
    assert followed.heartbeats == notification_wiring.HEARTBEAT  # asked for, and sent
    user, mug = await mesh.user(), await mesh.product(stock=5)
    placed = await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 1}, "beats"))
    stub = order_internal_pb2_grpc.OrderInternalServiceStub(mesh.channels["order"])
    interval = duration_pb2.Duration(nanos=200_000_000)
    call = stub.StreamOrderEvents(
        order_internal_pb2.StreamOrderEventsRequest(after_sequence=0, heartbeat_interval=interval)
    )
    try:
        headers = dict(await call.initial_metadata())
        assert headers[HEARTBEAT] == "0.2"
        head = int(headers[HEAD])
        events = []
        while not (message := await next_message(call)).HasField("heartbeat"):
            events.append(message)
        assert events[-1].sequence == head and message.heartbeat.head == head
        assert message.sequence == 0 and message.WhichOneof("event") is None
        assert placed.order.id in {e.order_created.order.id for e in events}
        assert (await next_message(call, timeout=1.0)).heartbeat.head == head
    finally:
        call.cancel()
    # Bad input: an interval of 0, below 0.1 s, beyond 60 s, or negative.
    for seconds in (0, 0.05, 61, -1):
        bad = duration_pb2.Duration()
        bad.FromTimedelta(timedelta(seconds=seconds))
        refused = stub.StreamOrderEvents(
            order_internal_pb2.StreamOrderEventsRequest(heartbeat_interval=bad)
        )
        await fails(refused.read(), grpc.StatusCode.INVALID_ARGUMENT)


async def test_one_short_item_of_three_moves_no_stock(mesh: Mesh) -> None:
    user = await mesh.user()
    a, b, c = await mesh.product(stock=5), await mesh.product(stock=5), await mesh.product(stock=1)
    request = mesh.order_request(user.id, {a.id: 2, b.id: 2, c.id: 2}, "short-1")
    error = await fails(mesh.orders.CreateOrder(request), grpc.StatusCode.FAILED_PRECONDITION)
    assert detail(error, error_details_pb2.ErrorInfo).reason == "INSUFFICIENT_STOCK"
    assert await mesh.stock_of(a.id, b.id, c.id) == [5, 5, 1]
    await assert_nothing_happened(mesh, user.id)

    # The failed attempt freed its key: once there is stock, the same key places the order.
    from google.protobuf import field_mask_pb2

    from shop.product.v1 import product_pb2

    await mesh.products.UpdateProduct(
        product_pb2.UpdateProductRequest(
            product=product_pb2.Product(id=c.id, stock=3),
            update_mask=field_mask_pb2.FieldMask(paths=["stock"]),
        )
    )
    placed = (await mesh.orders.CreateOrder(request)).order
    assert placed.status == order_pb2.ORDER_STATUS_PLACED
    assert await mesh.stock_of(a.id, b.id, c.id) == [3, 3, 1]


async def test_product_service_down_is_unavailable_and_moves_nothing(mesh: Mesh) -> None:
    user = await mesh.user()
    mug = await mesh.product(stock=4)
    await mesh.stop("product")
    started = time.monotonic()
    error = await fails(
        mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 1}), timeout=5),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert time.monotonic() - started < 5
    assert "product" in (error.details() or "")
    await mesh.start("product")
    assert await mesh.stock_of(mug.id) == [4]
    await assert_nothing_happened(mesh, user.id)


async def test_a_failure_while_storing_the_order_releases_the_stock(mesh: Mesh) -> None:
    user = await mesh.user()
    a, b = await mesh.product(stock=6), await mesh.product(stock=6)
    # A real database failure at the last step: the order store refuses to place orders.
    dialect = mesh.services["order"].platform.db.engine.dialect.name
    for statement in REFUSE_PLACING[dialect]:
        await mesh.sql("order", statement)
    error = await fails(
        mesh.orders.CreateOrder(mesh.order_request(user.id, {a.id: 2, b.id: 3}, "store-fails")),
        grpc.StatusCode.INTERNAL,
    )
    assert error.details() == "internal error"
    assert await mesh.stock_of(a.id, b.id) == [6, 6]
    assert await reservation_count(mesh) == 1, "the reservation was taken, then released"
    await assert_nothing_happened(mesh, user.id)

    for statement in ALLOW_PLACING[dialect]:
        await mesh.sql("order", statement)
    retried = await mesh.orders.CreateOrder(
        mesh.order_request(user.id, {a.id: 2, b.id: 3}, "store-fails")
    )
    assert retried.order.status == order_pb2.ORDER_STATUS_PLACED
    assert await mesh.stock_of(a.id, b.id) == [4, 3]


async def test_five_concurrent_retries_make_one_order(mesh: Mesh) -> None:
    user = await mesh.user()
    mug = await mesh.product(stock=10)
    request = mesh.order_request(user.id, {mug.id: 3}, "retry-me")
    replies = await asyncio.gather(*(mesh.orders.CreateOrder(request) for _ in range(5)))
    assert len({r.order.id for r in replies}) == 1
    assert await mesh.stock_of(mug.id) == [7]
    assert await reservation_count(mesh) == 1
    listed = await mesh.orders.ListOrders(order_pb2.ListOrdersRequest(user_id=user.id))
    assert [o.id for o in listed.orders] == [replies[0].order.id]
    assert len(await feed_events(mesh)) == 1
    assert len(await wait_for_notifications(mesh, user.id, 1)) == 1

    # A later retry still returns it; the same key for another request is refused.
    again = await mesh.orders.CreateOrder(request)
    assert again.order == replies[0].order
    other = await mesh.user()
    for reused in (
        mesh.order_request(user.id, {mug.id: 4}, "retry-me"),
        mesh.order_request(other.id, {mug.id: 3}, "retry-me"),
    ):
        error = await fails(mesh.orders.CreateOrder(reused), grpc.StatusCode.ALREADY_EXISTS)
        assert detail(error, error_details_pb2.ErrorInfo).reason == "IDEMPOTENCY_KEY_REUSED"
    assert await mesh.stock_of(mug.id) == [7]


async def test_cancel_releases_stock_once_and_notifies(mesh: Mesh) -> None:
    user = await mesh.user()
    mug = await mesh.product(stock=5)
    placed = (await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 2}))).order
    assert await mesh.stock_of(mug.id) == [3]
    for _ in range(2):
        cancelled = (
            await mesh.orders.CancelOrder(
                order_pb2.CancelOrderRequest(id=placed.id, reason="changed my mind")
            )
        ).order
        assert cancelled.status == order_pb2.ORDER_STATUS_CANCELLED
        assert cancelled.cancel_reason == "changed my mind"
        assert await mesh.stock_of(mug.id) == [5]
    events = await feed_events(mesh)
    assert [e.WhichOneof("event") for e in events] == [
        "order_created",
        "order_cancelled",
        "payment_refunded",
    ]
    notes = await wait_for_notifications(mesh, user.id, 3)
    assert sorted(n.kind for n in notes) == [
        notification_pb2.NOTIFICATION_KIND_ORDER_PLACED,
        notification_pb2.NOTIFICATION_KIND_ORDER_CANCELLED,
        notification_pb2.NOTIFICATION_KIND_PAYMENT_REFUNDED,
    ]


@pytest.mark.parametrize(
    ("case", "code", "fields"),
    [
        ("empty_items", grpc.StatusCode.INVALID_ARGUMENT, {"items"}),
        ("quantity_0", grpc.StatusCode.INVALID_ARGUMENT, {"items[0].quantity"}),
        ("repeated_product", grpc.StatusCode.INVALID_ARGUMENT, {"items.product_id"}),
        ("unknown_product", grpc.StatusCode.NOT_FOUND, None),
        ("unknown_user", grpc.StatusCode.NOT_FOUND, None),
        ("blank_key", grpc.StatusCode.INVALID_ARGUMENT, {"idempotency_key"}),
        ("key_with_spaces", grpc.StatusCode.INVALID_ARGUMENT, {"idempotency_key"}),
        ("key_too_long", grpc.StatusCode.INVALID_ARGUMENT, {"idempotency_key"}),
    ],
)
async def test_bad_orders_write_nothing_and_move_no_stock(
    mesh: Mesh, case: str, code: grpc.StatusCode, fields: set[str] | None
) -> None:
    from tests.rpc import violated_fields

    user = await mesh.user()
    mug = await mesh.product(stock=5)
    requests = {
        "empty_items": mesh.order_request(user.id, {}),
        "quantity_0": mesh.order_request(user.id, {mug.id: 0}),
        "repeated_product": order_pb2.CreateOrderRequest(
            user_id=user.id,
            idempotency_key="k",
            items=[order_pb2.CreateOrderItem(product_id=mug.id, quantity=1)] * 2,
        ),
        "unknown_product": mesh.order_request(user.id, {mug.id: 1, "prd_missing": 1}),
        "unknown_user": mesh.order_request("usr_missing", {mug.id: 1}),
        "blank_key": mesh.order_request(user.id, {mug.id: 1}, ""),
        "key_with_spaces": mesh.order_request(user.id, {mug.id: 1}, "my key"),
        "key_too_long": mesh.order_request(user.id, {mug.id: 1}, "k" * 129),
    }
    error = await fails(mesh.orders.CreateOrder(requests[case]), code)
    if fields is not None:
        assert violated_fields(error) == fields
    assert await mesh.stock_of(mug.id) == [5]
    assert await reservation_count(mesh) == 0
    await assert_nothing_happened(mesh, user.id)


async def test_unknown_orders(mesh: Mesh) -> None:
    for call in (
        mesh.orders.CancelOrder(order_pb2.CancelOrderRequest(id="ord_missing")),
        mesh.orders.GetOrder(order_pb2.GetOrderRequest(id="ord_missing")),
    ):
        error = await fails(call, grpc.StatusCode.NOT_FOUND)
        assert detail(error, error_details_pb2.ResourceInfo).resource_name == "ord_missing"
    assert await feed_events(mesh, wait=0.3) == []


async def test_orders_list_newest_first_in_pages(mesh: Mesh) -> None:
    user, other = await mesh.user(), await mesh.user()
    mug = await mesh.product(stock=100)
    ids = [
        (await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 1}))).order.id
        for _ in range(5)
    ]
    await mesh.orders.CreateOrder(mesh.order_request(other.id, {mug.id: 1}))
    seen, token = [], ""
    while True:
        page = await mesh.orders.ListOrders(
            order_pb2.ListOrdersRequest(user_id=user.id, page_size=2, page_token=token)
        )
        seen += [o.id for o in page.orders]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(ids, reverse=True)
    # A token is bound to its user's list.
    first = await mesh.orders.ListOrders(order_pb2.ListOrdersRequest(user_id=user.id, page_size=1))
    await fails(
        mesh.orders.ListOrders(
            order_pb2.ListOrdersRequest(user_id=other.id, page_token=first.next_page_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_the_sweeper_undoes_an_attempt_that_died_mid_way(mesh: Mesh) -> None:
    """A process that dies between ReserveStock and the commit leaves a PENDING order
    and reserved stock; the sweeper releases the stock and frees the key."""
    from services.order.usecases import Orders
    from shop.product.v1 import product_internal_pb2

    user = await mesh.user()
    mug = await mesh.product(stock=5)
    await mesh.stock.ReserveStock(
        product_internal_pb2.ReserveStockRequest(
            reservation_id="res_ord_crashed",
            items=[product_internal_pb2.StockItem(product_id=mug.id, quantity=2)],
        )
    )
    await mesh.sql(
        "order",
        "INSERT INTO orders (id, user_id, status, idempotency_key, request_fingerprint, "
        "reservation_id, currency_code, total_amount_minor, cancel_reason, stock_released, "
        f"create_time, update_time) VALUES ('ord_crashed', '{user.id}', 'PENDING', 'crashed-key', "
        "'x', 'res_ord_crashed', 'EUR', 500, '', false, '2020-01-01 00:00:00', "
        "'2020-01-01 00:00:00')",
    )
    assert await mesh.stock_of(mug.id) == [3]
    orders = mesh.services["order"].parts.orders
    assert isinstance(orders, Orders)
    await orders.sweep()
    assert await mesh.stock_of(mug.id) == [5]
    assert await mesh.sql("order", "SELECT count(*) FROM orders") == 0
    placed = await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 2}, "crashed-key"))
    assert placed.order.status == order_pb2.ORDER_STATUS_PLACED
    assert await mesh.stock_of(mug.id) == [3]


async def test_a_hanging_peer_costs_the_deadline_and_no_stock(mesh: Mesh) -> None:
    """The product service accepts connections but never answers: the call ends at its
    deadline (not later), and nothing is reserved."""
    user = await mesh.user()
    mug = await mesh.product(stock=4)
    port = mesh.ports["product"]
    await mesh.stop("product")
    blackhole = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        started = time.monotonic()
        await fails(
            mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 1}), timeout=0.5),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        assert time.monotonic() - started < 1.0
    finally:
        blackhole.close()
        await blackhole.wait_closed()
    await mesh.start("product")
    assert await mesh.stock_of(mug.id) == [4]
    await assert_nothing_happened(mesh, user.id)


async def test_a_key_whose_process_died_is_free_again_within_the_attempt_bound(
    mesh: Mesh,
) -> None:
    """An attempt can't outlive ORDER_ATTEMPT_TIMEOUT (20 s), so the sweeper may take a
    PENDING row as soon as it is older than that plus the clock margin (5 s): a key
    whose process died 30 s ago is free again (it used to be blocked for 120 s)."""
    from services.order.usecases import Orders

    user = await mesh.user()
    mug = await mesh.product(stock=5)
    await mesh.sql(
        "order",
        "INSERT INTO orders (id, user_id, status, idempotency_key, request_fingerprint, "
        "reservation_id, currency_code, total_amount_minor, cancel_reason, stock_released, "
        f"create_time, update_time) VALUES ('ord_dead', '{user.id}', 'PENDING', 'dead-key', "
        "'x', 'res_ord_dead', 'EUR', 500, '', false, "
        f"'{(utcnow() - timedelta(seconds=30)).isoformat(' ')}', '2020-01-01 00:00:00')",
    )
    orders = mesh.services["order"].parts.orders
    assert isinstance(orders, Orders)
    assert await orders.sweep() == 1
    placed = await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 2}, "dead-key"))
    assert placed.order.status == order_pb2.ORDER_STATUS_PLACED


async def test_an_attempt_is_cut_off_at_the_attempt_timeout_and_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reservation that never answers (and a caller with no deadline): the attempt
    ends at ORDER_ATTEMPT_TIMEOUT with UNAVAILABLE, the key is free, no stock moved."""
    from services.product.handlers import ProductInternalServicer

    hanging = asyncio.Event()
    late_call_done = asyncio.Event()
    original = ProductInternalServicer.ReserveStock

    async def slow(self: object, request: object, context: object) -> object:
        if hanging.is_set():
            return await original(self, request, context)  # type: ignore[arg-type]
        try:
            await asyncio.sleep(3)
            return await original(self, request, context)  # type: ignore[arg-type]
        finally:
            late_call_done.set()  # finished late, or cancelled with the caller

    monkeypatch.setenv("ORDER_ATTEMPT_TIMEOUT", "0.5")
    monkeypatch.setattr(ProductInternalServicer, "ReserveStock", slow)
    async with running_mesh(tmp_path) as mesh:
        user = await mesh.user()
        mug = await mesh.product(stock=5)
        error = await fails(
            mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 2}, "slow-key")),
            grpc.StatusCode.UNAVAILABLE,
        )
        assert "retry with the same key" in (error.details() or "")
        assert await mesh.sql("order", "SELECT count(*) FROM orders") == 0
        hanging.set()
        # The cut-off ReserveStock has ended (cancelled, or refused if it ran late).
        await asyncio.wait_for(late_call_done.wait(), 10)
        assert await mesh.stock_of(mug.id) == [5]
        placed = await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 2}, "slow-key"))
        assert placed.order.status == order_pb2.ORDER_STATUS_PLACED
        assert await mesh.stock_of(mug.id) == [3]
