"""Every query of the user service. Each method is one transaction of its own; the use
cases see `UserRepository`, so their tests can hand them an in-memory one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import CursorResult, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.common.events.envelope import Event
from services.common.events.outbox import outbox_values
from services.common.times import as_utc
from services.user.models import (
    CredentialRow,
    EmailTaken,
    OutboxRow,
    RefreshTokenRow,
    SignInFailureRow,
    UserRow,
)

# Makes the event of a user just changed, inside the transaction that changed it.
Announce = Callable[[UserRow], Event]

USERS = UserRow.__table__
USER_BY_ID = select(USERS).where(USERS.c.id == bindparam("id"))


class UserRepository(Protocol):
    async def get(self, user_id: str) -> UserRow | None: ...

    async def page(self, after_id: str | None, limit: int) -> Sequence[UserRow]:
        """Up to `limit` users after `after_id`, oldest first (ids sort by creation time)."""
        ...

    async def add(self, user: UserRow, announce: Announce) -> None:
        """Stores a new user with the event `announce` makes of it; raises EmailTaken
        when another user has the email."""
        ...

    async def update(
        self, user_id: str, values: Mapping[str, Any], announce: Announce
    ) -> UserRow | None:
        """Sets `values` on the user, one version up, with the event `announce` makes of
        it when they set `active` (None when there is no such user); raises EmailTaken."""
        ...


class SqlUserRepository:
    def __init__(self, db: Database, events_committed: Callable[[], None] = lambda: None) -> None:
        self._db = db
        # Tells the outbox relay an event was committed, so it publishes without waiting.
        self._events_committed = events_committed

    async def get(self, user_id: str) -> UserRow | None:
        # Every GetUser and every order's ValidateUser: a point read without the ORM session.
        return await self._db.read_model(UserRow, USER_BY_ID, {"id": user_id})

    async def page(self, after_id: str | None, limit: int) -> Sequence[UserRow]:
        query = select(UserRow).order_by(UserRow.id).limit(limit)
        if after_id is not None:
            query = query.where(UserRow.id > after_id)
        async with self._db.read() as session:
            return (await session.scalars(query)).all()

    async def add(self, user: UserRow, announce: Announce) -> None:
        try:
            async with self._db.write() as session:
                session.add(user)
                session.add(_outbox_row(announce(user)))
        except IntegrityError:
            raise EmailTaken(user.email) from None
        self._events_committed()

    async def update(
        self, user_id: str, values: Mapping[str, Any], announce: Announce
    ) -> UserRow | None:
        # Other services keep who is active (UserStatusChanged); nothing else of the user
        # is announced.
        announced = "active" in values
        try:
            async with self._db.write() as session:
                # Locked: two changes of one user never share a version.
                user = await session.get(UserRow, user_id, with_for_update=True)
                if user is None:
                    return None
                for name, value in values.items():
                    setattr(user, name, value)
                user.version += 1
                if announced:
                    session.add(_outbox_row(announce(user)))
        except IntegrityError:
            raise EmailTaken(str(values.get("email", ""))) from None
        if announced:
            self._events_committed()
        return user


def _outbox_row(event: Event) -> OutboxRow:
    return OutboxRow(**outbox_values(event))


class CredentialRepository(Protocol):
    """What the built-in sign-in stores: passwords, refresh tokens, failed attempts."""

    async def add_user(self, user: UserRow, password_hash: str, announce: Announce) -> None:
        """Stores a new user, its password and the event `announce` makes of the user in
        one transaction; raises EmailTaken."""
        ...

    async def by_email(self, email: str) -> tuple[UserRow, str] | None:
        """The user with this (normalised) email and its password hash; None when there
        is no such user or it has no password."""
        ...

    async def set_password_hash(self, user_id: str, password_hash: str, now: datetime) -> None: ...

    async def add_refresh(self, token: RefreshTokenRow) -> None: ...

    async def refresh_token(self, token_hash: str) -> RefreshTokenRow | None: ...

    async def use_refresh(self, token_hash: str, now: datetime, successor: RefreshTokenRow) -> bool:
        """Marks the token used and stores its successor, in one transaction, if it was
        neither used nor revoked (a conditional update: of two concurrent uses one
        wins); False otherwise, and nothing is written."""
        ...

    async def revoke_family(self, family_id: str, now: datetime) -> None:
        """Every token of the family stops working."""
        ...

    async def failure_times(self, key: str, since: datetime) -> list[datetime]:
        """When the failed sign-ins under `key` after `since` were, oldest first."""
        ...

    async def add_failure(
        self, keys: Sequence[str], now: datetime, forget_before: datetime
    ) -> None:
        """Records a failed sign-in under each key, and forgets theirs before `forget_before`."""
        ...

    async def clear_failures(self, key: str) -> None: ...


REFRESH = RefreshTokenRow
FAILURES = SignInFailureRow


class SqlCredentialRepository:
    def __init__(self, db: Database, events_committed: Callable[[], None] = lambda: None) -> None:
        self._db = db
        # Tells the outbox relay an event was committed, so it publishes without waiting.
        self._events_committed = events_committed

    async def add_user(self, user: UserRow, password_hash: str, announce: Announce) -> None:
        try:
            async with self._db.write() as session:
                session.add(user)
                await session.flush()  # the user first: the credential refers to it
                session.add(
                    CredentialRow(
                        user_id=user.id, password_hash=password_hash, update_time=user.create_time
                    )
                )
                session.add(_outbox_row(announce(user)))
        except IntegrityError:
            raise EmailTaken(user.email) from None
        self._events_committed()

    async def by_email(self, email: str) -> tuple[UserRow, str] | None:
        query = select(UserRow, CredentialRow.password_hash).join(
            CredentialRow, CredentialRow.user_id == UserRow.id
        )
        async with self._db.read() as session:
            found = (await session.execute(query.where(UserRow.email == email))).first()
        return None if found is None else (found[0], found[1])

    async def set_password_hash(self, user_id: str, password_hash: str, now: datetime) -> None:
        async with self._db.write() as session:
            credential = await session.get(CredentialRow, user_id)
            if credential is not None:
                credential.password_hash = password_hash
                credential.update_time = now

    async def add_refresh(self, token: RefreshTokenRow) -> None:
        async with self._db.write() as session:
            session.add(token)

    async def refresh_token(self, token_hash: str) -> RefreshTokenRow | None:
        async with self._db.read() as session:
            row = await session.get(RefreshTokenRow, token_hash)
        if row is not None:
            row.expire_time = as_utc(row.expire_time)
        return row

    async def use_refresh(self, token_hash: str, now: datetime, successor: RefreshTokenRow) -> bool:
        async with self._db.write() as session:
            result = await session.execute(
                update(REFRESH)
                .where(
                    REFRESH.token_hash == token_hash,
                    REFRESH.used_time.is_(None),
                    REFRESH.revoked_time.is_(None),
                )
                .values(used_time=now)
            )
            assert isinstance(result, CursorResult)
            if result.rowcount != 1:
                return False
            session.add(successor)
        return True

    async def revoke_family(self, family_id: str, now: datetime) -> None:
        async with self._db.write() as session:
            await session.execute(
                update(REFRESH)
                .where(REFRESH.family_id == family_id, REFRESH.revoked_time.is_(None))
                .values(revoked_time=now)
            )

    async def failure_times(self, key: str, since: datetime) -> list[datetime]:
        query = (
            select(FAILURES.fail_time)
            .where(FAILURES.key == key, FAILURES.fail_time > since)
            .order_by(FAILURES.fail_time)
        )
        async with self._db.read() as session:
            return [as_utc(moment) for moment in (await session.scalars(query)).all()]

    async def add_failure(
        self, keys: Sequence[str], now: datetime, forget_before: datetime
    ) -> None:
        async with self._db.write() as session:
            await session.execute(
                delete(FAILURES).where(
                    FAILURES.key.in_(list(keys)), FAILURES.fail_time <= forget_before
                )
            )
            session.add_all(SignInFailureRow(key=key, fail_time=now) for key in keys)

    async def clear_failures(self, key: str) -> None:
        async with self._db.write() as session:
            await session.execute(delete(FAILURES).where(FAILURES.key == key))
