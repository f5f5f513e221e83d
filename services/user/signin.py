"""Built-in sign-in: passwords (argon2id), access tokens signed with the mesh's key,
rotating refresh tokens with reuse detection, and a throttle on failed attempts.

- Passwords are stored only as argon2id hashes (argon2-cffi's defaults, RFC 9106's
  low-memory profile), hashed and checked in a worker thread so the event loop goes
  on serving. A password is never logged, returned or put in an error.
- A wrong password and an unknown email are the same answer (UNAUTHENTICATED,
  INVALID_CREDENTIALS, the same message) after the same work: an unknown email is
  checked against a dummy hash.
- Access tokens are ES256 JWTs signed with the mesh's private key (the kid the JWKS
  names it by), living ACCESS_TOKEN_TTL (at most 15 minutes): every service verifies
  them like any other token. They carry the admin role when the account's email is in
  ADMIN_EMAILS, no role otherwise.
- A refresh token is 32 random bytes (URL-safe text), stored as its sha256 in a
  family (one sign-in). Refresh uses it up and issues its successor in the family;
  presenting a used one again means it was copied: the whole family is revoked
  (REFRESH_TOKEN_REUSED), the thief's and the owner's tokens alike. SignOut revokes
  the family.
- Failed sign-ins are counted in the database (so every replica sees them) per email
  and per client address; past the limit within the window, sign-ins are refused
  with RESOURCE_EXHAUSTED (TOO_MANY_ATTEMPTS) and a RetryInfo, without checking the
  password, until the oldest failure leaves the window. A success clears the email's
  count.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.common.auth import mint
from services.common.config import SignInSettings
from services.common.errors import FailedPrecondition, ResourceExhausted, Unauthenticated
from services.common.times import as_utc, utcnow
from services.user.convert import user_status_changed
from services.user.models import EmailTaken, RefreshTokenRow, UserRow
from services.user.repository import CredentialRepository, UserRepository
from services.user.usecases import email_taken, new_user, normalised_email

log = logging.getLogger("shop.signin")

Clock = Callable[[], datetime]

INVALID_CREDENTIALS = "the email or the password is wrong"


def digest(refresh_token: str) -> str:
    """How a refresh token is stored and looked up: its sha256 (hex)."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def _key(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


class Passwords:
    """argon2id hashes, computed off the event loop."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        # What an unknown email is checked against, so that it costs what a known one does.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(24))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when `password` matches `stored`; None (no such user) is never a match,
        after the same work as a mismatch."""
        try:
            await asyncio.to_thread(self._hasher.verify, stored or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return stored is not None

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)


@dataclass(frozen=True)
class TokenSigner:
    """Signs access tokens with the mesh's private key, under the kid the JWKS names."""

    private_pem: bytes
    kid: str
    issuer: str
    audience: str
    ttl: int

    def sign(self, user_id: str, roles: tuple[str, ...], now: datetime) -> str:
        return mint(
            self.private_pem,
            user_id,
            roles,
            issuer=self.issuer,
            audience=self.audience,
            ttl=self.ttl,
            now=now.timestamp(),
            kid=self.kid,
        )


