"""UTC datetimes for the database and their google.protobuf.Timestamp form."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp
