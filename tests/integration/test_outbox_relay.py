"""The outbox relay when its sink fails: a warning, a pause, and nothing lost or reordered."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from services.common import migrate
from services.common.db import Database
from services.common.events.envelope import Event
from services.common.events.outbox import Relay
from services.common.times import utcnow
from services.order.models import OutboxRow
from services.order.wiring import SPEC as ORDER
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
