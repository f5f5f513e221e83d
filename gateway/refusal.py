"""Answers the gateway gives itself (a bad token, a limit, an unknown method, a
failure of its own), each in the protocol the request used: gRPC and gRPC-Web get a
grpc-status, Connect its error JSON, everything else a `google.rpc.Status` JSON body
with the HTTP status of the code."""

from __future__ import annotations

import json
from collections.abc import Mapping

from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from starlette.types import Scope, Send

from gateway import edge
from gateway.errors import HTTP_STATUS


def _raw(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def _grpc_message(message: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2, "Responses")."""
    return "".join(
        c if 0x20 <= ord(c) <= 0x7E and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
        for c in message
    ).encode()


async def refuse(
    scope: Scope,
    send: Send,
    code: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    reason: str = "",
) -> None:
    """Answers with a status in the protocol the request used, and calls nothing."""
    edge.note(code, reason or code_pb2.Code.Name(code))
    extra = _raw(headers or {})
    protocol = edge.protocol_of(scope)
    if protocol in (edge.GRPC, edge.GRPC_WEB):
        content_type = edge.header(scope, b"content-type") or "application/grpc"
        grpc_status = [
            (b"grpc-status", str(code).encode()),
            (b"grpc-message", _grpc_message(message)),
        ]
        start = [(b"content-type", content_type.encode("latin-1")), *extra]
        trailers = "http.response.trailers" in (scope.get("extensions") or {})
        if protocol == edge.GRPC_WEB or not trailers:
            # gRPC-Web (and a server without trailers) reads the status from the headers.
            await send(
                {"type": "http.response.start", "status": 200, "headers": start + grpc_status}
            )
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
    if protocol == edge.CONNECT:
        name = code_pb2.Code.Name(code).lower().replace("cancelled", "canceled")
        body = json.dumps({"code": name, "message": message}).encode()
    else:
        body = json_format.MessageToJson(
            status_pb2.Status(code=code, message=message), indent=None
        ).encode()
    start = [(b"content-type", b"application/json"), *extra]
    await send({"type": "http.response.start", "status": HTTP_STATUS[code], "headers": start})
    await send({"type": "http.response.body", "body": body})


async def unknown_method(scope: Scope, send: Send) -> None:
    """The answer for an RPC path the gateway does not serve (unknown, or internal):
    `unimplemented` as gRPC and Connect clients expect it (Connect: HTTP 404)."""
    message = f"unknown method {scope['path']}"
    if edge.protocol_of(scope) != edge.CONNECT:
        await refuse(scope, send, code_pb2.UNIMPLEMENTED, message, reason="NO_SUCH_METHOD")
        return
    edge.note(code_pb2.UNIMPLEMENTED, "NO_SUCH_METHOD")
    body = json.dumps({"code": "unimplemented", "message": message}).encode()
    start = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 404, "headers": start})
    await send({"type": "http.response.body", "body": body})
