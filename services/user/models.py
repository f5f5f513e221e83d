"""The user service's tables (its own database; no other service reads them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, new_metadata
from services.common.events.outbox import OutboxMixin


class UserBase(Base):
    __abstract__ = True
    metadata = new_metadata()


class UserRow(UserBase):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool]
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Grows with every change (1 when created): orders the user's events for consumers.
    version: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")


class CredentialRow(UserBase):
    """A user's password, as an argon2id hash (the PHC string: parameters, salt, hash)."""

    __tablename__ = "credentials"

    user_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    password_hash: Mapped[str] = mapped_column(String(255))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RefreshTokenRow(UserBase):
    """One refresh token, by the sha256 of its text (the text itself is never stored).
    A sign-in is a family: each Refresh uses one up and adds its successor."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index("ix_refresh_tokens_family_id", "family_id"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(64), ForeignKey("users.id", ondelete="CASCADE"))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set when a Refresh exchanged it; presenting it again revokes the family.
    used_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # Set on every token of a family that was signed out or caught reused.
    revoked_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class SignInFailureRow(UserBase):
    """One failed sign-in, for the throttle: `key` is the sha256 of "email:<email>" or
    "address:<client address>" (neither is stored in the clear)."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index("ix_sign_in_failures_key_fail_time", "key", "fail_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64))
    fail_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboxRow(UserBase, OutboxMixin):
    """The user service's events (UserStatusChanged), written with the change."""

    __tablename__ = "outbox"


class EmailTaken(Exception):
    """Another user has this email (the database's unique constraint said so)."""

    def __init__(self, email: str) -> None:
        super().__init__(email)
        self.email = email
