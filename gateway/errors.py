"""gRPC statuses from the services, as Connect errors and as HTTP responses.

The service's `google.rpc` details travel unchanged (the same Any bytes), so a
Connect client sees the BadRequest or ErrorInfo the service sent.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from google.rpc import code_pb2, error_details_pb2, status_pb2
from protobuf.wkt import Any as WireAny

from services.common.errors import internal_status, status_of

__all__ = [
    "HTTP_STATUS",
    "connect_error",
    "internal_status",
    "reason_of",
    "retry_after_of",
    "status_of",
]

# https://github.com/googleapis/googleapis/blob/master/google/rpc/code.proto
HTTP_STATUS = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}


def reason_of(status: status_pb2.Status) -> str:
    """The google.rpc.ErrorInfo reason among the status's details ("" when none)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def retry_after_of(status: status_pb2.Status) -> str:
    """The google.rpc.RetryInfo delay among the details, in whole seconds, for a
    `Retry-After` header ("" when none)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return str(max(1, info.retry_delay.seconds + (1 if info.retry_delay.nanos else 0)))
    return ""


def connect_error(status: status_pb2.Status) -> ConnectError:
    code = Code[code_pb2.Code.Name(status.code).replace("CANCELLED", "CANCELED")]
    details = [
        ErrorDetail(WireAny(type_url=detail.type_url, value=detail.value))
        for detail in status.details
    ]
    return ConnectError(code, status.message, details=details)
