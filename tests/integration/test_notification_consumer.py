"""The notification service's event consumer on a real database (its transaction is a
driver-level one, `Database.transaction`): each event applied once, also when two
replicas race on it; the feed's position saved with it and only ever moving forward;
a failing handler leaves nothing; the user's numbers; NOTIFY on commit (PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest
from sqlalchemy import select

from services.common import migrate
from services.common.db import Database
from services.common.events.consumer import Consumer, Handler
from services.common.events.envelope import Event
from services.common.pagination import PageTokens
from services.common.transactions import Transaction
from services.notification import order_events
from services.notification.hub import Hub
from services.notification.models import (
    ConsumerPositionRow,
    NotificationRow,
    ProcessedEventRow,
)
from services.notification.repository import CHANNEL, SqlNotificationRepository
from services.notification.usecases import Notifications
from services.notification.wakeups import asyncpg_dsn
from services.notification.wiring import SPEC as NOTIFICATION
from shop.common.v1 import money_pb2
from shop.order.v1 import events_pb2, order_pb2
from tests.conftest import postgres_database

Wrap = Callable[[Handler], Handler]


def created(event_id: str, user_id: str = "usr_1") -> Event:
    order = order_pb2.Order(
        id=f"ord_{event_id}",
        user_id=user_id,
        items=[order_pb2.OrderItem(product_id="prd_1", quantity=2)],
        total=money_pb2.Money(amount_minor=1999, currency_code="EUR"),
    )
    payload = events_pb2.OrderCreated(event_id=event_id, order=order).SerializeToString()
    return Event(event_id, order_events.ORDER_CREATED, payload)


class RecordingHub(Hub):
    def __init__(self) -> None:
        super().__init__()
        self.woken: list[str] = []

    def wake(self, user_id: str) -> None:
        self.woken.append(user_id)
        super().wake(user_id)


class Replica:
    """One replica's consumer (its own Database on the shared database)."""

    def __init__(self, url: str, name: str = "notification", wrap: Wrap | None = None) -> None:
        self.db = Database(url)
        self.hub = RecordingHub()
        repository = SqlNotificationRepository(self.db)
        self.notifications = Notifications(repository, PageTokens("secret"), self.hub)
        handler = order_events.handler(self.notifications, repository.store_in)
        self.consumer = Consumer(
            self.db,
            name,
            handler if wrap is None else wrap(handler),
            ProcessedEventRow,
            ConsumerPositionRow,
        )

    async def stored(self) -> list[tuple[str, str, int]]:
        """(event_id, user_id, user_seq) of every notification, in insertion order."""
        query = select(NotificationRow.event_id, NotificationRow.user_id, NotificationRow.user_seq)
        async with self.db.read() as session:
            rows = (await session.execute(query.order_by(NotificationRow.seq))).all()
        return [(row[0], row[1], row[2]) for row in rows]

    async def recorded(self) -> list[str]:
        query = select(ProcessedEventRow.event_id).order_by(ProcessedEventRow.event_id)
        async with self.db.read() as session:
            return list((await session.scalars(query)).all())


@asynccontextmanager
async def replicas(url: str, *wraps: Wrap | None) -> AsyncIterator[list[Replica]]:
    made = [Replica(url, wrap=wrap) for wrap in wraps or (None,)]
    try:
        await migrate.upgrade(made[0].db, NOTIFICATION.migrations, NOTIFICATION.name)
        yield made
    finally:
        for replica in made:
            await replica.db.close()


