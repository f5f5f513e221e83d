"""The user service's one place where stored users become protos (replies, events, the
feed's messages)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.events.envelope import Event
from services.common.events.feed import Heartbeat, feed_message, outbox_event, subjects
from services.common.ids import new_id
from services.common.times import to_timestamp
from services.user.models import UserRow
from shop.user.v1 import auth_pb2, events_pb2, user_internal_pb2, user_pb2

if TYPE_CHECKING:  # signin builds users' events with this module
    from services.user.signin import IssuedTokens

# Every user event is a field of the user feed's `event` oneof, which names its subject.
SUBJECTS = subjects(user_internal_pb2.StreamUserEventsResponse)


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


def user_status_changed(user: UserRow) -> Event:
    """The UserStatusChanged event of a user just created, activated or deactivated."""
    return outbox_event(
        events_pb2.UserStatusChanged(
            event_id=new_id("evt"),
            occurred_at=to_timestamp(user.update_time),
            user_id=user.id,
            active=user.active,
            version=user.version,
        ),
        SUBJECTS,
    )


def to_feed_message(event: Event | Heartbeat) -> user_internal_pb2.StreamUserEventsResponse:
    """An outbox event (or a heartbeat) as the feed streams it."""
    return feed_message(user_internal_pb2.StreamUserEventsResponse, event)
