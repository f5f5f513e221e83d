"""HTTP/JSON -> Protobuf request building for REST routes (google.api.http rules).

Path templates (`/v1/products/{product.id}`, verbs like `:cancel`), query
parameters (nested and repeated fields, JSON or original field names), and
`body: "*"` or a single body field. A value bound by the path can't be changed
by the query or the body: such a request is refused, never applied.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, message
from google.protobuf.descriptor import FieldDescriptor

from gateway import protojson
from services.common.errors import FieldViolation, InvalidArgument

_VARIABLE = re.compile(r"\{([a-zA-Z0-9_.]+)(?:=([^}]*))?\}")


@dataclass(frozen=True)
class PathTemplate:
    """A compiled google.api.http path template."""

    template: str
    pattern: re.Pattern[str]
    variables: tuple[str, ...]  # field paths, in order

    @classmethod
    def parse(cls, template: str) -> PathTemplate:
        regex, variables, last = "", [], 0
        for index, match in enumerate(_VARIABLE.finditer(template)):
            regex += re.escape(template[last : match.start()])
            segments = match.group(2) or "*"
            part = "/".join(
                "[^/]+?" if s == "*" else ".+?" if s == "**" else re.escape(s)
                for s in segments.split("/")
            )
            regex += f"(?P<v{index}>{part})"
            variables.append(match.group(1))
            last = match.end()
        regex += re.escape(template[last:])
        return cls(template, re.compile(f"^{regex}$", re.DOTALL), tuple(variables))

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.match(path)
        if found is None:
            return None
        return {name: found.group(f"v{i}") for i, name in enumerate(self.variables)}

    @property
    def specificity(self) -> int:
        """Literal characters: more specific templates are tried first."""
        return len(_VARIABLE.sub("", self.template))


def field_by_name(descriptor: Any, name: str) -> FieldDescriptor | None:
    """A field by its proto name or its JSON name."""
    field: FieldDescriptor | None = descriptor.fields_by_name.get(name)
    if field is not None:
        return field
    return next((f for f in descriptor.fields if f.json_name == name), None)


def _convert(field: FieldDescriptor, raw: str, where: str) -> Any:
    """A URL parameter (always text) as the field's value."""
    kind = field.type
    problem: str | None = None
    if kind == FieldDescriptor.TYPE_STRING:
        return raw
    if kind == FieldDescriptor.TYPE_BOOL:
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        problem = f"{raw!r} is not true or false"
    elif kind in protojson.INTEGERS:
        problem = protojson.integer_problem(raw, kind)
        if problem is None:
            return int(raw.strip())
    elif kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        try:
            return float(raw)
        except ValueError:
            problem = f"{raw!r} is not a number"
    elif kind == FieldDescriptor.TYPE_BYTES:
        try:
            return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except ValueError:
            problem = "must be base64"
    elif kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        by_name = enum.values_by_name.get(raw)
        if by_name is not None:
            return by_name.number
        if raw.lstrip("-").isdigit() and int(raw) in enum.values_by_number:
            return int(raw)
        problem = f"{raw!r} is not one of " + ", ".join(v.name for v in enum.values)
    else:
        problem = f"cannot be set from a URL ({_type_name(field)})"
    raise InvalidArgument.of(where, problem)


def _type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return {v: k for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}[field.type][
        5:
    ].lower()


def _resolve(msg: message.Message, path: str) -> tuple[message.Message, FieldDescriptor, str]:
    """The message holding the last field of a dotted path, the field, and its proto path."""
    parts = path.split(".")
    names = []
    for depth, part in enumerate(parts):
        field = field_by_name(msg.DESCRIPTOR, part)
        if field is None:
            raise InvalidArgument.of(path, "no such field")
        names.append(field.name)
        if depth == len(parts) - 1:
            return msg, field, ".".join(names)
        if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
            raise InvalidArgument.of(path, f"{field.name} has no fields")
        msg = getattr(msg, field.name)
    raise AssertionError("unreachable")


def proto_path(descriptor: Any, path: str) -> str:
    """`product.id` or `product.id` in JSON names, as the proto field path."""
    names = []
    for part in path.split("."):
        field = field_by_name(descriptor, part)
        if field is None:
            return path
        names.append(field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            descriptor = field.message_type
    return ".".join(names)


def set_values(msg: message.Message, path: str, raws: Sequence[str]) -> None:
    holder, field, name = _resolve(msg, path)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if len(raws) != 1 or field.is_repeated:
            raise InvalidArgument.of(name, "cannot be set from a URL (a message)")
        try:  # well-known types with a string form: Timestamp, Duration, FieldMask, wrappers
            json_format.ParseDict(raws[0], getattr(holder, field.name))  # type: ignore[arg-type]
        except (json_format.ParseError, ValueError, TypeError):
            raise InvalidArgument.of(
                name, f"{raws[0]!r} is not a valid {_type_name(field)}"
            ) from None
        return
    values = [_convert(field, raw, name) for raw in raws]
    if field.is_repeated:
        getattr(holder, field.name).extend(values)
    elif len(values) > 1:
        raise InvalidArgument.of(name, "is not repeated but was given more than once")
    else:
        setattr(holder, field.name, values[0])


def get_value(msg: message.Message, path: str) -> Any:
    holder, field, _ = _resolve(msg, path)
    if field.type == FieldDescriptor.TYPE_MESSAGE and not holder.HasField(field.name):
        return None
    return getattr(holder, field.name)


def parse_json(raw: bytes, target: message.Message) -> dict[str, Any]:
    """Fills `target` from a JSON object (unknown fields refused); returns the object."""
    return protojson.parse(raw, target)


def build_request(
    msg: message.Message,
    *,
    path_values: Mapping[str, str],
    query: Iterable[tuple[str, str]],
    body: str,
    raw_body: bytes,
) -> dict[str, Any] | None:
    """Fills the request message; returns the JSON body object when there was one."""
    document = None
    if body == "*":
        document = parse_json(raw_body, msg)
    elif body:
        holder, field, _ = _resolve(msg, body)
        document = parse_json(raw_body, getattr(holder, field.name))

    bound = {proto_path(msg.DESCRIPTOR, p) for p in path_values}
    if body != "*":
        grouped: dict[str, list[str]] = {}
        for key, value in query:
            grouped.setdefault(key, []).append(value)
        for key, values in grouped.items():
            if proto_path(msg.DESCRIPTOR, key) in bound:
                raise InvalidArgument.of(key, "is given by the URL path and cannot be set again")
            set_values(msg, key, values)

    violations = []
    for path, value in path_values.items():
        current = get_value(msg, path)
        if current not in (None, "", 0) and str(current) != value:
            violations.append(
                FieldViolation(
                    proto_path(msg.DESCRIPTOR, path),
                    "is given by the URL path and cannot be changed by the body",
                )
            )
    if violations:
        raise InvalidArgument(violations)
    for path, value in path_values.items():
        set_values(msg, path, [value])
    return document
