"""An in-memory UserRepository: the user use cases' tests run against it, no database."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from services.common.events.envelope import Event
from services.user.models import EmailTaken, UserRow
from services.user.repository import Announce


class InMemoryUsers:
    def __init__(self) -> None:
        self.rows: dict[str, UserRow] = {}
        # The events written with the changes, in order (the outbox).
        self.events: list[Event] = []

    async def get(self, user_id: str) -> UserRow | None:
        row = self.rows.get(user_id)
        return copy.copy(row) if row is not None else None

    async def page(self, after_id: str | None, limit: int) -> Sequence[UserRow]:
        ids = sorted(i for i in self.rows if after_id is None or i > after_id)
        return [copy.copy(self.rows[i]) for i in ids[:limit]]

    async def add(self, user: UserRow, announce: Announce) -> None:
        self._check_email(user.id, user.email)
        self.rows[user.id] = copy.copy(user)
        self.events.append(announce(user))

    async def update(
        self, user_id: str, values: Mapping[str, Any], announce: Announce
    ) -> UserRow | None:
        row = self.rows.get(user_id)
        if row is None:
            return None
        if "email" in values:
            self._check_email(user_id, values["email"])
        for name, value in values.items():
            setattr(row, name, value)
        row.version += 1
        if "active" in values:
            self.events.append(announce(row))
        return copy.copy(row)

    def _check_email(self, user_id: str, email: str) -> None:
        if any(row.email == email and row.id != user_id for row in self.rows.values()):
            raise EmailTaken(email)
