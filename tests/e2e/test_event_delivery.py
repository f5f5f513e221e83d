"""Nothing lost, nothing doubled: events survive a stopped consumer or broker, and
replicas on one NATS consumer share the work, each event once."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from services.common.events.consumer import Consumer
from services.common.server import start
from services.notification.wiring import SPEC as NOTIFICATION
from shop.notification.v1 import notification_pb2
from tests.conftest import require
from tests.mesh import Mesh, running_mesh
from tests.nats_server import own_nats_server
from tests.rpc import next_message

ORDERS = 100


async def place_orders(mesh: Mesh, users: list[str], product_id: str, count: int) -> list[str]:
    semaphore = asyncio.Semaphore(10)
    batch = uuid.uuid4().hex[:8]

    async def place(i: int) -> str:
        async with semaphore:
            request = mesh.order_request(users[i % len(users)], {product_id: 1}, f"{batch}-{i}")
            return (await mesh.orders.CreateOrder(request, timeout=30)).order.id

    return await asyncio.gather(*(place(i) for i in range(count)))


async def all_notifications(mesh: Mesh, users: list[str]) -> list[notification_pb2.Notification]:
    found: list[notification_pb2.Notification] = []
    for user_id in users:
        reply = await mesh.notifications.ListNotifications(
            notification_pb2.ListNotificationsRequest(user_id=user_id, page_size=1000)
        )
        found += reply.notifications
    return found


async def wait_for_all(
    mesh: Mesh, users: list[str], count: int, within: float = 30.0
) -> list[notification_pb2.Notification]:
    deadline = time.monotonic() + within
    while True:
        found = await all_notifications(mesh, users)
        if len(found) >= count or time.monotonic() > deadline:
            await asyncio.sleep(0.5)  # anything doubled would show up now
            return await all_notifications(mesh, users)
        await asyncio.sleep(0.1)


def assert_each_order_once(
    notes: list[notification_pb2.Notification], order_ids: list[str]
) -> None:
    assert len(notes) == len(order_ids)
    assert sorted(n.order_id for n in notes) == sorted(order_ids)
    assert len({n.event_id for n in notes}) == len(order_ids)


async def test_embedded_feed_loses_nothing_while_the_consumer_is_down(tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as mesh:
        users = [(await mesh.user()).id for _ in range(4)]
        stock = await mesh.product(stock=ORDERS)
        await mesh.stop("notification")
        order_ids = await place_orders(mesh, users, stock.id, ORDERS)
        await mesh.start("notification")
        assert_each_order_once(await wait_for_all(mesh, users, ORDERS), order_ids)


async def test_nats_loses_nothing_while_the_broker_is_down(tmp_path: Path) -> None:
    async with (
        own_nats_server(tmp_path / "nats") as broker,
        running_mesh(tmp_path, broker.url) as mesh,
    ):
        users = [(await mesh.user()).id for _ in range(4)]
        stock = await mesh.product(stock=ORDERS)
        first = await place_orders(mesh, users, stock.id, 10)
        assert len(await wait_for_all(mesh, users, 10)) == 10

        await broker.stop()
        during = await place_orders(mesh, users, stock.id, ORDERS - 10)  # the outbox holds them
        await broker.start()
        assert_each_order_once(await wait_for_all(mesh, users, ORDERS), first + during)


async def test_two_notification_replicas_share_one_nats_consumer(tmp_path: Path) -> None:
    require("127.0.0.1", 4222, "NATS")
    async with running_mesh(tmp_path, "nats://127.0.0.1:4222", database="postgres") as mesh:
        # The second replica: same database, same durable consumer, its own port.
        replica = await start(NOTIFICATION, replace(mesh.config("notification"), port=0))
        try:
            users = [(await mesh.user()).id for _ in range(4)]
            stock = await mesh.product(stock=60)
            order_ids = await place_orders(mesh, users, stock.id, 60)
            assert_each_order_once(await wait_for_all(mesh, users, 60), order_ids)
            consumers = [
                mesh.services["notification"].parts.consumer,
                replica.parts.consumer,
            ]
            applied = [c.applied for c in consumers if isinstance(c, Consumer)]
            assert sum(applied) == 60, applied
            assert sum(c.duplicates for c in consumers if isinstance(c, Consumer)) == 0
            assert all(n > 0 for n in applied), f"work was not shared: {applied}"
        finally:
            await replica.stop(grace=0.2)


@pytest.mark.parametrize("transport", ["embedded", "nats"])
async def test_stream_resumes_from_its_cursor(tmp_path: Path, transport: str) -> None:
    if transport == "nats":
        require("127.0.0.1", 4222, "NATS")
    url = "nats://127.0.0.1:4222" if transport == "nats" else ""
    async with running_mesh(tmp_path, url) as mesh:
        user = await mesh.user()
        stock = await mesh.product(stock=10)
        await place_orders(mesh, [user.id], stock.id, 2)
        assert len(await wait_for_all(mesh, [user.id], 2)) == 2

        stream = mesh.notifications.StreamNotifications(
            notification_pb2.StreamNotificationsRequest(user_id=user.id)
        )
        replayed = [await next_message(stream) for _ in range(2)]
        stream.cancel()
        cursor = replayed[-1].cursor

        third = (
            await mesh.orders.CreateOrder(mesh.order_request(user.id, {stock.id: 1}, None))
        ).order
        resumed = mesh.notifications.StreamNotifications(
            notification_pb2.StreamNotificationsRequest(user_id=user.id, cursor=cursor)
        )
        nxt = await next_message(resumed)
        assert nxt.notification.order_id == third.id, "only what came after the cursor"
        resumed.cancel()
