"""Losing a broker node loses nothing: a 3-node JetStream cluster of the test's own, the
event stream kept on every node (EVENT_STREAM_REPLICAS=3), the mesh on PostgreSQL with
BROKER_URL listing all three nodes. Orders are placed at a steady rate; after the first
KILL_AFTER the stream's leader is SIGKILLed, and once another node leads the stream it is
started again, while orders still come in.

Why this holds: orders commit with their event in the outbox and never wait for the
broker; the relay's publish that times out or is refused during the leader election
raises, the relay pass ends with those rows unstamped, and the next pass (after the
supervisor's pause) publishes them again under the same Nats-Msg-Id, which JetStream
deduplicates. The pull consumer's fetches fail until a leader is back, then resume,
and the notification service records each event id once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from services.common.events.consumer import Consumer
from services.common.events.outbox import Relay
from tests.mesh import Mesh, running_mesh
from tests.nats_server import NatsCluster, own_nats_cluster
from tests.waits import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]

RATE = 8.0  # orders started a second, until the load is stopped
MAX_ORDERS = 240  # (30 s of load: a bound, never reached when all goes well)
IN_FLIGHT = 16
KILL_AFTER = 16  # orders completed when the stream leader is killed
LOAD_AFTER_RESTART = 2.0  # seconds of load after the restarted node has caught up
DELIVERY_WITHIN = 30.0  # seconds for every notification to arrive after the load


def mesh_on(broker_url: str, data_dir: Path) -> AbstractAsyncContextManager[Mesh]:
    """The four services in-process, each on a fresh PostgreSQL database, on `broker_url`
    (several nodes). The stream is not deleted afterwards: it goes away with the
    cluster's temp store."""
    return running_mesh(data_dir, broker_url, database="postgres", keep_stream=True)


@dataclass
class Load:
    placed: dict[str, float] = field(default_factory=dict)  # order id -> completion time
    failed: list[str] = field(default_factory=list)  # status codes
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    kill_now: asyncio.Event = field(default_factory=asyncio.Event)


async def place_orders(mesh: Mesh, users: list[str], product_id: str, load: Load) -> None:
    """Orders started at RATE a second (at most IN_FLIGHT at once) until `load.stop`."""
    semaphore = asyncio.Semaphore(IN_FLIGHT)
    batch = uuid.uuid4().hex[:8]

    async def place(i: int) -> None:
        async with semaphore:
            request = mesh.order_request(users[i % len(users)], {product_id: 1}, f"{batch}-{i}")
            try:
                reply = await mesh.orders.CreateOrder(request, timeout=20)
                load.placed[reply.order.id] = time.monotonic()
            except grpc.aio.AioRpcError as error:
                load.failed.append(error.code().name)
        if len(load.placed) + len(load.failed) >= KILL_AFTER:
            load.kill_now.set()

    start = time.monotonic()
    started: list[asyncio.Task[None]] = []
    for i in range(MAX_ORDERS):
        if load.stop.is_set():
            break
        started.append(asyncio.create_task(place(i)))
        await asyncio.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))
    await asyncio.gather(*started)


async def leader_of(cluster: NatsCluster, stream: str, *, without: str = "") -> str:
    async with cluster.client(without=without) as client:
        info = await client.jetstream(timeout=2).stream_info(stream)
        assert info.cluster is not None
        return info.cluster.leader or ""


