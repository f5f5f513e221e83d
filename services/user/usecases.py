"""User use cases: sign-up, reads, partial updates and the active check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from services.common.ids import new_id
from services.common.pagination import PageTokens, page_size
from services.common.times import utcnow
from services.user.convert import user_status_changed
from services.user.models import EmailTaken, UserRow
from services.user.repository import UserRepository

UPDATABLE = ("display_name", "email", "active")
# Fields only an administrator may change, even on one's own record: a user an admin
# deactivated must not be able to reactivate himself.
ADMIN_ONLY = frozenset({"active"})


def email_taken(email: str) -> AlreadyExists:
    return AlreadyExists(f"email {email} is already taken", "EMAIL_TAKEN", email=email)


def normalised_email(email: str) -> str:
    return email.strip().lower()


def new_user(email: str, display_name: str) -> UserRow:
    """A new, active user (not stored yet), its email and name normalised."""
    now = utcnow()
    return UserRow(
        id=new_id("usr"),
        email=normalised_email(email),
        display_name=display_name.strip(),
        active=True,
        create_time=now,
        update_time=now,
        version=1,
    )


class Users:
    def __init__(self, repository: UserRepository, page_tokens: PageTokens) -> None:
        self._repository = repository
        self._tokens = page_tokens

    async def create(self, email: str, display_name: str) -> UserRow:
        user = new_user(email, display_name)
        try:
            await self._repository.add(user, user_status_changed)
        except EmailTaken:
            raise email_taken(user.email) from None
        return user

    async def get(self, user_id: str) -> UserRow:
        user = await self._repository.get(user_id)
        if user is None:
            raise NotFound("user", user_id)
        return user

    async def list_page(
        self, requested_size: int | None, token: str
    ) -> tuple[Sequence[UserRow], str]:
        size = page_size(requested_size)
        after = self._tokens.decode(token)
        rows = await self._repository.page(after, size + 1)
        return self._tokens.page(rows, size, key=lambda row: row.id)

    async def update(self, user_id: str, changes: Mapping[str, Any], *, by_admin: bool) -> UserRow:
        """Applies `changes` (fields of UPDATABLE); ADMIN_ONLY fields need `by_admin`."""
        refused = ADMIN_ONLY.intersection(changes)
        if refused and not by_admin:
            fields = ", ".join(sorted(refused))
            raise PermissionDenied(f"only an administrator may change {fields}", "ADMIN_ONLY")
        values = dict(changes)
        if "email" in values:
            values["email"] = normalised_email(str(values["email"]))
        if "display_name" in values:
            values["display_name"] = str(values["display_name"]).strip()
        values["update_time"] = utcnow()
        try:
            user = await self._repository.update(user_id, values, user_status_changed)
        except EmailTaken:
            raise email_taken(values["email"]) from None
        if user is None:
            raise NotFound("user", user_id)
        return user

    async def require_active(self, user_id: str) -> UserRow:
        user = await self.get(user_id)
        if not user.active:
            raise FailedPrecondition(
                f"user {user_id} is not active",
                "USER_INACTIVE",
                [f"user:{user_id}"],
                user_id=user_id,
            )
        return user
