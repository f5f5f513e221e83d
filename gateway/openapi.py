"""An OpenAPI 3.1 document made from the descriptors and their google.api.http rules.

Schemas follow the Protobuf JSON mapping (lowerCamel names, 64-bit integers as
strings, enums by name, well-known types in their JSON form); protovalidate
rules become constraints where JSON Schema can say them (lengths, patterns,
ranges, enums, item counts, required). Server-streaming routes are described
as `text/event-stream`, errors as `google.rpc.Status`. Summaries and descriptions
are the proto comments (gen/shop/comments.json, written by `make gen`), and every
operation that is not ACCESS_PUBLIC asks for the bearer token, so /docs can send it.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Mapping
from functools import cache
from typing import Any, NamedTuple

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

import shop
from buf.validate import validate_pb2
from gateway.registry import procedure
from gateway.rest import Route
from services.common import access
from shop.common.v1 import access_pb2

REF = "#/components/schemas/"
INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated lowerCamel field paths.",
    },
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "description": "google.protobuf.Any: a message of the type named by `@type`, "
        "with that message's fields beside it.",
        "properties": {
            "@type": {
                "type": "string",
                "description": "The type URL, such as `type.googleapis.com/google.rpc.ErrorInfo`.",
            }
        },
        "required": ["@type"],
        "additionalProperties": True,
    },
}
STATUS = {
    "type": "object",
    "description": "google.rpc.Status: the gRPC code, a message, and typed details.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
        "message": {"type": "string", "description": "What went wrong, for a developer."},
        "details": {
            "type": "array",
            "items": {"$ref": REF + "google.protobuf.Any"},
            "description": "Typed details, such as google.rpc.ErrorInfo with a stable reason.",
        },
    },
    "required": ["code", "message"],
}


BEARER = "bearer"
SECURITY_SCHEMES = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT signed by the shop's issuer (`make -s token USER_ID=...`).",
    }
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF + "google.rpc.Status"}}},
    }


UNAUTHENTICATED = _error("No bearer token, or one that does not verify (`unauthenticated`).")
PERMISSION_DENIED = _error("The caller may not do this, or not to this data (`permission_denied`).")


@cache
def load_comments() -> Mapping[str, str]:
    """The proto comments by full name (fields as `Message.field`, enum values as
    `Enum.VALUE`): the embedded descriptors carry none, so `make gen` writes them."""
    text = importlib.resources.files(shop).joinpath("comments.json").read_text("utf-8")
    comments: dict[str, str] = json.loads(text)
    return comments


def _describe(schema: dict[str, Any], *texts: str | None) -> dict[str, Any]:
    """Puts the non-empty `texts` in front of what the schema already says about itself."""
    parts = [t for t in (*texts, schema.get("description")) if t]
    if parts:
        schema["description"] = "\n\n".join(parts)
    return schema


def _summary(text: str) -> str:
    """The first sentence: what Swagger UI shows next to the path."""
    flat = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", flat)
    return match.group(1) if match else flat


def _rules(field: FieldDescriptor) -> validate_pb2.FieldRules | None:
    options = field.GetOptions()
    extension: Any = validate_pb2.field  # typed as a plain FieldDescriptor by its stub
    if not options.HasExtension(extension):
        return None
    rules: validate_pb2.FieldRules = options.Extensions[extension]
    return rules


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _scalar_constraints(schema: dict[str, Any], rules: Any, kind: str) -> None:
    """Copies protovalidate scalar rules (StringRules, Int32Rules, ...) onto a schema."""
    if kind == "string":
        for rule, key in (("min_len", "minLength"), ("max_len", "maxLength")):
            if rules.HasField(rule):
                schema[key] = getattr(rules, rule)
        if rules.HasField("pattern"):
            schema["pattern"] = rules.pattern
        if rules.HasField("email") and rules.email:
            schema["format"] = "email"
        if rules.__getattribute__("in"):
            schema["enum"] = list(rules.__getattribute__("in"))
        return
    for rule, key in (
        ("gt", "exclusiveMinimum"),
        ("gte", "minimum"),
        ("lt", "exclusiveMaximum"),
        ("lte", "maximum"),
    ):
        if rules.HasField(rule):
            schema[key] = getattr(rules, rule)


class SchemaBuilder:
    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, Any] = {
            "google.rpc.Status": STATUS,
            **{
                name: schema for name, schema in WELL_KNOWN.items() if name == "google.protobuf.Any"
            },
        }

    def ref(self, message: Descriptor) -> dict[str, Any]:
        if message.full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[message.full_name])
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # placeholder: recursion stops here
            self.schemas[message.full_name] = self._message(message)
        return {"$ref": REF + message.full_name}

    def _message(self, message: Descriptor) -> dict[str, Any]:
        properties, required = {}, []
        for field in message.fields:
            schema = self.field(field)
            behaviors = _behaviors(field)
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                schema["readOnly"] = True
            properties[field.json_name] = schema
            rules = _rules(field)
            if field_behavior_pb2.REQUIRED in behaviors or (rules is not None and rules.required):
                required.append(field.json_name)
        shape: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            shape["required"] = required
        return _describe(shape, self.comments.get(message.full_name))

    def _enum_doc(self, field: FieldDescriptor) -> str | None:
        """The enum's comment and its documented values, for the field that uses it."""
        enum = field.enum_type
        if enum is None:
            return None
        values = [
            f"- `{value.name}`: {' '.join(text.split())}"
            for value in enum.values
            if (text := self.comments.get(f"{enum.full_name}.{value.name}"))
        ]
        parts = [self.comments.get(enum.full_name, ""), "\n".join(values)]
        return "\n\n".join(p for p in parts if p) or None

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        """The field's schema, described by its proto comment (and its enum's values)."""
        comment = self.comments.get(field.full_name)
        return _describe(self._field(field), comment, self._enum_doc(field))

    def _field(self, field: FieldDescriptor) -> dict[str, Any]:
        rules = _rules(field)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value, None)}
        if field.is_repeated:
            schema: dict[str, Any] = {"type": "array"}
            item_rules = None
            if rules is not None and rules.HasField("repeated"):
                repeated = rules.repeated
                if repeated.HasField("min_items"):
                    schema["minItems"] = repeated.min_items
                if repeated.HasField("max_items"):
                    schema["maxItems"] = repeated.max_items
                if repeated.unique:
                    schema["uniqueItems"] = True
                item_rules = repeated.items if repeated.HasField("items") else None
            schema["items"] = self._single(field, item_rules)
            return schema
        return self._single(field, rules)

    def _single(
        self, field: FieldDescriptor, rules: validate_pb2.FieldRules | None
    ) -> dict[str, Any]:
        kind = field.type
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        schema: dict[str, Any]
        rule_kind = rules.WhichOneof("type") if rules is not None else None
        if kind == FieldDescriptor.TYPE_STRING:
            schema = {"type": "string"}
        elif kind == FieldDescriptor.TYPE_BOOL:
            schema = {"type": "boolean"}
        elif kind == FieldDescriptor.TYPE_BYTES:
            schema = {"type": "string", "format": "byte"}
        elif kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            schema = {"type": "number"}
        elif kind in INT32 or kind in UINT32:
            schema = {"type": "integer", "format": "int32"}
            if kind in UINT32:
                schema["minimum"] = 0
        elif kind in INT64:
            # The JSON mapping writes 64-bit integers as strings (and reads both).
            schema = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
        else:
            schema = {}
        if rules is not None and rule_kind is not None and kind not in INT64:
            _scalar_constraints(
                schema, getattr(rules, rule_kind), "string" if rule_kind == "string" else "number"
            )
        return schema


