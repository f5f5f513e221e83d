"""The edge of every request: its id, the RPC code it ended with, one access-log line
and its metrics, and a clean answer when something fails.

`Edge` is the outermost middleware of the application. For each HTTP request it
- gives it a request id (`x-request-id` from the client, or a new one), sent back on
  every response, refusals and failures included;
- refuses header values that are not UTF-8 (400 / invalid_argument) before any part
  of the gateway or its libraries tries to read them;
- answers gRPC and gRPC-Web callers with a grpc-status whatever happens inside:
  a path no route serves is `unimplemented` (12), never an HTTP 404 with JSON, and so
  is gRPC sent over HTTP/1.1 (its trailers need HTTP/2);
- catches any exception that would otherwise reach the ASGI server, logs it once,
  and answers `internal` in the caller's protocol without its text;
- records the RPC code the request ended with, whichever protocol carried it (the
  grpc-status header or trailer, a gRPC-Web trailer frame, the Connect error JSON or
  end-of-stream message, the `google.rpc.Status` of a REST answer, or what a part of
  the gateway noted with `note()`), and logs and counts the request once.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.rpc import code_pb2
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("shop.access")

REQUEST_ID = "x-request-id"
GRPC, GRPC_WEB, CONNECT, HTTP = "grpc", "grpc-web", "connect", "http"
# Kept of a response body to read its status from: error bodies and final frames are small.
KEPT_BODY_BYTES = 64 * 1024

# The gRPC code a gRPC client infers from an HTTP status (gRPC's "HTTP to gRPC Status
# Code Mapping"), with 405 as unimplemented too: no such method here.
HTTP_TO_GRPC = {
    400: code_pb2.INTERNAL,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.UNIMPLEMENTED,
    405: code_pb2.UNIMPLEMENTED,
    413: code_pb2.RESOURCE_EXHAUSTED,
    429: code_pb2.UNAVAILABLE,
    502: code_pb2.UNAVAILABLE,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.UNAVAILABLE,
}
# The code an HTTP status stands for where nothing more precise was said (REST, docs).
HTTP_TO_CODE = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    409: code_pb2.ALREADY_EXISTS,
    413: code_pb2.RESOURCE_EXHAUSTED,
    429: code_pb2.RESOURCE_EXHAUSTED,
    499: code_pb2.CANCELLED,
    501: code_pb2.UNIMPLEMENTED,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.DEADLINE_EXCEEDED,
}


def code_name(code: int) -> str:
    """`5` -> `NOT_FOUND`, as the services label their own metrics."""
    try:
        return str(code_pb2.Code.Name(code))
    except ValueError:
        return "UNKNOWN"


@dataclass
class Exchange:
    """One request as the edge sees it."""

    request_id: str
    protocol: str
    route: str
    http_status: int = 0
    # The RPC code it ended with (`OK`, `NOT_FOUND`, ...) and why, when known.
    code: str = ""
    reason: str = ""
    # The client's address (the TCP peer), passed on to the services as x-client-address.
    client: str = ""


_current: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar(
    "shop_exchange", default=None
)


def current() -> Exchange | None:
    return _current.get()


def note(code: int, reason: str = "") -> None:
    """Records the code (and reason) a part of the gateway answered the request with."""
    exchange = _current.get()
    if exchange is not None:
        exchange.code = code_name(code)
        exchange.reason = reason or exchange.reason


def header(scope: Scope, name: bytes) -> str:
    """A request header as text ("" when absent); bytes that are not text are kept as
    Latin-1 rather than failing."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def protocol_of(scope: Scope) -> str:
    content_type = header(scope, b"content-type").lower()
    if content_type.startswith("application/grpc-web"):
        return GRPC_WEB
    if content_type.startswith("application/grpc"):
        return GRPC
    if scope["path"].startswith(("/shop.", "/grpc.")):
        return CONNECT
    return HTTP


def _request_id(scope: Scope) -> str:
    given = header(scope, REQUEST_ID.encode()).strip()[:128]
    return given if given.isprintable() and given else uuid.uuid4().hex


