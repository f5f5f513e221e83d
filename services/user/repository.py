"""Every query of the user service. Each method is one transaction of its own; the use
cases see `UserRepository`, so their tests can hand them an in-memory one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.user.models import EmailTaken, UserRow

USERS = UserRow.__table__
USER_BY_ID = select(USERS).where(USERS.c.id == bindparam("id"))


class UserRepository(Protocol):
    async def get(self, user_id: str) -> UserRow | None: ...

    async def page(self, after_id: str | None, limit: int) -> Sequence[UserRow]:
        """Up to `limit` users after `after_id`, oldest first (ids sort by creation time)."""
        ...

    async def add(self, user: UserRow) -> None:
        """Stores a new user; raises EmailTaken when another user has the email."""
        ...

    async def update(self, user_id: str, values: Mapping[str, Any]) -> UserRow | None:
        """Sets `values` on the user (None when there is none); raises EmailTaken."""
        ...


class SqlUserRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, user_id: str) -> UserRow | None:
        # Every GetUser and every order's ValidateUser: a point read without the ORM session.
        row = await self._db.read_one(USER_BY_ID, {"id": user_id})
        return None if row is None else UserRow(**row)

    async def page(self, after_id: str | None, limit: int) -> Sequence[UserRow]:
        query = select(UserRow).order_by(UserRow.id).limit(limit)
        if after_id is not None:
            query = query.where(UserRow.id > after_id)
        async with self._db.read() as session:
            return (await session.scalars(query)).all()

    async def add(self, user: UserRow) -> None:
        try:
            async with self._db.write() as session:
                session.add(user)
        except IntegrityError:
            raise EmailTaken(user.email) from None

    async def update(self, user_id: str, values: Mapping[str, Any]) -> UserRow | None:
        try:
            async with self._db.write() as session:
                user = await session.get(UserRow, user_id)
                if user is None:
                    return None
                for name, value in values.items():
                    setattr(user, name, value)
        except IntegrityError:
            raise EmailTaken(str(values.get("email", ""))) from None
        return user