async def test_an_event_is_applied_once_and_the_position_only_moves_forward(
    database_url: str,
) -> None:
    async with replicas(database_url) as (replica,):
        consumer = replica.consumer
        assert await consumer.position() == 0
        assert await consumer.apply(created("evt_1"), position=1)
        assert replica.hub.woken == ["usr_1"]
        assert not await consumer.apply(created("evt_1"), position=1)
        assert await consumer.apply(created("evt_2", "usr_2"), position=3)
        assert await consumer.apply(created("evt_3"), position=4)
        # A replay of older positions is skipped and leaves the position where it was.
        assert not await consumer.apply(created("evt_2", "usr_2"), position=3)
        assert await consumer.apply(created("evt_4"))  # the broker: no position
        assert await consumer.position() == 4
        assert (consumer.applied, consumer.duplicates) == (4, 2)
        assert replica.hub.woken == ["usr_1", "usr_2", "usr_1", "usr_1"]
        assert await replica.stored() == [
            ("evt_1", "usr_1", 1),
            ("evt_2", "usr_2", 1),
            ("evt_3", "usr_1", 2),
            ("evt_4", "usr_1", 3),
        ]
        assert await replica.recorded() == ["evt_1", "evt_2", "evt_3", "evt_4"]


async def test_a_failing_handler_leaves_nothing_and_the_event_applies_later(
    database_url: str,
) -> None:
    failures = [RuntimeError("handler failed")]

    def failing(handler: Handler) -> Handler:
        async def handle(transaction: Transaction, event: Event) -> Callable[[], None] | None:
            after_commit = await handler(transaction, event)
            if failures:
                raise failures.pop()
            return after_commit

        return handle

    async with replicas(database_url, failing) as (replica,):
        with pytest.raises(RuntimeError, match="handler failed"):
            await replica.consumer.apply(created("evt_1"), position=1)
        assert await replica.stored() == []
        assert await replica.recorded() == []
        assert await replica.consumer.position() == 0
        assert await replica.consumer.apply(created("evt_1"), position=1)
        assert await replica.stored() == [("evt_1", "usr_1", 1)]
        assert await replica.consumer.position() == 1


async def test_twin_deliveries_racing_on_two_replicas_store_one_notification(
    database_url: str,
) -> None:
    """The second waits on the first's record of the event and skips it: the handler
    runs once."""
    handled: list[str] = []

    def slow(handler: Handler) -> Handler:
        async def handle(transaction: Transaction, event: Event) -> Callable[[], None] | None:
            handled.append(event.event_id)
            after_commit = await handler(transaction, event)
            await asyncio.sleep(0.2)  # the twin arrives while this transaction is open
            return after_commit

        return handle

    async with replicas(database_url, slow, slow) as (first, second):
        event = created("evt_1")
        # No position (the broker's redelivery): what the twin waits on is the record.
        one = asyncio.create_task(first.consumer.apply(event))
        await asyncio.sleep(0.05)
        other = asyncio.create_task(second.consumer.apply(event))
        assert list(await asyncio.gather(one, other)) == [True, False]
        assert handled == ["evt_1"]
        assert second.consumer.duplicates == 1
        assert (first.hub.woken, second.hub.woken) == (["usr_1"], [])
        assert await first.stored() == [("evt_1", "usr_1", 1)]


async def test_a_notification_stored_already_makes_the_delivery_a_repeat(
    database_url: str,
) -> None:
    """The notifications' own unique key: another consumer's record of the event."""
    async with replicas(database_url) as (replica,):
        assert await replica.consumer.apply(created("evt_1"), position=1)
        other = Replica(database_url, name="notification-v2")
        try:
            assert not await other.consumer.apply(created("evt_1"), position=7)
            assert other.consumer.duplicates == 1
            assert await other.consumer.position() == 7
            assert await other.recorded() == ["evt_1"]  # the first consumer's record only
        finally:
            await other.db.close()
        assert await replica.stored() == [("evt_1", "usr_1", 1)]


@pytest.mark.postgres
async def test_every_replica_hears_of_a_stored_notification_on_commit() -> None:
    async with postgres_database() as url, replicas(url) as (replica,):
        heard: asyncio.Queue[str] = asyncio.Queue()
        listener = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[-1]))
            assert await replica.consumer.apply(created("evt_1", "usr_7"))
            assert await asyncio.wait_for(heard.get(), 5) == "usr_7"
            assert not await replica.consumer.apply(created("evt_1", "usr_7"))  # a repeat
            await asyncio.sleep(0.2)
            assert heard.empty()
        finally:
            await listener.close()
