"""The user service's one place where stored users become protos."""

from __future__ import annotations

from services.common.times import to_timestamp
from services.user.models import UserRow
from services.user.signin import IssuedTokens
from shop.user.v1 import auth_pb2, user_pb2


def user_to_proto(user: UserRow) -> user_pb2.User:
    return user_pb2.User(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        active=user.active,
        create_time=to_timestamp(user.create_time),
        update_time=to_timestamp(user.update_time),
    )


def tokens_to_proto(tokens: IssuedTokens) -> auth_pb2.Tokens:
    return auth_pb2.Tokens(
        access_token=tokens.access_token,
        expires_in=tokens.expires_in,
        refresh_token=tokens.refresh_token,
        refresh_expires_in=tokens.refresh_expires_in,
    )
