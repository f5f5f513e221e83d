"""The user service's tables (its own database; no other service reads them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, new_metadata


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


class EmailTaken(Exception):
    """Another user has this email (the database's unique constraint said so)."""

    def __init__(self, email: str) -> None:
        super().__init__(email)
        self.email = email
