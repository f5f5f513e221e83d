"""The user use cases against an in-memory repository: the rules, without a database."""

from __future__ import annotations

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from services.common.pagination import PageTokens
from services.user.usecases import Users
from shop.user.v1 import events_pb2
from tests.fakes.user import InMemoryUsers


@pytest.fixture
def repository() -> InMemoryUsers:
    return InMemoryUsers()


@pytest.fixture
def users(repository: InMemoryUsers) -> Users:
    return Users(repository, PageTokens("unit-test-secret"))


def announced(repository: InMemoryUsers) -> list[tuple[str, bool, int]]:
    """The users' statuses announced so far (UserStatusChanged), in order."""
    messages = [events_pb2.UserStatusChanged.FromString(e.payload) for e in repository.events]
    return [(m.user_id, m.active, m.version) for m in messages]


async def test_a_user_is_announced_when_created_and_when_its_status_changes(
    users: Users, repository: InMemoryUsers
) -> None:
    ann = await users.create("ann@example.com", "Ann")
    await users.update(ann.id, {"display_name": "Annie"}, by_admin=False)  # not announced
    await users.update(ann.id, {"active": False}, by_admin=True)
    with pytest.raises(PermissionDenied):  # refused: nothing written, nothing announced
        await users.update(ann.id, {"active": True}, by_admin=False)
    assert announced(repository) == [(ann.id, True, 1), (ann.id, False, 3)]


async def test_sign_up_normalises_email_and_name(users: Users) -> None:
    user = await users.create("  Ann.Lee@Example.COM ", "  Ann  ")
    assert (user.email, user.display_name, user.active) == ("ann.lee@example.com", "Ann", True)
    assert user.id.startswith("usr_")
    assert (await users.get(user.id)).email == "ann.lee@example.com"


async def test_an_email_is_taken_once_whatever_its_case(users: Users) -> None:
    await users.create("ann@example.com", "Ann")
    with pytest.raises(AlreadyExists) as raised:
        await users.create("ANN@example.com", "Other Ann")
    assert raised.value.reason == "EMAIL_TAKEN"


async def test_changing_to_a_taken_email_is_refused_and_changes_nothing(users: Users) -> None:
    await users.create("ann@example.com", "Ann")
    bob = await users.create("bob@example.com", "Bob")
    with pytest.raises(AlreadyExists):
        await users.update(bob.id, {"email": "Ann@Example.com"}, by_admin=False)
    assert (await users.get(bob.id)).email == "bob@example.com"


async def test_only_an_admin_changes_the_active_flag(users: Users) -> None:
    ann = await users.create("ann@example.com", "Ann")
    with pytest.raises(PermissionDenied) as raised:
        await users.update(ann.id, {"active": False, "display_name": "A"}, by_admin=False)
    assert raised.value.reason == "ADMIN_ONLY"
    assert (await users.get(ann.id)).display_name == "Ann"  # nothing of the request written

    renamed = await users.update(ann.id, {"display_name": "  Annie "}, by_admin=False)
    assert renamed.display_name == "Annie"
    assert renamed.update_time >= ann.update_time
    await users.update(ann.id, {"active": False}, by_admin=True)
    with pytest.raises(FailedPrecondition) as inactive:
        await users.require_active(ann.id)
    assert inactive.value.reason == "USER_INACTIVE"


async def test_unknown_users_are_not_found(users: Users) -> None:
    with pytest.raises(NotFound):
        await users.get("usr_missing")
    with pytest.raises(NotFound):
        await users.update("usr_missing", {"display_name": "X"}, by_admin=True)
    with pytest.raises(NotFound):
        await users.require_active("usr_missing")


async def test_pages_walk_every_user_once_in_creation_order(users: Users) -> None:
    created = [await users.create(f"u{i}@example.com", f"U{i}") for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page, token = await users.list_page(2, token)
        assert len(page) <= 2
        seen += [user.id for user in page]
        if not token:
            break
    assert seen == sorted(user.id for user in created)
