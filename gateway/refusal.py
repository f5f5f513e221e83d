"""Answers given at the edge before any service is called (over a limit, a bad token),
each in the protocol the request used."""

from __future__ import annotations

import json

from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from starlette.types import Receive, Scope, Send

from gateway.errors import HTTP_STATUS


async def refuse(
    scope: Scope, receive: Receive, send: Send, code: int, message: str, headers: dict[str, str]
) -> None:
    """Answers with a status in the protocol the request used, and calls nothing."""
    request_headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
    content_type = request_headers.get("content-type", "")
    if content_type.startswith("application/grpc"):
        grpc_status = [(b"grpc-status", str(code).encode()), (b"grpc-message", message.encode())]
        extra = [(k.encode(), v.encode()) for k, v in headers.items()]
        start = [(b"content-type", content_type.encode()), *extra]
        if content_type.startswith("application/grpc-web") or "http.response.trailers" not in (
            scope.get("extensions") or {}
        ):
            # gRPC-Web (and a server without trailers) reads the status from the headers.
            start += grpc_status
            await send({"type": "http.response.start", "status": 200, "headers": start})
            await send({"type": "http.response.body", "body": b""})
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": start, "trailers": True}
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await send(
            {"type": "http.response.trailers", "headers": grpc_status, "more_trailers": False}
        )
        return
    status = status_pb2.Status(code=code, message=message)
    if scope["path"].startswith("/shop."):  # Connect: its own error JSON
        name = code_pb2.Code.Name(code).lower()
        body = json.dumps({"code": name, "message": message}).encode()
        raw = [(b"content-type", b"application/json")]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": HTTP_STATUS[code], "headers": raw})
        await send({"type": "http.response.body", "body": body})
        return
    raw = [(b"content-type", b"application/json")]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    body = json_format.MessageToJson(status, indent=None).encode()
    await send({"type": "http.response.start", "status": HTTP_STATUS[code], "headers": raw})
    await send({"type": "http.response.body", "body": body})
