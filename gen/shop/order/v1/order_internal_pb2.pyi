import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from shop.common.v1 import access_pb2 as _access_pb2
from shop.common.v1 import feed_pb2 as _feed_pb2
from shop.order.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamOrderEventsRequest(_message.Message):
    __slots__ = ("after_sequence", "heartbeat_interval")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, after_sequence: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamOrderEventsResponse(_message.Message):
    __slots__ = ("sequence", "headers", "order_created", "order_cancelled", "payment_refunded", "payment_failed", "heartbeat")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ORDER_CREATED_FIELD_NUMBER: _ClassVar[int]
    ORDER_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FAILED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    headers: _containers.ScalarMap[str, str]
    order_created: _events_pb2.OrderCreated
    order_cancelled: _events_pb2.OrderCancelled
    payment_refunded: _events_pb2.PaymentRefunded
    payment_failed: _events_pb2.PaymentFailed
    heartbeat: _feed_pb2.FeedHeartbeat
    def __init__(self, sequence: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., order_created: _Optional[_Union[_events_pb2.OrderCreated, _Mapping]] = ..., order_cancelled: _Optional[_Union[_events_pb2.OrderCancelled, _Mapping]] = ..., payment_refunded: _Optional[_Union[_events_pb2.PaymentRefunded, _Mapping]] = ..., payment_failed: _Optional[_Union[_events_pb2.PaymentFailed, _Mapping]] = ..., heartbeat: _Optional[_Union[_feed_pb2.FeedHeartbeat, _Mapping]] = ...) -> None: ...