def _parameter_name(variable: str) -> str:
    """`product.id` -> `id`: OpenAPI treats `/v1/products/{id}` and
    `/v1/products/{product.id}` as the same path, so both must name it alike."""
    return variable.rsplit(".", 1)[-1]


def _openapi_path(template: str) -> str:
    return re.sub(
        r"\{([^}=]+)(=[^}]*)?\}", lambda m: "{" + _parameter_name(m.group(1)) + "}", template
    )


def _path_field(message: Descriptor, path: str) -> FieldDescriptor | None:
    field = None
    for part in path.split("."):
        field = message.fields_by_name.get(part)
        if field is None or field.message_type is None:
            return field
        message = field.message_type
    return field


class AccessDocs(NamedTuple):
    sentence: str  # for the operation's description
    security: list[dict[str, list[str]]]  # the operation's security requirement
    responses: dict[str, Any]  # the refusals it may get


def _access_docs(method: MethodDescriptor, comments: Mapping[str, str]) -> AccessDocs:
    """Who may call the operation, as its contract declares: no bearer requirement when
    it is public, the bearer token (and 401/403 answers) otherwise."""
    level = access.access_of(procedure(method))
    value = access_pb2.Access.Name(level)
    who = " ".join(comments.get(f"{access_pb2.Access.DESCRIPTOR.full_name}.{value}", "").split())
    sentence = f"**Access**: `{value}`. {who}".rstrip()
    if level == access.PUBLIC:
        return AccessDocs(sentence, [], {})
    refusals = {"401": UNAUTHENTICATED, "403": PERMISSION_DENIED}
    return AccessDocs(sentence, [{BEARER: []}], refusals)


