"""REST routes from the `google.api.http` rules of the public services.

Every rule (and its additional bindings) becomes a route; the request is
transcoded to the RPC's message, forwarded like any other call, and answered as
JSON (or `response_body`). Errors are a `google.rpc.Status` JSON body with the
matching HTTP status. Server-streaming RPCs answer as Server-Sent Events.
PATCH without an update mask gets one made of the fields present in the body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import field_mask_pb2, json_format, message, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.rpc import code_pb2, status_pb2
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import edge
from gateway.auth import require_token
from gateway.config import GatewayConfig
from gateway.errors import HTTP_STATUS, internal_status, reason_of, retry_after_of, status_of
from gateway.registry import PublicService, procedure
from gateway.transcode import PathTemplate, build_request, field_by_name
from gateway.upstream import Upstreams, call_options, stream
from services.common import validation
from services.common.errors import DomainError

log = logging.getLogger("shop.gateway")

JSON = "application/json"
HTTP_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Route:
    verb: str
    template: PathTemplate
    body: str
    response_body: str
    method: MethodDescriptor
    upstream: str
    call: Callable[..., Any]


class BodyTooLarge(Exception):
    pass


def _bindings(rule: http_pb2.HttpRule) -> list[http_pb2.HttpRule]:
    return [rule, *rule.additional_bindings]


def routes_of(services: list[PublicService], upstreams: Upstreams) -> list[Route]:
    routes = []
    for service in services:
        for method in service.descriptor.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            call = upstreams.method(service.upstream, method)
            for rule in _bindings(options.Extensions[annotations_pb2.http]):
                verb = rule.WhichOneof("pattern")
                if verb == "custom":
                    verb, template = rule.custom.kind.lower(), rule.custom.path
                elif verb in HTTP_VERBS:
                    template = getattr(rule, verb)
                else:
                    continue
                routes.append(
                    Route(
                        verb.upper(),
                        PathTemplate.parse(template),
                        rule.body,
                        rule.response_body,
                        method,
                        service.upstream,
                        call,
                    )
                )
    return sorted(routes, key=lambda r: -r.template.specificity)


def status_response(status: status_pb2.Status) -> Response:
    """A google.rpc.Status as the JSON body of the HTTP status of its code."""
    edge.note(status.code, reason_of(status))
    body = json_format.MessageToJson(status, indent=None)
    retry = retry_after_of(status)
    return Response(
        body,
        status_code=HTTP_STATUS.get(status.code, 500),
        media_type=JSON,
        headers={"retry-after": retry} if retry else None,
    )


def _to_json(msg: message.Message, response_body: str) -> str:
    if response_body:
        field = field_by_name(msg.DESCRIPTOR, response_body)
        assert field is not None
        value = getattr(msg, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
            return json_format.MessageToJson(value, indent=None)
        return json.dumps(json_format.MessageToDict(msg)[field.json_name])
    return json_format.MessageToJson(msg, indent=None)


def _fill_update_mask(
    msg: message.Message, body_field: str, document: dict[str, Any] | None, bound: set[str]
) -> None:
    """PATCH: with no mask from the client, update exactly the fields present in the body."""
    mask_field = next(
        (
            f
            for f in msg.DESCRIPTOR.fields
            if f.message_type is not None
            and f.message_type.full_name == "google.protobuf.FieldMask"
        ),
        None,
    )
    if mask_field is None or msg.HasField(mask_field.name) or document is None or not body_field:
        return
    target = field_by_name(msg.DESCRIPTOR, body_field)
    if target is None or target.message_type is None:
        return
    paths = []
    for key in document:
        field = field_by_name(target.message_type, key)
        if field is not None and f"{target.name}.{field.name}" not in bound:
            paths.append(field.name)
    getattr(msg, mask_field.name).CopyFrom(field_mask_pb2.FieldMask(paths=paths))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _timeout(request: Request, default: float | None) -> float | None:
    raw = request.headers.get("connect-timeout-ms", "")
    return int(raw) / 1000 if raw.isdigit() else default


class RestRouter:
    """An ASGI endpoint serving every REST route (tried most specific first)."""

    def __init__(
        self, services: list[PublicService], upstreams: Upstreams, config: GatewayConfig
    ) -> None:
        self._routes = routes_of(services, upstreams)
        self._config = config

    @property
    def routes(self) -> list[Route]:
        return self._routes

    def _match(self, verb: str, path: str) -> tuple[Route, dict[str, str]] | list[str]:
        """The route serving `verb path` and its path values, or the verbs that would."""
        allowed = []
        for route in self._routes:
            values = route.template.match(path)
            if values is None:
                continue
            if route.verb != verb and not (verb == "HEAD" and route.verb == "GET"):
                allowed.append(route.verb)
                continue
            return route, values
        return allowed

    def route_label(self, verb: str, path: str) -> str | None:
        """The rule serving the request (`GET /v1/users/{id}`), for metrics and logs."""
        found = self._match(verb.upper(), path)
        if isinstance(found, list):
            return None
        return f"{found[0].verb} {found[0].template.template}"

    async def handle(self, request: Request) -> Response:
        path, verb = request.url.path, request.method.upper()
        found = self._match(verb, path)
        if not isinstance(found, list):
            return await self._serve(*found, request)
        allowed = found
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            status = status_pb2.Status(
                code=code_pb2.UNIMPLEMENTED, message=f"{verb} is not allowed here; use {methods}"
            )
            response = status_response(status)
            response.status_code = 405
            response.headers["allow"] = methods
            return response
        return status_response(
            status_pb2.Status(code=code_pb2.NOT_FOUND, message=f"no route for {verb} {path}")
        )

    async def _serve(self, route: Route, values: dict[str, str], request: Request) -> Response:
        streaming = route.method.server_streaming
        timeout = _timeout(request, None if streaming else self._config.default_timeout)
        options = call_options(dict(request.headers.items()), timeout, self._config.forward_headers)
        try:
            require_token(procedure(route.method), request.headers.get("authorization"))
        except DomainError as error:
            return status_response(error.to_status())
        try:
            raw = await _read_body(request, self._config.max_body_bytes) if route.body else b""
            msg = message_factory.GetMessageClass(route.method.input_type)()
            document = build_request(
                msg,
                path_values=values,
                query=request.query_params.multi_items(),
                body=route.body,
                raw_body=raw,
            )
            if route.verb == "PATCH":
                _fill_update_mask(msg, route.body, document, set(route.template.variables))
            validation.validate(msg)  # at the edge too: a bad request never opens a stream
        except BodyTooLarge:
            status = status_pb2.Status(
                code=code_pb2.INVALID_ARGUMENT,
                message=f"the body is larger than {self._config.max_body_bytes} bytes",
            )
            response = status_response(status)
            response.status_code = 413
            return response
        except DomainError as error:
            return status_response(error.to_status())
        if streaming:
            events = self._events(
                route, route.call(msg, timeout=options.timeout, metadata=options.metadata)
            )
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"cache-control": "no-store"},
            )
        try:
            reply = await route.call(msg, timeout=options.timeout, metadata=options.metadata)
        except grpc.aio.AioRpcError as error:
            return status_response(status_of(error))
        except Exception:
            log.exception("forwarding failed", extra={"rpc_method": route.method.full_name})
            return status_response(internal_status())
        return Response(_to_json(reply, route.response_body), media_type=JSON)

    async def _events(self, route: Route, call: Any) -> AsyncIterator[str]:
        """Server-Sent Events: one `data:` event per message; a failure ends with `event: error`."""
        try:
            async for reply in stream(call):
                yield f"data: {_to_json(reply, route.response_body)}\n\n"
        except grpc.aio.AioRpcError as error:
            failure = status_of(error)
            edge.note(failure.code, reason_of(failure))
            yield f"event: error\ndata: {json_format.MessageToJson(failure, indent=None)}\n\n"
