"""Wake-ups between replicas: a PostgreSQL LISTEN that wakes this replica's streams.

The transaction that stores a notification NOTIFYs the channel with the user's id, so
a stream on any replica looks again as soon as the row is committed. This is only
about speed: streams also look every CATCH_UP_INTERVAL, so a lost connection delays
delivery by at most that and loses nothing."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from sqlalchemy.engine import make_url

from services.notification.hub import Hub
from services.notification.repository import CHANNEL

log = logging.getLogger("shop.notification")

RETRY_SECONDS = 1.0


def asyncpg_dsn(database_url: str) -> str:
    """`postgresql+asyncpg://...` as the plain DSN asyncpg takes."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Listener:
    def __init__(self, database_url: str, hub: Hub) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._hub = hub
        self.listening = asyncio.Event()

    def _on_notify(self, _connection: object, _pid: int, _channel: str, user_id: str) -> None:
        self._hub.wake(user_id)

    async def run(self) -> None:
        """Listens for the life of the service, reconnecting after a lost connection."""
        while True:
            try:
                await self._listen_until_lost()
                log.warning("notification listener lost its connection; reconnecting")
            except (OSError, asyncpg.PostgresError) as error:
                name = type(error).__name__
                log.warning("cannot listen for notifications", extra={"error": name})
            await asyncio.sleep(RETRY_SECONDS)

    async def _listen_until_lost(self) -> None:
        lost = asyncio.Event()
        connection = await asyncpg.connect(self._dsn, timeout=5)
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, self._on_notify)
            self.listening.set()
            await lost.wait()
        finally:
            self.listening.clear()
            if not connection.is_closed():
                await connection.close(timeout=2)
