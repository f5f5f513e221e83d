"""Reading, marking and streaming notifications against the running mesh."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from services.notification.usecases import Notifications
from shop.notification.v1 import notification_pb2 as pb
from tests.e2e.test_order_flow import notifications_of, wait_for_notifications
from tests.mesh import Mesh, running_mesh
from tests.rpc import fails, next_message, violated_fields
from tests.waits import eventually


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as running:
        yield running


async def order_for(mesh: Mesh, user_id: str, count: int = 1) -> list[str]:
    product = await mesh.product(stock=100)
    ids = []
    for _ in range(count):
        reply = await mesh.orders.CreateOrder(mesh.order_request(user_id, {product.id: 1}))
        ids.append(reply.order.id)
    return ids


async def test_mark_read_changes_only_what_it_names(mesh: Mesh) -> None:
    user, other = await mesh.user(), await mesh.user()
    await order_for(mesh, user.id, 2)
    await order_for(mesh, other.id, 1)
    newest, oldest = await wait_for_notifications(mesh, user.id, 2)
    (foreign,) = await wait_for_notifications(mesh, other.id, 1)

    marked = await mesh.notifications.MarkRead(
        pb.MarkReadRequest(user_id=user.id, notification_ids=[oldest.id])
    )
    assert [(n.id, n.read) for n in marked.notifications] == [(oldest.id, True)]
    read_time = marked.notifications[0].read_time
    assert read_time.seconds > 0
    again = await mesh.notifications.MarkRead(
        pb.MarkReadRequest(user_id=user.id, notification_ids=[oldest.id])
    )
    assert again.notifications[0].read_time == read_time, "marking twice is harmless"

    unread = await mesh.notifications.ListNotifications(
        pb.ListNotificationsRequest(user_id=user.id, unread_only=True)
    )
    assert [n.id for n in unread.notifications] == [newest.id]

    # Unknown ids, or another user's, change nothing, not even the valid ones beside them.
    for ids in (["ntf_missing", newest.id], [foreign.id]):
        await fails(
            mesh.notifications.MarkRead(pb.MarkReadRequest(user_id=user.id, notification_ids=ids)),
            grpc.StatusCode.NOT_FOUND,
        )
    assert [n.read for n in await notifications_of(mesh, user.id)] == [False, True]
    assert [n.read for n in await notifications_of(mesh, other.id)] == [False]

    for bad, field in (([], "notification_ids"), ([newest.id, newest.id], "notification_ids")):
        error = await fails(
            mesh.notifications.MarkRead(pb.MarkReadRequest(user_id=user.id, notification_ids=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {field}


async def test_many_subscribers_each_get_their_own(mesh: Mesh) -> None:
    alice, bob = await mesh.user(), await mesh.user()
    streams = {
        name: [
            mesh.notifications.StreamNotifications(pb.StreamNotificationsRequest(user_id=u.id))
            for _ in range(20)
        ]
        for name, u in (("alice", alice), ("bob", bob))
    }
    hub = mesh.services["notification"].parts.hub
    await eventually(lambda: hub.open_streams == 40, "every stream open before the order")
    (order_id,) = await order_for(mesh, alice.id)
    got = await asyncio.gather(*(next_message(s) for s in streams["alice"]))
    assert {m.notification.order_id for m in got} == {order_id}
    for stream in streams["bob"]:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.read(), 0.05)
    for stream in streams["alice"] + streams["bob"]:
        stream.cancel()


async def test_a_slow_subscriber_holds_no_queue_and_resumes_from_its_cursor(
    mesh: Mesh,
) -> None:
    """A stream reads from the database at its reader's pace: one that reads nothing
    while orders pile up gets every one of them afterwards, in order, and a cursor
    taken mid-way resumes with nothing lost and nothing repeated."""
    user = await mesh.user()
    notifications = mesh.services["notification"].parts.notifications
    assert isinstance(notifications, Notifications)
    first = (await order_for(mesh, user.id))[0]
    await wait_for_notifications(mesh, user.id, 1)

    stream = notifications.stream(user.id, "")  # the servicer's own generator, read slowly
    replayed = await anext(stream)
    assert replayed.order_id == first
    later = await order_for(mesh, user.id, 8)
    await wait_for_notifications(mesh, user.id, 9)
    pushed = [await anext(stream) for _ in range(4)]
    await stream.aclose()
    assert notifications.hub.open_streams == 0

    resumed = notifications.stream(user.id, notifications.cursor_of(user.id, pushed[-1]))
    rest = [await anext(resumed) for _ in range(4)]
    assert [n.order_id for n in pushed + rest] == later, "nothing lost, nothing repeated"
    assert [n.user_seq for n in [replayed, *pushed, *rest]] == list(range(1, 10))
    await resumed.aclose()


async def test_bad_stream_requests(mesh: Mesh) -> None:
    user, other = await mesh.user(), await mesh.user()
    await order_for(mesh, other.id)
    (theirs,) = await wait_for_notifications(mesh, other.id, 1)
    stream = mesh.notifications.StreamNotifications(pb.StreamNotificationsRequest(user_id=other.id))
    cursor = (await next_message(stream)).cursor
    stream.cancel()
    for request, field in (
        (pb.StreamNotificationsRequest(user_id=user.id, cursor="forged"), "cursor"),
        (pb.StreamNotificationsRequest(user_id=user.id, cursor=cursor), "cursor"),
        (pb.StreamNotificationsRequest(user_id=""), "user_id"),
    ):
        call = mesh.notifications.StreamNotifications(request)
        error = await fails(next_message(call), grpc.StatusCode.INVALID_ARGUMENT)
        assert violated_fields(error) == {field}
    assert theirs.user_id == other.id
