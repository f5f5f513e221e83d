"""The outbox relay when its sink fails: a warning, a pause, and nothing lost or reordered;
relays of replicas on PostgreSQL taking turns."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from services.common import migrate
from services.common.db import Database
from services.common.events.envelope import Event
from services.common.events.outbox import Relay
from services.common.times import utcnow
from services.order.models import OutboxRow
from services.order.wiring import SPEC as ORDER
from tests.conftest import postgres_database
from tests.waits import eventually


class FlakySink:
    """A broker that is away for the first `failures` publishes (electing a leader, say)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[str] = []

    async def publish(self, event: Event) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("no responders available")
        self.published.append(event.event_id)


async def test_a_failing_sink_is_retried_without_an_error_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'order.db'}")
    await migrate.upgrade(db, ORDER.migrations, ORDER.name)
    async with db.write() as session:
        session.add_all(
            OutboxRow(
                event_id=f"evt_{i}",
                subject="order.created",
                payload=b"",
                headers={},
                create_time=utcnow(),
            )
            for i in range(3)
        )
    sink = FlakySink(failures=2)
    relay = Relay(db, OutboxRow, sink, name="test", poll_interval=0.01)
    caplog.set_level(logging.INFO)
    running = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: len(sink.published) == 3, "every event published", within=10)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await db.close()
    assert sink.published == ["evt_0", "evt_1", "evt_2"]
    retried = [r for r in caplog.records if r.getMessage() == "outbox relay pass failed; retrying"]
    assert [r.levelno for r in retried] == [logging.WARNING, logging.WARNING]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class SlowSink:
    """A broker that takes its time, so relay passes of two replicas overlap."""

    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish(self, event: Event) -> None:
        await asyncio.sleep(0.002)
        self.published.append(event.event_id)


@pytest.mark.postgres
async def test_relays_of_two_replicas_take_turns_and_a_cancelled_pass_frees_the_lock() -> None:
    """Two relays on one PostgreSQL outbox (two replicas) publishing at once: every event
    once, feed positions 1..n in publication order, no gap. A pass cancelled while it
    holds the replicas' lock gives it back: the other relay's next pass goes on."""
    async with postgres_database() as url:
        first, second = Database(url), Database(url)
        await migrate.upgrade(first, ORDER.migrations, ORDER.name)
        try:
            async with first.write() as session:
                session.add_all(
                    OutboxRow(
                        event_id=f"evt_{i:03}",
                        subject="order.created",
                        payload=b"",
                        headers={},
                        create_time=utcnow(),
                    )
                    for i in range(60)
                )
            sink = SlowSink()
            relays = [Relay(db, OutboxRow, sink, name="turns") for db in (first, second)]
            while sum(await asyncio.gather(*(r.publish_pending() for r in relays))):
                pass
            assert sorted(sink.published) == [f"evt_{i:03}" for i in range(60)]
            assert len(sink.published) == 60  # none twice
            async with first.read() as session:
                rows = (await session.scalars(select(OutboxRow).order_by(OutboxRow.position))).all()
            assert [row.position for row in rows] == list(range(1, 61))
            assert [row.event_id for row in rows] == sink.published

            # A pass cancelled inside the lock (its sink hanging), then the other replica's.
            async with first.write() as session:
                session.add(
                    OutboxRow(
                        event_id="evt_late",
                        subject="order.created",
                        payload=b"",
                        headers={},
                        create_time=utcnow(),
                    )
                )
            hung = asyncio.Event()

            class HangingSink:
                async def publish(self, event: Event) -> None:
                    hung.set()
                    await asyncio.sleep(60)

            stuck = asyncio.create_task(
                Relay(first, OutboxRow, HangingSink(), name="turns").publish_pending()
            )
            await hung.wait()
            stuck.cancel()
            await asyncio.gather(stuck, return_exceptions=True)
            async with asyncio.timeout(10):
                assert await relays[1].publish_pending() == 1
            assert sink.published[-1] == "evt_late"
        finally:
            await first.close()
            await second.close()
