"""Built-in sign-in over real gRPC on loopback, on SQLite and on PostgreSQL: the tables
of migration 0002, the rotation, the throttle, and access tokens the other services'
verifiers accept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import text

from services.common.auth import Verifier
from services.common.server import RunningService
from services.user.wiring import SPEC
from shop.user.v1 import auth_pb2, auth_pb2_grpc, user_pb2, user_pb2_grpc
from tests import tokens
from tests.conftest import running
from tests.rpc import detail, fails, reason_of, violated_fields

PASSWORD = "correct horse battery"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@dataclass
class Stubs:
    service: RunningService[object]
    auth: auth_pb2_grpc.AuthServiceAsyncStub
    users: user_pb2_grpc.UserServiceAsyncStub

    async def sign_up(self, email: str = "ann@example.com") -> auth_pb2.SignUpResponse:
        return await self.auth.SignUp(
            auth_pb2.SignUpRequest(email=email, display_name="Ann", password=PASSWORD)
        )

    async def sign_in(
        self, email: str = "ann@example.com", password: str = PASSWORD
    ) -> auth_pb2.SignInResponse:
        return await self.auth.SignIn(auth_pb2.SignInRequest(email=email, password=password))

    async def refresh(self, token: str) -> auth_pb2.RefreshResponse:
        return await self.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=token))

    async def count(self, table: str) -> int:
        async with self.service.platform.db.read() as session:
            return int((await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


@pytest.fixture
async def stubs(database_url: str, tmp_path: Path) -> AsyncIterator[Stubs]:
    async with running(SPEC, database_url, tmp_path) as (service, channel):
        yield Stubs(
            service,
            auth_pb2_grpc.AuthServiceStub(channel),
            user_pb2_grpc.UserServiceStub(channel),
        )


async def test_sign_up_sign_in_and_use_the_token_elsewhere(stubs: Stubs) -> None:
    signed_up = await stubs.sign_up("Ann@Example.com")
    assert signed_up.user.email == "ann@example.com"
    signed_in = await stubs.sign_in("ann@example.com")
    assert signed_in.user_id == signed_up.user.id
    assert 0 < signed_in.tokens.expires_in <= 900
    assert signed_in.tokens.refresh_expires_in == 30 * 24 * 3600
    # Another service's verifier (same JWKS) accepts it.
    caller = Verifier(tokens.SETTINGS).verify(signed_in.tokens.access_token)
    assert caller.user_id == signed_up.user.id and not caller.is_admin
    # And so does this one, as the bearer of an ordinary call: the user reads itself...
    bearer = (("authorization", f"Bearer {signed_in.tokens.access_token}"),)
    fetched = await stubs.users.GetUser(
        user_pb2.GetUserRequest(id=signed_up.user.id), metadata=bearer
    )
    assert fetched.user.id == signed_up.user.id
    # ...and nobody else, and is no admin.
    await fails(
        stubs.users.GetUser(user_pb2.GetUserRequest(id="usr_other"), metadata=bearer),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await fails(
        stubs.users.ListUsers(user_pb2.ListUsersRequest(), metadata=bearer),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # The password is stored as an argon2id hash, the refresh tokens as digests.
    async with stubs.service.platform.db.read() as session:
        stored = (await session.execute(text("SELECT password_hash FROM credentials"))).scalar_one()
        hashes = (await session.execute(text("SELECT token_hash FROM refresh_tokens"))).scalars()
        token_hashes = set(hashes.all())
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert signed_in.tokens.refresh_token not in token_hashes and len(token_hashes) == 2
    # CreateUser is unchanged: a user without a password, who cannot sign in.
    await stubs.users.CreateUser(
        user_pb2.CreateUserRequest(email="nopass@example.com", display_name="N")
    )
    error = await fails(stubs.sign_in("nopass@example.com"), UNAUTHENTICATED)
    assert reason_of(error) == "INVALID_CREDENTIALS"


async def test_wrong_password_and_unknown_email_answer_alike(stubs: Stubs) -> None:
    await stubs.sign_up()
    wrong = await fails(stubs.sign_in(password="not the password"), UNAUTHENTICATED)
    unknown = await fails(stubs.sign_in("bob@example.com"), UNAUTHENTICATED)
    assert (reason_of(wrong), wrong.details()) == (reason_of(unknown), unknown.details())
    assert reason_of(wrong) == "INVALID_CREDENTIALS"
    assert "not the password" not in str(wrong.details())


async def test_rotation_reuse_and_sign_out(stubs: Stubs) -> None:
    await stubs.sign_up()
    first = (await stubs.sign_in()).tokens
    second = (await stubs.refresh(first.refresh_token)).tokens
    third = (await stubs.refresh(second.refresh_token)).tokens
    Verifier(tokens.SETTINGS).verify(third.access_token)

    reused = await fails(stubs.refresh(first.refresh_token), UNAUTHENTICATED)
    assert reason_of(reused) == "REFRESH_TOKEN_REUSED"
    revoked = await fails(stubs.refresh(third.refresh_token), UNAUTHENTICATED)
    assert reason_of(revoked) == "REFRESH_TOKEN_REVOKED"

    tampered = await fails(stubs.refresh(third.refresh_token[::-1]), UNAUTHENTICATED)
    assert reason_of(tampered) == "REFRESH_TOKEN_INVALID"

    other = (await stubs.sign_in()).tokens
    await stubs.auth.SignOut(auth_pb2.SignOutRequest(refresh_token=other.refresh_token))
    signed_out = await fails(stubs.refresh(other.refresh_token), UNAUTHENTICATED)
    assert reason_of(signed_out) == "REFRESH_TOKEN_REVOKED"


async def test_failures_are_throttled(stubs: Stubs) -> None:
    await stubs.sign_up()
    for _ in range(5):
        await fails(stubs.sign_in(password="not the password"), UNAUTHENTICATED)
    assert await stubs.count("sign_in_failures") == 10  # under the email and the address
    error = await fails(stubs.sign_in(), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert reason_of(error) == "TOO_MANY_ATTEMPTS"
    retry = detail(error, error_details_pb2.RetryInfo)
    assert 800 < retry.retry_delay.seconds <= 900
    # Another account is not locked out by Ann's.
    await stubs.sign_up("bob@example.com")
    await stubs.sign_in("bob@example.com")


@pytest.mark.parametrize(
    ("request_", "bad_fields"),
    [
        (auth_pb2.SignUpRequest(email="ann", display_name="Ann", password=PASSWORD), {"email"}),
        (
            auth_pb2.SignUpRequest(email="a@b.io", display_name=" ", password=PASSWORD),
            {"display_name"},
        ),
        (
            auth_pb2.SignUpRequest(email="a@b.io", display_name="Ann", password="short"),
            {"password"},
        ),
        (
            auth_pb2.SignUpRequest(email="a@b.io", display_name="Ann", password="x" * 129),
            {"password"},
        ),
        (auth_pb2.SignUpRequest(), {"email", "display_name", "password"}),
        (auth_pb2.SignInRequest(email="a@b.io", password="x" * 129), {"password"}),
        (auth_pb2.SignInRequest(email="nope", password=PASSWORD), {"email"}),
        (auth_pb2.RefreshRequest(refresh_token=""), {"refresh_token"}),
        (auth_pb2.RefreshRequest(refresh_token="x" * 257), {"refresh_token"}),
        (auth_pb2.SignOutRequest(), {"refresh_token"}),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stubs: Stubs, request_: object, bad_fields: set[str]
) -> None:
    method = {
        auth_pb2.SignUpRequest: stubs.auth.SignUp,
        auth_pb2.SignInRequest: stubs.auth.SignIn,
        auth_pb2.RefreshRequest: stubs.auth.Refresh,
        auth_pb2.SignOutRequest: stubs.auth.SignOut,
    }[type(request_)]
    error = await fails(method(request_), grpc.StatusCode.INVALID_ARGUMENT)  # type: ignore[operator]
    assert violated_fields(error) == bad_fields
    # The value is never in the message: the field and the rule only.
    assert "x" * 129 not in (error.details() or "")
    assert await stubs.count("users") == 0
