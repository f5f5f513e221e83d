"""Helpers for asserting on gRPC errors and their google.rpc details."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from services.common.errors import status_of


def detail(error: grpc.aio.AioRpcError, kind: type[Any]) -> Any:
    """The first detail of type `kind` (BadRequest, ErrorInfo, ...), or None."""
    for packed in status_of(error).details:
        if packed.Is(kind.DESCRIPTOR):
            value = kind()
            packed.Unpack(value)
            return value
    return None


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason of a failed call ("" when it has none)."""
    info = detail(error, error_details_pb2.ErrorInfo)
    return str(info.reason) if info is not None else ""


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    bad_request = detail(error, error_details_pb2.BadRequest)
    assert bad_request is not None, f"no BadRequest detail in {status_of(error)}"
    return {v.field for v in bad_request.field_violations}


async def fails(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code`; returns the error for more checks."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, f"{caught.value.code()}: {caught.value.details()}"
    return caught.value


async def next_message(call: Any, timeout: float = 5.0) -> Any:
    """The next message of a server stream; fails if the stream ends or is silent."""
    message = await asyncio.wait_for(call.read(), timeout)
    assert message is not grpc.aio.EOF, "the stream ended"
    return message


async def until_quiet(call: Any, wait: float) -> list[Any]:
    """Every message of a server stream until `wait` passes without one; then cancels it."""
    received: list[Any] = []
    try:
        while True:
            received.append(await next_message(call, wait))
    except TimeoutError:
        pass
    finally:
        call.cancel()
    return received