async def test_no_event_is_lost_or_doubled_when_a_broker_node_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EVENT_STREAM_REPLICAS", "3")

    async def scenario() -> None:
        async with (
            own_nats_cluster(tmp_path / "nats", size=3) as cluster,
            mesh_on(cluster.url, tmp_path) as mesh,
        ):
            stream = mesh.config("order").event_stream
            async with cluster.client() as client:
                info = await client.jetstream().stream_info(stream)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
            victim = info.cluster.leader or ""
            assert victim in cluster.nodes, info.cluster

            users = [(await mesh.user()).id for _ in range(4)]
            product = await mesh.product(stock=MAX_ORDERS)
            relay = mesh.services["order"].parts.relay
            consumer = mesh.services["notification"].parts.consumer
            assert isinstance(relay, Relay) and isinstance(consumer, Consumer)

            async def notifications() -> int:
                return int(await mesh.sql("notification", "SELECT count(*) FROM notifications"))

            # Every 0.1 s: the outbox backlog and the notifications so far.
            samples: list[tuple[float, int, int]] = []

            async def sample() -> None:
                while True:
                    samples.append((time.monotonic(), relay.backlog, await notifications()))
                    await asyncio.sleep(0.1)

            load = Load()
            sampler = asyncio.create_task(sample())
            loader = asyncio.create_task(place_orders(mesh, users, product.id, load))
            new_leader: list[str] = []
            try:
                await asyncio.wait_for(load.kill_now.wait(), 20)
                await cluster.nodes[victim].kill()
                killed_at = time.monotonic()

                async def reelected() -> bool:
                    new_leader[:] = [await leader_of(cluster, stream, without=victim)]
                    return new_leader[0] not in ("", victim)

                reelected_in = await eventually(
                    reelected, "a new stream leader", within=20, interval=0.1, tolerate=True
                )
                await cluster.nodes[victim].start()  # back while orders still come in
                restarted_at = time.monotonic()

                async def caught_up() -> bool:
                    async with cluster.client() as client:
                        info = await client.jetstream(timeout=2).stream_info(stream)
                    assert info.cluster is not None
                    replicas = info.cluster.replicas or []
                    return len(replicas) == 2 and all(r.current and not r.offline for r in replicas)

                caught_up_in = await eventually(
                    caught_up,
                    "the restarted node catching up",
                    within=20,
                    interval=0.1,
                    tolerate=True,
                )
                await asyncio.sleep(LOAD_AFTER_RESTART)
                load.stop.set()
                await asyncio.wait_for(loader, 30)
                load_ended_at = time.monotonic()

                async def all_notified() -> bool:
                    return await notifications() >= len(load.placed)

                await eventually(
                    all_notified,
                    "every notification",
                    within=DELIVERY_WITHIN,
                    interval=0.1,
                    tolerate=True,
                )
                delivered_at = time.monotonic()
                await asyncio.sleep(1.0)  # anything doubled would show up now
            finally:
                sampler.cancel()
                loader.cancel()
                await asyncio.gather(sampler, loader, return_exceptions=True)

            notified = await mesh.sql(
                "notification",
                "SELECT string_agg(order_id, ',' ORDER BY order_id) FROM notifications",
            )
            doubled = await mesh.sql(
                "notification",
                "SELECT count(*) FROM (SELECT order_id FROM notifications GROUP BY order_id"
                " HAVING count(*) > 1) d",
            )
            events = await mesh.sql(
                "notification", "SELECT count(DISTINCT event_id) FROM notifications"
            )
            in_db = await mesh.sql("order", "SELECT count(*) FROM orders WHERE status = 'PLACED'")
            unsent = await mesh.sql("order", "SELECT count(*) FROM outbox WHERE position IS NULL")
            async with cluster.client() as client:
                state = (await client.jetstream().stream_info(stream)).state

            # The longest time after the kill that the notification count stood still while
            # some placed order lacked its notification.
            stall, since = 0.0, killed_at
            for (t0, _, n0), (t1, _, n1) in itertools.pairwise(samples):
                if n1 > n0 or n0 >= len(load.placed):
                    since = t1
                elif t0 >= killed_at:
                    stall = max(stall, t1 - since)
            messages = [record.getMessage() for record in caplog.records]
            summary = {
                "orders_placed": len(load.placed),
                "orders_failed": len(load.failed),
                "placed_while_a_node_was_down": sum(
                    killed_at <= t <= restarted_at for t in load.placed.values()
                ),
                "notifications": len(notified.split(",")) if notified else 0,
                "notifications_doubled": doubled,
                "stream_messages": state.messages,
                "redeliveries_skipped": consumer.duplicates,
                "relay_passes_failed": messages.count("background task failed; restarting"),
                "relay_errors": sorted(
                    {type(r.exc_info[1]).__name__ for r in caplog.records if r.exc_info}
                ),
                "consumer_fetches_failed": messages.count("fetch failed; retrying"),
                "max_outbox_backlog": max((b for _, b, _ in samples), default=0),
                "killed": victim,
                "new_leader": new_leader[0] if new_leader else "",
                "leader_reelected_s": round(reelected_in, 2),
                "restarted_node_caught_up_s": round(caught_up_in, 2),
                "longest_delivery_stall_s": round(stall, 2),
                "all_delivered_after_kill_s": round(delivered_at - killed_at, 2),
                "all_delivered_after_load_s": round(delivered_at - load_ended_at, 2),
            }
            print("broker node loss:", json.dumps(summary))

            placed_ids = sorted(load.placed)
            assert load.failed == [], "placing an order never waits for the broker"
            assert len(placed_ids) > KILL_AFTER
            assert summary["placed_while_a_node_was_down"] > 0, "the node died mid-load"
            assert in_db == len(placed_ids)
            assert notified == ",".join(placed_ids), "every placed order notified, once"
            assert doubled == 0
            assert events == len(placed_ids)
            assert unsent == 0, "the relay published every outbox row"
            assert state.messages == len(placed_ids), "republished events were deduplicated"
            assert stall < 20.0, summary

    # Bounded inside the test's own 90 s, so that the cluster and the mesh always stop.
    await asyncio.wait_for(scenario(), 80)