def document(
    routes: list[Route], title: str = "Shop mesh API", version: str = "v1"
) -> dict[str, Any]:
    comments = load_comments()
    builder = SchemaBuilder(comments)
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    for route in routes:
        method = route.method
        request = method.input_type
        parameters = []
        for variable in route.template.variables:
            field = _path_field(request, variable)
            schema = builder.field(field) if field is not None else {"type": "string"}
            parameter = {"name": _parameter_name(variable), "in": "path", "required": True}
            described = f"`{variable}`"
            if "description" in schema:
                described += f": {schema['description']}"
            parameters.append({**parameter, "schema": schema, "description": described})
        comment = comments.get(method.full_name, method.name)
        docs = _access_docs(method, comments)
        operation: dict[str, Any] = {
            "tags": [method.containing_service.name],
            "summary": _summary(comment),
            "description": f"{comment}\n\n{docs.sentence}",
            "security": docs.security,
            "parameters": parameters,
        }
        operation_id = f"{method.containing_service.name}_{method.name}"
        while operation_id in seen_ids:
            operation_id += "_"
        seen_ids.add(operation_id)
        operation["operationId"] = operation_id
        bound = {v.split(".")[0] for v in route.template.variables}
        if route.body == "*":
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": builder.ref(request)}},
            }
        elif route.body:
            body_field = request.fields_by_name[route.body]
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": builder.field(body_field)}},
            }
        if route.body != "*":
            for field in request.fields:
                if field.name in bound or field.name == route.body:
                    continue
                if (
                    field.message_type is not None
                    and field.message_type.full_name not in WELL_KNOWN
                ):
                    continue  # nested messages are set with `a.b=` keys, not listed here
                schema = builder.field(field)
                query: dict[str, Any] = {
                    "name": field.json_name,
                    "in": "query",
                    "schema": schema,
                }
                if "description" in schema:
                    query["description"] = schema["description"]
                if field.is_repeated:
                    query.update(style="form", explode=True)
                parameters.append(query)
        response = method.output_type
        body_schema = builder.ref(response)
        if route.response_body:
            body_schema = builder.field(response.fields_by_name[route.response_body])
        if method.server_streaming:
            ok = {
                "description": "Server-Sent Events: one `data:` event per message, as JSON; "
                "a failure ends the stream with an `event: error` carrying a google.rpc.Status.",
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "x-message-schema": body_schema,
                    }
                },
            }
        else:
            ok = {"description": "OK", "content": {"application/json": {"schema": body_schema}}}
        operation["responses"] = {
            "200": ok,
            **docs.responses,
            "default": _error("An error: google.rpc.Status, with the HTTP status of its code."),
        }
        paths.setdefault(_openapi_path(route.template.template), {})[route.verb.lower()] = operation
    services = {route.method.containing_service for route in routes}
    tags = [
        {"name": service.name, "description": comments.get(service.full_name, service.full_name)}
        for service in sorted(services, key=lambda s: s.name)
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "tags": tags,
        "paths": paths,
        "components": {"schemas": builder.schemas, "securitySchemes": SECURITY_SCHEMES},
    }