def _undecodable_header(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return str(key.decode("latin-1"))
    return None


def _frames(body: bytes) -> list[tuple[int, bytes]]:
    """Length-prefixed frames (flags, payload) of a gRPC-Web or Connect stream body."""
    frames, at = [], 0
    while at + 5 <= len(body):
        size = int.from_bytes(body[at + 1 : at + 5], "big")
        frames.append((body[at], body[at + 5 : at + 5 + size]))
        at += 5 + size
    return frames


class _Response:
    """Watches (and where needed rewrites) what the application sends."""

    def __init__(self, exchange: Exchange, scope: Scope, send: Send) -> None:
        self._exchange = exchange
        self._scope = scope
        self._send = send
        self.started = False
        self.content_type = ""
        self.grpc_status: str | None = None
        self.body = b""
        self._swallow = False  # a non-gRPC answer to a gRPC caller, replaced

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            status = int(message["status"])
            headers = list(message.get("headers", []))
            if self._needs_rewriting(status, headers):
                await self._rewrite(status)
                return
            self._exchange.http_status = status
            names = {key.lower() for key, _ in headers}
            if REQUEST_ID.encode() not in names:
                headers.append((REQUEST_ID.encode(), self._exchange.request_id.encode()))
            for key, value in headers:
                if key.lower() == b"content-type":
                    self.content_type = value.decode("latin-1").lower()
                elif key.lower() == b"grpc-status":
                    self.grpc_status = value.decode("latin-1")
            message = {**message, "headers": headers}
        elif self._swallow:
            return
        elif kind == "http.response.body":
            chunk = message.get("body", b"")
            if len(self.body) + len(chunk) <= KEPT_BODY_BYTES:
                self.body += chunk
            else:
                self.body = chunk[-KEPT_BODY_BYTES:]  # the end is where statuses are
        elif kind == "http.response.trailers":
            for key, value in message.get("headers", []):
                if key.lower() == b"grpc-status":
                    self.grpc_status = value.decode("latin-1")
        await self._send(message)

    def _needs_rewriting(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """A gRPC caller answered with a bare HTTP status, or a Connect caller with a 404
        without the Connect error body (a method no app serves)."""
        if self._exchange.protocol in (GRPC, GRPC_WEB):
            return status != 200
        if self._exchange.protocol == CONNECT and status == 404:
            types = [v for k, v in headers if k.lower() == b"content-type"]
            return not types or not types[0].startswith(b"application/json")
        return False

    async def _rewrite(self, status: int) -> None:
        from gateway.refusal import refuse, unknown_method  # refusal notes codes here

        self._swallow = True
        code = HTTP_TO_GRPC.get(status, code_pb2.UNKNOWN)
        if code == code_pb2.UNIMPLEMENTED:
            await unknown_method(self._scope, self._send_through)
        else:
            await refuse(self._scope, self._send_through, code, f"HTTP {status}")

    async def _send_through(self, message: Message) -> None:
        """Sends the replacement answer, watched like any other."""
        self._swallow = False
        await self.send(message)
        self._swallow = True

    def code(self) -> str:
        """The RPC code the answer carried."""
        if self.grpc_status is not None:
            return code_name(int(self.grpc_status)) if self.grpc_status.isdigit() else "UNKNOWN"
        if self.content_type.startswith("application/grpc-web"):
            for flags, payload in _frames(self.body):
                if flags & 0x80:  # the trailers frame
                    for line in payload.decode("latin-1").splitlines():
                        name, _, value = line.partition(":")
                        if name.strip().lower() == "grpc-status" and value.strip().isdigit():
                            return code_name(int(value.strip()))
        if self.content_type.startswith("application/connect+"):
            for flags, payload in _frames(self.body):
                if flags & 0x02:  # the end-of-stream message
                    return _code_from_json(payload, "error") or "OK"
        if self._exchange.http_status >= 400:
            found = _code_from_json(self.body)
            if found:
                return found
            return code_name(HTTP_TO_CODE.get(self._exchange.http_status, code_pb2.UNKNOWN))
        return "OK" if self._exchange.http_status else "UNKNOWN"


def _code_from_json(body: bytes, inside: str = "") -> str:
    """The code of a Connect error (`{"code": "not_found"}`) or of a google.rpc.Status
    (`{"code": 5}`), possibly under `inside`; "" when the body holds neither."""
    try:
        document: Any = json.loads(body)
        if inside:
            document = document.get(inside) if isinstance(document, dict) else None
            if document is None:
                return ""
        code = document.get("code") if isinstance(document, dict) else None
    except (ValueError, RecursionError):
        return ""
    if isinstance(code, int):
        return code_name(code)
    if isinstance(code, str) and code:
        return code.upper().replace("CANCELED", "CANCELLED")
    return ""


Observer = Callable[[Exchange, float], None]


class Edge:
    """ASGI middleware: see the module's docstring."""

    def __init__(self, app: ASGIApp, route_of: Callable[[Scope], str], observe: Observer) -> None:
        self.app = app
        self._route_of = route_of
        self._observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from gateway.refusal import refuse

        started = time.perf_counter()
        exchange = Exchange(
            _request_id(scope),
            protocol_of(scope),
            self._route_of(scope),
            client=(scope.get("client") or ("", 0))[0],
        )
        response = _Response(exchange, scope, send)
        token = _current.set(exchange)
        try:
            undecodable = _undecodable_header(scope)
            if undecodable is not None:
                message = f"the {undecodable} header is not valid UTF-8"
                await refuse(
                    scope, response.send, code_pb2.INVALID_ARGUMENT, message, reason="BAD_HEADER"
                )
            elif exchange.protocol == GRPC and not scope.get("http_version", "").startswith("2"):
                # Its trailers need HTTP/2; the answer fits in headers (trailers-only).
                message = "gRPC needs HTTP/2; over HTTP/1.1 use gRPC-Web or Connect"
                await refuse(
                    scope, response.send, code_pb2.UNIMPLEMENTED, message, reason="GRPC_OVER_HTTP1"
                )
            else:
                await self.app(scope, receive, response.send)
        except Exception:
            log.exception(
                "unhandled error",
                extra={"request_id": exchange.request_id, "route": exchange.route},
            )
            if not response.started:
                await refuse(
                    scope,
                    response.send,
                    code_pb2.INTERNAL,
                    "internal error",
                    reason="GATEWAY_ERROR",
                )
        finally:
            _current.reset(token)
            if not exchange.code:
                exchange.code = response.code()
            seconds = time.perf_counter() - started
            self._observe(exchange, seconds)
            log.info(
                "request",
                extra={
                    "request_id": exchange.request_id,
                    "http_method": scope.get("method", ""),
                    "route": exchange.route,
                    "protocol": exchange.protocol,
                    "http_status": exchange.http_status,
                    "code": exchange.code,
                    "reason": exchange.reason,
                    "duration_ms": round(seconds * 1000, 3),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )
