"""Live streams with three notification replicas on one PostgreSQL database and one
NATS consumer: every stream gets every notification of its user exactly once and in
order, whichever replica stored it and whichever replica (or protocol) serves the
stream, and a cursor taken mid-way resumes with exactly the rest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from services.common.server import RunningService, start
from services.notification.wiring import SPEC as NOTIFICATION
from shop.notification.v1 import notification_connect, notification_pb2, notification_pb2_grpc
from tests import tokens
from tests.conftest import require
from tests.e2e.conftest import gateway_in_process
from tests.mesh import Mesh, running_mesh
from tests.waits import eventually

USERS = 6
ORDERS = 300
STREAMS_PER_USER_PER_REPLICA = 2
DEADLINE = 60.0

Seen = list[tuple[str, str]]  # (order id, cursor), in arrival order


async def grpc_stream(
    channel: grpc.aio.Channel, user_id: str, into: Seen, cursor: str = ""
) -> None:
    stub = notification_pb2_grpc.NotificationServiceStub(channel)
    call = stub.StreamNotifications(
        notification_pb2.StreamNotificationsRequest(user_id=user_id, cursor=cursor),
        metadata=tokens.bearer(user_id),
    )
    try:
        async for message in call:
            into.append((message.notification.order_id, message.cursor))
    finally:
        call.cancel()


async def connect_stream(url: str, user_id: str, into: Seen) -> None:
    async with notification_connect.NotificationServiceClient(
        url, interceptors=[tokens.ConnectBearer(tokens.token(user_id))]
    ) as client:
        stream = client.stream_notifications(
            notification_pb2.StreamNotificationsRequest(user_id=user_id)
        )
        async for message in stream:
            into.append((message.notification.order_id, message.cursor))


async def sse_stream(url: str, user_id: str, into: Seen) -> None:
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-N",
        "-H",
        f"Authorization: Bearer {tokens.token(user_id)}",
        f"{url}/v1/users/{user_id}/notifications:stream",
        stdout=asyncio.subprocess.PIPE,
    )
    assert curl.stdout is not None
    try:
        async for line in curl.stdout:
            if line.startswith(b"data: "):
                document = json.loads(line[len(b"data: ") :])
                into.append((document["notification"]["orderId"], document["cursor"]))
    finally:
        if curl.returncode is None:
            curl.kill()
        await curl.wait()


@asynccontextmanager
async def replicas_of(mesh: Mesh, count: int) -> AsyncIterator[list[RunningService[Any]]]:
    """The mesh's notification service and count - 1 more replicas: one database, one
    NATS durable consumer, ports of their own."""
    extra = [
        await start(NOTIFICATION, replace(mesh.config("notification"), port=0))
        for _ in range(count - 1)
    ]
    try:
        yield [mesh.services["notification"], *extra]
    finally:
        for replica in extra:
            await replica.stop(grace=0.2)


async def place(mesh: Mesh, users: list[str], product_id: str) -> dict[str, list[str]]:
    """ORDERS orders, ten at a time, spread over the users; their ids by user."""
    semaphore = asyncio.Semaphore(10)
    batch = uuid.uuid4().hex[:8]
    by_user: dict[str, list[str]] = defaultdict(list)

    async def one(i: int) -> None:
        user_id = users[i % len(users)]
        async with semaphore:
            request = mesh.order_request(user_id, {product_id: 1}, f"{batch}-{i}")
            reply = await mesh.orders.CreateOrder(request, timeout=30)
        by_user[user_id].append(reply.order.id)

    await asyncio.gather(*(one(i) for i in range(ORDERS)))
    return by_user


async def test_streams_on_three_replicas_get_each_notification_once(tmp_path: Path) -> None:
    require("127.0.0.1", 4222, "NATS")
    async with (
        running_mesh(tmp_path, "nats://127.0.0.1:4222", database="postgres") as mesh,
        replicas_of(mesh, 3) as replicas,
    ):
        await _scenario(mesh, replicas)


async def _scenario(mesh: Mesh, replicas: list[RunningService[Any]]) -> None:
    users = [(await mesh.user()).id for _ in range(USERS)]
    product = await mesh.product(stock=ORDERS)
    channels = [tokens.service_channel(replica.address) for replica in replicas]
    mesh.peer_addresses["notification"] = ",".join(r.address for r in replicas)
    streams: list[tuple[str, str, Seen]] = []  # (user, how, seen)
    tasks: list[asyncio.Task[None]] = []
    async with gateway_in_process(mesh) as gateway:
        for user_id in users:
            for index, channel in enumerate(channels):
                for _ in range(STREAMS_PER_USER_PER_REPLICA):
                    seen: Seen = []
                    streams.append((user_id, f"grpc@replica{index}", seen))
                    tasks.append(asyncio.create_task(grpc_stream(channel, user_id, seen)))
            for how, opener in (("connect", connect_stream), ("sse", sse_stream)):
                seen = []
                streams.append((user_id, how, seen))
                tasks.append(asyncio.create_task(opener(gateway.url, user_id, seen)))
        await eventually(
            lambda: sum(replica.parts.hub.open_streams for replica in replicas) == len(streams),
            "every stream open before the first order",
            within=10,
        )
        by_user = await place(mesh, users, product.id)
        # Missing notifications are reported below, stream by stream.
        with contextlib.suppress(AssertionError):
            await eventually(
                lambda: all(len(seen) >= len(by_user[user]) for user, _, seen in streams),
                "every stream got its notifications",
                within=DEADLINE,
            )
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would arrive by now
        problems = []
        for user_id, how, seen in streams:
            got = [order_id for order_id, _ in seen]
            expected = by_user[user_id]
            if len(got) != len(set(got)) or set(got) != set(expected):
                missing = len(set(expected) - set(got))
                foreign = len(set(got) - set(expected))
                problems.append(
                    f"{how} of {user_id}: {len(got)} received, {missing} missing, "
                    f"{len(got) - len(set(got))} twice, {foreign} foreign"
                )
        assert problems == [], f"{len(problems)} of {len(streams)} streams wrong: {problems[:5]}"
        # Every stream saw its user's notifications in one order: the same for all.
        for user_id in users:
            orders = {tuple(o for o, _ in seen) for u, _, seen in streams if u == user_id}
            assert len(orders) == 1, f"{user_id}: streams disagree on the order"

        # Resume: a cursor taken half-way on one replica, the rest from another.
        for user_id in users:
            seen = next(s for u, how, s in streams if u == user_id and how == "grpc@replica0")
            half = len(seen) // 2
            cursor = seen[half - 1][1]
            rest: Seen = []
            task = asyncio.create_task(grpc_stream(channels[2], user_id, rest, cursor))
            await eventually(
                lambda: len(rest) >= len(seen) - half,  # noqa: B023
                "the rest after the cursor",
                within=10,
            )
            await asyncio.sleep(0.3)
            task.cancel()
            assert [o for o, _ in rest] == [o for o, _ in seen[half:]], "exactly the rest"
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
