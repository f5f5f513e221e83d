"""The built-in sign-in's rules on in-memory repositories: passwords, token rotation and
reuse, sign-out, the throttle (time driven by a clock function, no sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher

from services.common.auth import Verifier, signing_kid
from services.common.config import SignInSettings
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Unauthenticated,
)
from services.user.convert import user_status_changed
from services.user.signin import IssuedTokens, Passwords, SignIns, TokenSigner, digest
from shop.user.v1 import events_pb2
from tests import tokens
from tests.fakes.credentials import InMemoryCredentials
from tests.fakes.user import InMemoryUsers

PASSWORD = "correct horse battery"
# Cheap parameters: the rules under test do not depend on the cost.
PASSWORDS = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def signer(ttl: int = 900) -> TokenSigner:
    pem = (tokens.KEYS / "private.pem").read_bytes()
    return TokenSigner(pem, signing_kid(pem, tokens.SETTINGS), "shop-dev", "shop", ttl)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> InMemoryCredentials:
    return InMemoryCredentials(InMemoryUsers())


@pytest.fixture
def sign_ins(store: InMemoryCredentials, clock: Clock) -> SignIns:
    settings = SignInSettings(max_failures=3, max_failures_per_address=5, failure_window=600)
    return SignIns(store.users, store, PASSWORDS, signer(), settings, clock)


async def reason(call: object, kind: type[Exception] = Unauthenticated) -> str:
    with pytest.raises(kind) as raised:
        await call  # type: ignore[misc]
    return str(raised.value.reason)  # type: ignore[attr-defined]


async def test_sign_up_then_sign_in_gives_tokens_every_service_accepts(
    sign_ins: SignIns, store: InMemoryCredentials
) -> None:
    user, first = await sign_ins.sign_up(" Ann@Example.com ", " Ann ", PASSWORD)
    assert (user.email, user.display_name) == ("ann@example.com", "Ann")
    stored = store.passwords[user.id]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    signed_in = await sign_ins.sign_in("ANN@example.com", PASSWORD)
    assert signed_in.user_id == user.id
    assert signed_in.expires_in == 900
    assert signed_in.refresh_token != first.refresh_token
    # Only the refresh token's digest is stored.
    assert digest(signed_in.refresh_token) in store.tokens
    assert signed_in.refresh_token not in store.tokens
    verifier = Verifier(tokens.SETTINGS)
    for issued in (first, signed_in):
        caller = verifier.verify(issued.access_token)
        assert (caller.user_id, caller.roles) == (user.id, frozenset())
    assert await reason(sign_ins.sign_up("ann@example.com", "Ann", PASSWORD), AlreadyExists) == (
        "EMAIL_TAKEN"
    )


async def test_wrong_password_and_unknown_email_are_the_same_answer(sign_ins: SignIns) -> None:
    await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    errors = []
    for email, password in (("ann@example.com", "wrong password!"), ("bob@example.com", PASSWORD)):
        with pytest.raises(Unauthenticated) as raised:
            await sign_ins.sign_in(email, password)
        errors.append((raised.value.reason, raised.value.message, raised.value.code))
        assert password not in raised.value.message
    assert errors[0] == errors[1]
    assert errors[0][0] == "INVALID_CREDENTIALS"


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(sign_ins: SignIns) -> None:
    await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    first = await sign_ins.sign_in("ann@example.com", PASSWORD)
    other = await sign_ins.sign_in("ann@example.com", PASSWORD)  # another device
    second = await sign_ins.refresh(first.refresh_token)
    third = await sign_ins.refresh(second.refresh_token)
    assert len({first.refresh_token, second.refresh_token, third.refresh_token}) == 3

    # The first token again: stolen. Its whole family stops working, the newest too.
    assert await reason(sign_ins.refresh(first.refresh_token)) == "REFRESH_TOKEN_REUSED"
    assert await reason(sign_ins.refresh(third.refresh_token)) == "REFRESH_TOKEN_REVOKED"
    assert await reason(sign_ins.refresh(second.refresh_token)) == "REFRESH_TOKEN_REVOKED"
    # Another sign-in is another family: untouched.
    assert (await sign_ins.refresh(other.refresh_token)).user_id == other.user_id


async def test_tampered_and_expired_refresh_tokens_are_refused(
    sign_ins: SignIns, clock: Clock
) -> None:
    await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    issued = await sign_ins.sign_in("ann@example.com", PASSWORD)
    token = issued.refresh_token
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert await reason(sign_ins.refresh(tampered)) == "REFRESH_TOKEN_INVALID"
    assert await reason(sign_ins.refresh("")) == "REFRESH_TOKEN_INVALID"
    clock.advance(SignInSettings().refresh_token_ttl + 1)
    assert await reason(sign_ins.refresh(token)) == "REFRESH_TOKEN_EXPIRED"


async def test_an_expired_access_token_is_refused_by_the_verifier(
    store: InMemoryCredentials, clock: Clock
) -> None:
    sign_ins = SignIns(store.users, store, PASSWORDS, signer(ttl=60), SignInSettings(), clock)
    clock.advance(-3600)  # signed an hour ago, for a minute
    _, issued = await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    with pytest.raises(Unauthenticated) as raised:
        Verifier(tokens.SETTINGS).verify(issued.access_token)
    assert raised.value.reason == "TOKEN_EXPIRED"


async def test_sign_out_revokes_the_sign_in(sign_ins: SignIns) -> None:
    await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    issued = await sign_ins.sign_in("ann@example.com", PASSWORD)
    newer = await sign_ins.refresh(issued.refresh_token)
    await sign_ins.sign_out(newer.refresh_token)
    assert await reason(sign_ins.refresh(newer.refresh_token)) == "REFRESH_TOKEN_REVOKED"
    await sign_ins.sign_out(newer.refresh_token)  # twice: nothing more to do
    assert await reason(sign_ins.sign_out("made-up")) == "REFRESH_TOKEN_INVALID"


async def test_failures_are_throttled_per_email_and_forgotten_after_the_window(
    sign_ins: SignIns, clock: Clock
) -> None:
    await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    for _ in range(3):
        assert await reason(sign_ins.sign_in("ann@example.com", "wrong password!")) == (
            "INVALID_CREDENTIALS"
        )
        clock.advance(60)
    # The limit is reached: even the right password waits, and is told how long.
    with pytest.raises(ResourceExhausted) as raised:
        await sign_ins.sign_in("Ann@example.com", PASSWORD)
    assert raised.value.reason == "TOO_MANY_ATTEMPTS"
    assert raised.value.retry_after == 600 - 180
    # Someone else is not slowed down.
    await sign_ins.sign_up("bob@example.com", "Bob", PASSWORD)
    await sign_ins.sign_in("bob@example.com", PASSWORD)
    # Once the oldest failure leaves the window, one more attempt is allowed.
    clock.advance(600 - 180 + 1)
    issued = await sign_ins.sign_in("ann@example.com", PASSWORD)
    assert isinstance(issued, IssuedTokens)
    # A success clears the email's count.
    for _ in range(2):
        await reason(sign_ins.sign_in("ann@example.com", "wrong password!"))
    await sign_ins.sign_in("ann@example.com", PASSWORD)


async def test_failures_are_throttled_per_client_address(sign_ins: SignIns) -> None:
    for number in range(5):  # five accounts, one address: under each email's limit
        await reason(sign_ins.sign_in(f"u{number}@example.com", PASSWORD, "203.0.113.9"))
    await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    assert (
        await reason(
            sign_ins.sign_in("ann@example.com", PASSWORD, "203.0.113.9"), ResourceExhausted
        )
        == "TOO_MANY_ATTEMPTS"
    )
    await sign_ins.sign_in("ann@example.com", PASSWORD, "198.51.100.7")  # another address


async def test_an_inactive_user_is_signed_in_no_more(
    sign_ins: SignIns, store: InMemoryCredentials
) -> None:
    user, issued = await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    await store.users.update(user.id, {"active": False}, user_status_changed)
    assert await reason(sign_ins.sign_in("ann@example.com", PASSWORD), FailedPrecondition) == (
        "USER_INACTIVE"
    )
    assert await reason(sign_ins.refresh(issued.refresh_token), FailedPrecondition) == (
        "USER_INACTIVE"
    )
    assert await reason(sign_ins.refresh(issued.refresh_token)) == "REFRESH_TOKEN_REVOKED"


async def test_without_a_signing_key_sign_in_is_off(store: InMemoryCredentials) -> None:
    sign_ins = SignIns(store.users, store, PASSWORDS, None, SignInSettings())
    assert await reason(sign_ins.sign_in("ann@example.com", PASSWORD), FailedPrecondition) == (
        "SIGN_IN_DISABLED"
    )


async def test_accounts_listed_in_admin_emails_get_the_admin_role(
    store: InMemoryCredentials, clock: Clock
) -> None:
    settings = SignInSettings(admin_emails=frozenset({"boss@example.com"}))
    sign_ins = SignIns(store.users, store, PASSWORDS, signer(), settings, clock)
    verifier = Verifier(tokens.SETTINGS)
    _, boss_tokens = await sign_ins.sign_up("Boss@Example.com", "Boss", PASSWORD)
    _, ann_tokens = await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    signed_in = await sign_ins.sign_in("BOSS@example.com", PASSWORD)
    refreshed = await sign_ins.refresh(signed_in.refresh_token)
    for issued in (boss_tokens, signed_in, refreshed):
        assert verifier.verify(issued.access_token).roles == frozenset({"admin"})
    assert verifier.verify(ann_tokens.access_token).roles == frozenset()
    assert verifier.verify(
        (await sign_ins.refresh(ann_tokens.refresh_token)).access_token
    ).roles == (frozenset())


async def test_a_user_signed_up_is_announced_active(
    sign_ins: SignIns, store: InMemoryCredentials
) -> None:
    user, _ = await sign_ins.sign_up("ann@example.com", "Ann", PASSWORD)
    [event] = store.users.events
    announced = events_pb2.UserStatusChanged.FromString(event.payload)
    assert (event.subject, announced.user_id, announced.active, announced.version) == (
        "user.status.changed",
        user.id,
        True,
        1,
    )
    # A sign-up refused (the email taken) announces nothing.
    await reason(sign_ins.sign_up("ANN@example.com", "Ann", PASSWORD), AlreadyExists)
    assert len(store.users.events) == 1
