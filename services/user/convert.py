"""The user service's one place where stored users become protos."""

from __future__ import annotations

from services.common.times import to_timestamp
from services.user.models import UserRow
from shop.user.v1 import user_pb2


def user_to_proto(user: UserRow) -> user_pb2.User:
    return user_pb2.User(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        active=user.active,
        create_time=to_timestamp(user.create_time),
        update_time=to_timestamp(user.update_time),
    )
