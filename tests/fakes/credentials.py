"""An in-memory CredentialRepository over the in-memory users: the sign-in use cases'
tests run against it, no database."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime

from services.user.models import RefreshTokenRow, UserRow
from services.user.repository import Announce
from tests.fakes.user import InMemoryUsers


class InMemoryCredentials:
    def __init__(self, users: InMemoryUsers) -> None:
        self.users = users
        self.passwords: dict[str, str] = {}  # user id -> hash
        self.tokens: dict[str, RefreshTokenRow] = {}  # token hash -> row
        self.failures: list[tuple[str, datetime]] = []

    async def add_user(self, user: UserRow, password_hash: str, announce: Announce) -> None:
        await self.users.add(user, announce)
        self.passwords[user.id] = password_hash

    async def by_email(self, email: str) -> tuple[UserRow, str] | None:
        for user in self.users.rows.values():
            if user.email == email and user.id in self.passwords:
                return copy.copy(user), self.passwords[user.id]
        return None

    async def set_password_hash(self, user_id: str, password_hash: str, now: datetime) -> None:
        self.passwords[user_id] = password_hash

    async def add_refresh(self, token: RefreshTokenRow) -> None:
        self.tokens[token.token_hash] = copy.copy(token)

    async def refresh_token(self, token_hash: str) -> RefreshTokenRow | None:
        row = self.tokens.get(token_hash)
        return copy.copy(row) if row is not None else None

    async def use_refresh(self, token_hash: str, now: datetime, successor: RefreshTokenRow) -> bool:
        row = self.tokens.get(token_hash)
        if row is None or row.used_time is not None or row.revoked_time is not None:
            return False
        row.used_time = now
        self.tokens[successor.token_hash] = copy.copy(successor)
        return True

    async def revoke_family(self, family_id: str, now: datetime) -> None:
        for row in self.tokens.values():
            if row.family_id == family_id and row.revoked_time is None:
                row.revoked_time = now

    async def failure_times(self, key: str, since: datetime) -> list[datetime]:
        return sorted(at for k, at in self.failures if k == key and at > since)

    async def add_failure(
        self, keys: Sequence[str], now: datetime, forget_before: datetime
    ) -> None:
        self.failures = [(k, at) for k, at in self.failures if k not in keys or at > forget_before]
        self.failures += [(key, now) for key in keys]

    async def clear_failures(self, key: str) -> None:
        self.failures = [(k, at) for k, at in self.failures if k != key]
