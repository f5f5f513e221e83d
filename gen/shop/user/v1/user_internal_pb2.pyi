import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from shop.common.v1 import access_pb2 as _access_pb2
from shop.common.v1 import feed_pb2 as _feed_pb2
from shop.user.v1 import events_pb2 as _events_pb2
from shop.user.v1 import user_pb2 as _user_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValidateUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ValidateUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: _user_pb2.User
    def __init__(self, user: _Optional[_Union[_user_pb2.User, _Mapping]] = ...) -> None: ...

class StreamUserEventsRequest(_message.Message):
    __slots__ = ("after_sequence", "heartbeat_interval")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, after_sequence: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamUserEventsResponse(_message.Message):
    __slots__ = ("sequence", "headers", "user_status_changed", "heartbeat")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    USER_STATUS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    headers: _containers.ScalarMap[str, str]
    user_status_changed: _events_pb2.UserStatusChanged
    heartbeat: _feed_pb2.FeedHeartbeat
    def __init__(self, sequence: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., user_status_changed: _Optional[_Union[_events_pb2.UserStatusChanged, _Mapping]] = ..., heartbeat: _Optional[_Union[_feed_pb2.FeedHeartbeat, _Mapping]] = ...) -> None: ...
