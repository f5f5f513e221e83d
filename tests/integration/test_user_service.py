"""The user service over real gRPC on loopback, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from services.user.wiring import SPEC
from shop.user.v1 import user_internal_pb2, user_internal_pb2_grpc, user_pb2, user_pb2_grpc
from tests.conftest import running
from tests.rpc import detail, fails, violated_fields

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Stubs:
    users: user_pb2_grpc.UserServiceAsyncStub
    internal: user_internal_pb2_grpc.UserInternalServiceAsyncStub

    async def create(self, email: str, name: str = "Ann") -> user_pb2.User:
        response = await self.users.CreateUser(
            user_pb2.CreateUserRequest(email=email, display_name=name)
        )
        return response.user

    async def all_users(self) -> list[user_pb2.User]:
        response = await self.users.ListUsers(user_pb2.ListUsersRequest(page_size=1000))
        return list(response.users)


@pytest.fixture
async def stubs(database_url: str, tmp_path: Path) -> AsyncIterator[Stubs]:
    async with running(SPEC, database_url, tmp_path) as (_, channel):
        yield Stubs(
            user_pb2_grpc.UserServiceStub(channel),
            user_internal_pb2_grpc.UserInternalServiceStub(channel),
        )


async def test_create_then_get_and_update(stubs: Stubs) -> None:
    created = await stubs.create("Ann.Lee@Example.COM", "  Ann Lee ")
    assert created.id.startswith("usr_") and len(created.id) == 30
    assert created.email == "ann.lee@example.com"
    assert created.display_name == "Ann Lee"
    assert created.active
    assert created.create_time.seconds > 0

    fetched = (await stubs.users.GetUser(user_pb2.GetUserRequest(id=created.id))).user
    assert fetched == created

    renamed = (
        await stubs.users.UpdateUser(
            user_pb2.UpdateUserRequest(
                user=user_pb2.User(id=created.id, display_name="Annie", email="ignored@x.io"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
    ).user
    assert renamed.display_name == "Annie"
    assert renamed.email == "ann.lee@example.com", "a field outside the mask must not change"
    assert renamed.update_time.ToDatetime() >= created.update_time.ToDatetime()

    # No mask: the fields given a non-default value change (AIP-134).
    moved = (
        await stubs.users.UpdateUser(
            user_pb2.UpdateUserRequest(user=user_pb2.User(id=created.id, email="new@example.com"))
        )
    ).user
    assert (moved.email, moved.display_name) == ("new@example.com", "Annie")


async def test_taken_email_is_already_exists_and_writes_nothing(stubs: Stubs) -> None:
    first = await stubs.create("taken@example.com")
    other = await stubs.create("other@example.com")
    error = await fails(stubs.create("TAKEN@example.com", "Bob"), grpc.StatusCode.ALREADY_EXISTS)
    assert detail(error, error_details_pb2.ErrorInfo).reason == "EMAIL_TAKEN"

    await fails(
        stubs.users.UpdateUser(
            user_pb2.UpdateUserRequest(
                user=user_pb2.User(id=other.id, email="taken@example.com"),
                update_mask=field_mask_pb2.FieldMask(paths=["email"]),
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert [u.email for u in await stubs.all_users()] == [first.email, other.email]


@pytest.mark.parametrize(
    ("email", "name", "bad_fields"),
    [
        ("not-an-email", "Ann", {"email"}),
        ("ann@", "Ann", {"email"}),
        ("", "Ann", {"email"}),
        ("ann@example.com", "", {"display_name"}),
        ("ann@example.com", "   ", {"display_name"}),
        ("ann@example.com", "x" * 101, {"display_name"}),
        ("nope", "", {"email", "display_name"}),
    ],
)
async def test_bad_sign_up_is_invalid_argument_and_writes_nothing(
    stubs: Stubs, email: str, name: str, bad_fields: set[str]
) -> None:
    error = await fails(stubs.create(email, name), INVALID)
    assert violated_fields(error) == bad_fields
    assert detail(error, error_details_pb2.ErrorInfo).reason == "INVALID_ARGUMENT"
    assert await stubs.all_users() == []


async def test_list_pages_through_every_user_once(stubs: Stubs) -> None:
    created = [(await stubs.create(f"u{i}@example.com")).id for i in range(5)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stubs.users.ListUsers(user_pb2.ListUsersRequest(page_size=2, page_token=token))
        seen += [u.id for u in page.users]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(created)
    assert pages == 3
    # Without page_size the default (50) applies: one page.
    everything = await stubs.users.ListUsers(user_pb2.ListUsersRequest())
    assert len(everything.users) == 5 and everything.next_page_token == ""


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (user_pb2.ListUsersRequest(page_size=0), "page_size"),
        (user_pb2.ListUsersRequest(page_size=10**6), "page_size"),
        (user_pb2.ListUsersRequest(page_size=-1), "page_size"),
        (user_pb2.ListUsersRequest(page_token="forged"), "page_token"),
        (user_pb2.ListUsersRequest(page_token="eyJrIjoidXNyX3oiLCJxIjoiIn0"), "page_token"),
        (user_pb2.ListUsersRequest(page_token="x" * 600), "page_token"),
    ],
    ids=[
        "page_size_0",
        "page_size_1e6",
        "page_size_negative",
        "garbage_token",
        "unsigned_token",
        "long_token",
    ],
)
async def test_bad_list_requests(
    stubs: Stubs, request_: user_pb2.ListUsersRequest, field: str
) -> None:
    await stubs.create("a@example.com")
    error = await fails(stubs.users.ListUsers(request_), INVALID)
    assert violated_fields(error) == {field}


async def test_tampered_page_token_is_refused(stubs: Stubs) -> None:
    for i in range(3):
        await stubs.create(f"t{i}@example.com")
    page = await stubs.users.ListUsers(user_pb2.ListUsersRequest(page_size=1))
    token = page.next_page_token
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    error = await fails(
        stubs.users.ListUsers(user_pb2.ListUsersRequest(page_size=1, page_token=tampered)), INVALID
    )
    assert violated_fields(error) == {"page_token"}


@pytest.mark.parametrize(
    ("update", "fields"),
    [
        (
            user_pb2.UpdateUserRequest(
                user=user_pb2.User(display_name="X"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            {"user.id"},
        ),
        (
            user_pb2.UpdateUserRequest(
                user=user_pb2.User(id="{id}", display_name="X"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name", "id"]),
            ),
            {"update_mask"},
        ),
        (
            user_pb2.UpdateUserRequest(
                user=user_pb2.User(id="{id}"),
                update_mask=field_mask_pb2.FieldMask(paths=["create_time"]),
            ),
            {"update_mask"},
        ),
        (
            user_pb2.UpdateUserRequest(
                user=user_pb2.User(id="{id}", display_name=""),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            {"user.display_name"},
        ),
        (
            user_pb2.UpdateUserRequest(
                user=user_pb2.User(id="{id}", email="bad"),
                update_mask=field_mask_pb2.FieldMask(paths=["email"]),
            ),
            {"user.email"},
        ),
        (user_pb2.UpdateUserRequest(user=user_pb2.User(id="{id}")), {"update_mask"}),
        (user_pb2.UpdateUserRequest(), {"user"}),
    ],
    ids=[
        "no_id",
        "mask_id",
        "mask_output_only",
        "empty_name",
        "bad_email",
        "nothing_to_update",
        "no_user",
    ],
)
async def test_bad_updates_change_nothing(
    stubs: Stubs, update: user_pb2.UpdateUserRequest, fields: set[str]
) -> None:
    user = await stubs.create("keep@example.com", "Keep")
    if update.user.id == "{id}":
        update.user.id = user.id
    error = await fails(stubs.users.UpdateUser(update), INVALID)
    assert violated_fields(error) == fields
    assert await stubs.all_users() == [user]


async def test_unknown_ids_are_not_found(stubs: Stubs) -> None:
    error = await fails(
        stubs.users.GetUser(user_pb2.GetUserRequest(id="usr_unknown")), grpc.StatusCode.NOT_FOUND
    )
    info = detail(error, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == ("user", "usr_unknown")
    await fails(
        stubs.users.UpdateUser(
            user_pb2.UpdateUserRequest(
                user=user_pb2.User(id="usr_unknown", display_name="X"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    error = await fails(stubs.users.GetUser(user_pb2.GetUserRequest(id="")), INVALID)
    assert violated_fields(error) == {"id"}
    assert await stubs.all_users() == []


async def test_validate_user_checks_existence_and_activity(stubs: Stubs) -> None:
    user = await stubs.create("active@example.com")
    ok = await stubs.internal.ValidateUser(user_internal_pb2.ValidateUserRequest(user_id=user.id))
    assert ok.user.id == user.id and ok.user.active

    await stubs.users.UpdateUser(
        user_pb2.UpdateUserRequest(
            user=user_pb2.User(id=user.id, active=False),
            update_mask=field_mask_pb2.FieldMask(paths=["active"]),
        )
    )
    error = await fails(
        stubs.internal.ValidateUser(user_internal_pb2.ValidateUserRequest(user_id=user.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert detail(error, error_details_pb2.ErrorInfo).reason == "USER_INACTIVE"
    await fails(
        stubs.internal.ValidateUser(user_internal_pb2.ValidateUserRequest(user_id="usr_missing")),
        grpc.StatusCode.NOT_FOUND,
    )