@dataclass(frozen=True)
class IssuedTokens:
    user_id: str
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class SignIns:
    def __init__(
        self,
        users: UserRepository,
        credentials: CredentialRepository,
        passwords: Passwords,
        signer: TokenSigner | None,
        settings: SignInSettings,
        clock: Clock = utcnow,
    ) -> None:
        self._users = users
        self._credentials = credentials
        self._passwords = passwords
        self._signer = signer
        self._settings = settings
        self._clock = clock

    def _require_signer(self) -> TokenSigner:
        if self._signer is None:
            raise FailedPrecondition(
                "built-in sign-in is off: set JWT_PRIVATE_KEY_FILE to the key the JWKS publishes",
                "SIGN_IN_DISABLED",
            )
        return self._signer

    async def sign_up(
        self, email: str, display_name: str, password: str
    ) -> tuple[UserRow, IssuedTokens]:
        self._require_signer()
        user = new_user(email, display_name)
        password_hash = await self._passwords.hash(password)
        try:
            await self._credentials.add_user(user, password_hash, user_status_changed)
        except EmailTaken:
            raise email_taken(user.email) from None
        return user, await self._issue(user, secrets.token_hex(16), self._clock())

    async def sign_in(self, email: str, password: str, client_address: str = "") -> IssuedTokens:
        self._require_signer()
        now = self._clock()
        email = normalised_email(email)
        limits = [(_key("email", email), self._settings.max_failures)]
        if client_address:
            limits.append(
                (_key("address", client_address), self._settings.max_failures_per_address)
            )
        await self._check_throttle(limits, now)
        found = await self._credentials.by_email(email)
        if not await self._passwords.verify(found[1] if found else None, password):
            window = timedelta(seconds=self._settings.failure_window)
            await self._credentials.add_failure([key for key, _ in limits], now, now - window)
            raise Unauthenticated(INVALID_CREDENTIALS, "INVALID_CREDENTIALS")
        assert found is not None
        user, stored = found
        await self._credentials.clear_failures(limits[0][0])
        if self._passwords.needs_rehash(stored):
            await self._credentials.set_password_hash(
                user.id, await self._passwords.hash(password), now
            )
        _require_active(user)
        return await self._issue(user, secrets.token_hex(16), now)

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        self._require_signer()
        now = self._clock()
        token = await self._usable(refresh_token, now)
        user = await self._users.get(token.user_id)
        if user is None or not user.active:
            await self._credentials.revoke_family(token.family_id, now)
            raise FailedPrecondition(
                f"user {token.user_id} is not active", "USER_INACTIVE", user_id=token.user_id
            )
        text, successor = self._new_refresh(token.user_id, token.family_id, now)
        if not await self._credentials.use_refresh(token.token_hash, now, successor):
            # Another Refresh with the same token won the race: a copy, or a retry.
            await self._usable(refresh_token, now)  # says which (and revokes on reuse)
            raise Unauthenticated("the refresh token is not valid", "REFRESH_TOKEN_INVALID")
        return self._tokens(user, text, now)

    async def sign_out(self, refresh_token: str) -> None:
        token = await self._credentials.refresh_token(digest(refresh_token))
        if token is None:
            raise Unauthenticated("the refresh token is not valid", "REFRESH_TOKEN_INVALID")
        await self._credentials.revoke_family(token.family_id, self._clock())

    async def _usable(self, refresh_token: str, now: datetime) -> RefreshTokenRow:
        token = await self._credentials.refresh_token(digest(refresh_token))
        if token is None:
            raise Unauthenticated("the refresh token is not valid", "REFRESH_TOKEN_INVALID")
        if token.revoked_time is not None:
            raise Unauthenticated("the refresh token has been revoked", "REFRESH_TOKEN_REVOKED")
        if token.used_time is not None:
            await self._credentials.revoke_family(token.family_id, now)
            log.warning(
                "a used refresh token was presented again: its sign-in is revoked",
                extra={"user_id": token.user_id},
            )
            raise Unauthenticated(
                "the refresh token was used before: every token of this sign-in is revoked",
                "REFRESH_TOKEN_REUSED",
            )
        if as_utc(token.expire_time) <= now:
            raise Unauthenticated("the refresh token has expired", "REFRESH_TOKEN_EXPIRED")
        return token

    async def _check_throttle(self, limits: list[tuple[str, int]], now: datetime) -> None:
        window = timedelta(seconds=self._settings.failure_window)
        for key, limit in limits:
            times = await self._credentials.failure_times(key, now - window)
            if len(times) >= limit:
                # Allowed again when enough of them have left the window.
                wait = times[len(times) - limit] + window - now
                raise ResourceExhausted(
                    "too many failed sign-ins; try again later",
                    "TOO_MANY_ATTEMPTS",
                    wait.total_seconds(),
                )

    def _new_refresh(
        self, user_id: str, family_id: str, now: datetime
    ) -> tuple[str, RefreshTokenRow]:
        text = secrets.token_urlsafe(32)
        row = RefreshTokenRow(
            token_hash=digest(text),
            family_id=family_id,
            user_id=user_id,
            create_time=now,
            expire_time=now + timedelta(seconds=self._settings.refresh_token_ttl),
            used_time=None,
            revoked_time=None,
        )
        return text, row

    async def _issue(self, user: UserRow, family_id: str, now: datetime) -> IssuedTokens:
        text, row = self._new_refresh(user.id, family_id, now)
        await self._credentials.add_refresh(row)
        return self._tokens(user, text, now)

    def _tokens(self, user: UserRow, refresh_text: str, now: datetime) -> IssuedTokens:
        signer = self._require_signer()
        admin = normalised_email(user.email) in self._settings.admin_emails
        return IssuedTokens(
            user_id=user.id,
            access_token=signer.sign(user.id, ("admin",) if admin else (), now),
            expires_in=signer.ttl,
            refresh_token=refresh_text,
            refresh_expires_in=self._settings.refresh_token_ttl,
        )


def _require_active(user: UserRow) -> None:
    if not user.active:
        raise FailedPrecondition(
            f"user {user.id} is not active", "USER_INACTIVE", [f"user:{user.id}"], user_id=user.id
        )
