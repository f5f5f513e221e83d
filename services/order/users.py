"""Who may place orders, without asking the user service for every order: a replica of
users' statuses, kept in this service's database from the user service's events
(UserStatusChanged, the highest version of each user), read over its feed
(StreamUserEvents) whatever the broker.

The replica only ever spares the question: a user it knows as active, while it is kept
up (the feed is open, heard from within the last MISSED_HEARTBEATS heartbeats, and this
service has applied it up to the head of its last heartbeat), is not asked about;
a user it does not know or knows as inactive, and every user while the replica is not
kept up, is asked of the user service as before, whose answer (and error) is the
authoritative one. A user deactivated is therefore refused once the event has been
applied here: milliseconds while the feed is followed, and at most about
UNNUMBERED_GRACE + MISSED_HEARTBEATS * HEARTBEAT (5 s) when the user service hangs, is
cut off silently, or its relay is stuck (services/common/events/feed.py)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import cast

from sqlalchemy import Table, bindparam, select

from services.common.db import Database
from services.common.events.envelope import Event
from services.common.events.feed import subjects
from services.common.metrics import Metrics
from services.common.transactions import Transaction
from services.order.models import UserStatusRow
from shop.user.v1 import events_pb2, user_internal_pb2

log = logging.getLogger("shop.order")

# The user-event consumer's name (its processed events and feed position).
CONSUMER = "order-user-status"
# How often the user service's feed is asked for a heartbeat (its head, after its events):
# the replica stops being trusted after MISSED_HEARTBEATS of them are missed.
HEARTBEAT = 1.0
USER_STATUS_CHANGED = subjects(user_internal_pb2.StreamUserEventsResponse)[
    events_pb2.UserStatusChanged.DESCRIPTOR.full_name
]

STATUSES = cast(Table, UserStatusRow.__table__)
ACTIVE = select(STATUSES.c.active).where(STATUSES.c.user_id == bindparam("user_id"))


class UserStatuses:
    """The replica: users' statuses as the user service's events last said."""

    def __init__(self, db: Database) -> None:
        self._db = db
        upsert = db.insert(STATUSES)
        # Forward only: an older version (delivered late, or again) never undoes a newer.
        self._apply = upsert.on_conflict_do_update(
            index_elements=[STATUSES.c.user_id],
            set_={"active": upsert.excluded.active, "version": upsert.excluded.version},
            where=STATUSES.c.version < upsert.excluded.version,
        )

    async def handle(self, tx: Transaction, event: Event) -> None:
        """The consumer's handler: a user's status, if newer than the one kept."""
        if event.subject != USER_STATUS_CHANGED:
            return None
        changed = events_pb2.UserStatusChanged.FromString(event.payload)
        await tx.execute(
            self._apply,
            {"user_id": changed.user_id, "active": changed.active, "version": changed.version},
        )
        return None

    async def known_active(self, user_id: str) -> bool:
        row = await self._db.read_one(ACTIVE, {"user_id": user_id})
        return row is not None and bool(row["active"])


class UserCheck:
    """Whether a user may order: the replica where it can spare the question, else the
    user service (see the module's docstring)."""

    def __init__(
        self,
        statuses: UserStatuses,
        ask: Callable[[str], Awaitable[None]],
        following: Callable[[], bool],
    ) -> None:
        self._statuses = statuses
        # The user service's own check (ValidateUser): raises unless active.
        self._ask = ask
        # Whether the replica is kept up right now.
        self._following = following
        # How the checks were answered since start (the gauges).
        self.spared = 0
        self.asked = 0

    async def active_user(self, user_id: str) -> None:
        """Raises unless the user exists and is active."""
        if self._following() and await self._known_active(user_id):
            self.spared += 1
            return
        self.asked += 1
        await self._ask(user_id)

    async def _known_active(self, user_id: str) -> bool:
        try:
            return await self._statuses.known_active(user_id)
        except Exception as error:  # the replica is an optimisation: the user service answers
            log.warning("user status replica unreadable", extra={"error": type(error).__name__})
            return False

    def export(self, metrics: Metrics) -> None:
        metrics.gauge(
            "user_replica_following",
            "1 while the replica of users' statuses follows the user service's feed.",
            lambda: float(self._following()),
        )
        metrics.gauge(
            "user_checks_spared",
            "Order user checks the replica answered (users it knows as active).",
            lambda: self.spared,
        )
        metrics.gauge(
            "user_checks_asked",
            "Order user checks asked of the user service (ValidateUser).",
            lambda: self.asked,
        )
