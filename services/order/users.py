"""Who may place orders, without asking the user service for every order: a replica of
users' statuses, kept in this service's database from the user service's events
(UserStatusChanged, the highest version of each user).

The replica only ever spares the question: a user it knows as active, while it is kept
up (the user service's feed, or the broker, is followed), is not asked about; a user it
does not know or knows as inactive, and every user while it is not kept up, is asked of
the user service as before, whose answer (and error) is the authoritative one. A user
deactivated is therefore refused once the event has been applied here: the feed's lag,
milliseconds while it is followed (the user service exports its relay's backlog as
`outbox_oldest_unsent_age_seconds`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from services.common.db import Database
from services.common.events.envelope import Event
from services.common.events.feed import subjects
from services.common.transactions import Transaction
from services.order.models import UserStatusRow
from shop.user.v1 import events_pb2, user_internal_pb2

# The durable name of the user-event consumer (processed events, NATS consumer).
CONSUMER = "order-user-status"
USER_STATUS_CHANGED = subjects(user_internal_pb2.StreamUserEventsResponse)[
    events_pb2.UserStatusChanged.DESCRIPTOR.full_name
]
# The logical subjects the consumer takes from the broker: the user service's events.
USER_SUBJECTS = USER_STATUS_CHANGED.split(".", 1)[0] + ".>"

STATUSES = cast(Table, UserStatusRow.__table__)
ACTIVE = select(STATUSES.c.active).where(STATUSES.c.user_id == bindparam("user_id"))


class UserStatuses:
    """The replica: users' statuses as the user service's events last said."""

    def __init__(self, db: Database) -> None:
        self._db = db
        insert = sqlite.insert if db.is_sqlite else postgresql.insert
        upsert = insert(STATUSES)
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

    async def active_user(self, user_id: str) -> None:
        """Raises unless the user exists and is active."""
        if self._following() and await self._statuses.known_active(user_id):
            return
        await self._ask(user_id)
