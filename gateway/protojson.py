"""Protobuf JSON request bodies read with errors a caller can act on.

`json_format.ParseDict` reports problems in its own words (`Message type ... has no
field named ... Available Fields(except extensions): ...`, `expected string or
bytes-like object`), and a JSON document nested thousands deep overflows Python's
recursion. Here the document is first checked against the message's descriptor, so
each problem becomes a field violation in the contract's terms (`colour: unknown
field`, `display_name: must be a string`, `page_size: "abc" is not an integer`);
only then is it parsed. Both the Connect JSON codec and the REST routes use it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf import json_format, message
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.errors import connect_error
from services.common.errors import FieldViolation, InvalidArgument

# Each integer kind's range (the JSON mapping takes numbers or numeric strings).
INTEGERS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT_WORDS = ("NaN", "Infinity", "-Infinity")


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def integer_problem(value: Any, kind: int) -> str | None:
    """What is wrong with `value` as an integer field of `kind` (None: nothing)."""
    number: Any = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            return f"{_shown(value)} is not an integer"
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int):
        return f"{_shown(value)} is not an integer"
    low, high = INTEGERS[kind]
    if not low <= number <= high:
        return f"{_shown(value)} is out of range ({low} to {high})"
    return None


def _scalar_problem(field: FieldDescriptor, value: Any) -> str | None:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return None if isinstance(value, str) else "must be a string"
    if kind == FieldDescriptor.TYPE_BOOL:
        return None if isinstance(value, bool) else "must be true or false"
    if kind in INTEGERS:
        return integer_problem(value, kind)
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        if isinstance(value, str) and value in _FLOAT_WORDS:
            return None
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            return f"{_shown(value)} is not a number"
        if isinstance(number, bool) or not isinstance(number, int | float):
            return f"{_shown(value)} is not a number"
        return None if math.isfinite(number) else f"{_shown(value)} is not a number"
    if kind == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            return "must be a base64 string"
        try:
            base64.b64decode(value.replace("-", "+").replace("_", "/") + "==")
        except (binascii.Error, ValueError):
            return "must be a base64 string"
        return None
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        if isinstance(value, str) and value in enum.values_by_name:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return None  # proto3 enums are open: unknown numbers are kept
        names = ", ".join(v.name for v in enum.values)
        return f"{_shown(value)} is not one of {names}"
    return None


def _field(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    found: FieldDescriptor | None = descriptor.fields_by_name.get(key)
    if found is None:
        found = next((f for f in descriptor.fields if f.json_name == key), None)
    return found


def _value_problems(field: FieldDescriptor, value: Any, path: str) -> list[FieldViolation]:
    if value is None:
        return []  # JSON null: the field's default
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        if field.message_type.full_name.startswith("google.protobuf."):
            return []  # well-known types have JSON forms of their own: parsed below
        if not isinstance(value, dict):
            return [FieldViolation(path, "must be an object")]
        return problems(value, field.message_type, path + ".")
    problem = _scalar_problem(field, value)
    return [] if problem is None else [FieldViolation(path, problem)]


def problems(document: Any, descriptor: Any, prefix: str = "") -> list[FieldViolation]:
    """Every way `document` does not fit the message, with paths in proto field names."""
    if not isinstance(document, dict):
        return [FieldViolation(prefix.rstrip(".") or "body", "must be a JSON object")]
    found: list[FieldViolation] = []
    for key, value in document.items():
        field = _field(descriptor, key)
        if field is None:
            found.append(FieldViolation(prefix + key, "unknown field"))
            continue
        path = prefix + field.name
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            if not isinstance(value, dict):
                found.append(FieldViolation(path, "must be an object"))
                continue
            value_field = entry.fields_by_name["value"]
            for item_key, item in value.items():
                found += _value_problems(value_field, item, f"{path}[{item_key!r}]")
        elif field.is_repeated:
            if value is None:
                continue
            if not isinstance(value, list):
                found.append(FieldViolation(path, "must be a list"))
                continue
            for index, item in enumerate(value):
                found += _value_problems(field, item, f"{path}[{index}]")
        else:
            found += _value_problems(field, value, path)
    return found


def parse(raw: bytes | bytearray, target: message.Message) -> dict[str, Any]:
    """Fills `target` from a JSON object; InvalidArgument, in the contract's terms,
    when it does not fit. Returns the object."""
    try:
        document = json.loads(raw or b"{}")
    except RecursionError:
        raise InvalidArgument.of("body", "is nested too deeply") from None
    except ValueError as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise InvalidArgument.of("body", f"is not valid JSON: {reason}") from None
    violations = problems(document, target.DESCRIPTOR)
    if violations:
        raise InvalidArgument(violations)
    try:
        json_format.ParseDict(document, target, ignore_unknown_fields=False)
    except (json_format.ParseError, RecursionError, ValueError, TypeError):
        # What the check above lets through: a malformed timestamp, duration or mask.
        raise InvalidArgument.of(
            "body", f"does not fit {target.DESCRIPTOR.full_name} (see the API description)"
        ) from None
    assert isinstance(document, dict)
    return document


class CheckedJSONCodec:
    """connectrpc's JSON codec for google.protobuf messages, with `parse`'s errors."""

    def name(self) -> str:
        return "json"

    def encode(self, msg: message.Message) -> bytes:
        return json_format.MessageToJson(msg, indent=None).encode()

    def decode(self, data: bytes | bytearray, message_class: type[message.Message]) -> Any:
        target = message_class()
        try:
            parse(data, target)
        except InvalidArgument as error:
            raise connect_error(error.to_status()) from None
        except Exception:  # never a library's words (or a traceback) to the caller
            raise ConnectError(Code.INVALID_ARGUMENT, "the body is not valid") from None
        return target
