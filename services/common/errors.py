"""Domain errors as values that carry a gRPC code and google.rpc details.

Use cases raise these; the error interceptor turns them into a status with
``google.rpc.ErrorInfo`` (and ``BadRequest`` / ``ResourceInfo`` /
``PreconditionFailure`` where they apply), so clients can act on the reason
rather than parse the message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, message
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "shop.example"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    reason: str = ""


class DomainError(Exception):
    """An expected failure with a stable machine-readable reason."""

    def __init__(
        self,
        message: str,
        reason: str,
        metadata: Mapping[str, str] | None = None,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.code = code

    def details(self) -> list[message.Message]:
        return [
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=DOMAIN, metadata=dict(self.metadata)
            )
        ]

    def to_status(self) -> status_pb2.Status:
        packed = []
        for detail in self.details():
            holder = any_pb2.Any()
            holder.Pack(detail)
            packed.append(holder)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


class InvalidArgument(DomainError):
    """Bad input, field by field (``google.rpc.BadRequest``)."""

    def __init__(self, violations: Iterable[FieldViolation], message: str = "") -> None:
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(
            message=message or f"invalid request: {summary}",
            reason="INVALID_ARGUMENT",
            code=grpc.StatusCode.INVALID_ARGUMENT,
        )

    @classmethod
    def of(cls, field_path: str, description: str, reason: str = "") -> InvalidArgument:
        return cls([FieldViolation(field_path, description, reason)])

    def details(self) -> list[message.Message]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                for v in self.violations
            ]
        )
        return [bad_request, *super().details()]


class NotFound(DomainError):
    """An id that names nothing (``google.rpc.ResourceInfo`` for each)."""

    def __init__(self, resource_type: str, *names: str) -> None:
        self.resource_type = resource_type
        self.names = names
        joined = ", ".join(names)
        super().__init__(
            message=f"{resource_type} not found: {joined}",
            reason=f"{resource_type.upper()}_NOT_FOUND",
            metadata={"resource_type": resource_type, "ids": joined},
            code=grpc.StatusCode.NOT_FOUND,
        )

    def details(self) -> list[message.Message]:
        infos: list[message.Message] = [
            error_details_pb2.ResourceInfo(
                resource_type=self.resource_type, resource_name=name, description="not found"
            )
            for name in self.names
        ]
        return [*infos, *super().details()]


class AlreadyExists(DomainError):
    def __init__(self, message: str, reason: str, **metadata: str) -> None:
        super().__init__(message, reason, metadata, grpc.StatusCode.ALREADY_EXISTS)


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the call (``PreconditionFailure``)."""

    def __init__(
        self,
        message: str,
        reason: str,
        subjects: Iterable[str] = (),
        **metadata: str,
    ) -> None:
        self.subjects = list(subjects)
        super().__init__(message, reason, metadata, grpc.StatusCode.FAILED_PRECONDITION)

    def details(self) -> list[message.Message]:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=self.reason, subject=subject, description=self.message
                )
                for subject in self.subjects
            ]
        )
        return [failure, *super().details()] if self.subjects else super().details()


class ResourceExhausted(DomainError):
    """Too many of something: retry after `retry_after` seconds (``google.rpc.RetryInfo``;
    HTTP 429 at the gateway)."""

    def __init__(self, message: str, reason: str, retry_after: float, **metadata: str) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(message, reason, metadata, grpc.StatusCode.RESOURCE_EXHAUSTED)

    def details(self) -> list[message.Message]:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromSeconds(self.retry_after)
        return [retry, *super().details()]


class Unavailable(DomainError):
    def __init__(self, message: str, reason: str = "UNAVAILABLE", **metadata: str) -> None:
        super().__init__(message, reason, metadata, grpc.StatusCode.UNAVAILABLE)


def internal_status(message: str = "internal error") -> status_pb2.Status:
    """What a client sees of an unexpected exception: nothing of its text."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)


DETAILS_KEY = "grpc-status-details-bin"


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The full status of a failed call, with its google.rpc details when the peer sent
    them (in the `grpc-status-details-bin` trailer)."""
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


class Unauthenticated(DomainError):
    """No credentials, or credentials that do not verify (HTTP 401)."""

    def __init__(self, message: str, reason: str = "UNAUTHENTICATED") -> None:
        super().__init__(message, reason, code=grpc.StatusCode.UNAUTHENTICATED)


class PermissionDenied(DomainError):
    """A verified caller asking for what is not theirs (HTTP 403)."""

    def __init__(self, message: str, reason: str = "NOT_OWNER") -> None:
        super().__init__(message, reason, code=grpc.StatusCode.PERMISSION_DENIED)
