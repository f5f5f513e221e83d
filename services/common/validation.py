"""Request validation against the contracts' protovalidate (buf.validate) rules.

Message-level CEL rules carry no field path, so their ids follow the
convention ``<field path>.<rule>`` (``user.display_name.not_empty``) and the
field is taken from the id.

One rule holds for every string field of every message without being written in
the contracts: no NUL character. PostgreSQL cannot store one in text, and SQLite
would keep it and hand it to clients that end strings there.
"""

from __future__ import annotations

from typing import Any

import protovalidate
from google.protobuf import message
from google.protobuf.descriptor import FieldDescriptor

from services.common.errors import FieldViolation, InvalidArgument

_validator = protovalidate.Validator()


def _field_path(violation: Any) -> str:
    path = violation.field
    if path is None or not path.elements:
        return str(violation.rule_id).rpartition(".")[0]
    parts: list[str] = []
    for element in path.elements:
        part = element.field_name
        subscript = element.subscript
        if subscript is not None:
            key = subscript.value
            part += (
                f"[{key}]" if subscript.field in ("index", "int_key", "uint_key") else f"[{key!r}]"
            )
        parts.append(part)
    return ".".join(parts)


NUL_RULE = "string.no_nul"


def _nul_paths(msg: message.Message, prefix: str = "") -> list[str]:
    """Paths of every string (map keys and values included) holding a NUL character."""
    found: list[str] = []
    for field, value in msg.ListFields():
        path = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                at = f"{path}[{key!r}]"
                if isinstance(key, str) and "\x00" in key:
                    found.append(at)
                if value_field.type == FieldDescriptor.TYPE_STRING and "\x00" in item:
                    found.append(at)
                elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    found += _nul_paths(item, at + ".")
        elif field.type == FieldDescriptor.TYPE_STRING:
            items = value if field.is_repeated else [value]
            for index, item in enumerate(items):
                if "\x00" in item:
                    found.append(f"{path}[{index}]" if field.is_repeated else path)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if field.is_repeated else [value]
            for index, item in enumerate(items):
                at = f"{path}[{index}]" if field.is_repeated else path
                found += _nul_paths(item, at + ".")
    return found


def violations_of(request: message.Message) -> list[FieldViolation]:
    """Every rule the request breaks, as field violations (empty when valid)."""
    violations = [
        FieldViolation(
            field=_field_path(v.proto),
            description=v.proto.message,
            reason=v.proto.rule_id,
        )
        for v in _validator.collect_violations(request)
    ]
    violations += [
        FieldViolation(path, "must not contain a NUL character (\\u0000)", NUL_RULE)
        for path in _nul_paths(request)
    ]
    return violations


def validate(request: message.Message) -> None:
    """Raises InvalidArgument listing every broken rule."""
    violations = violations_of(request)
    if violations:
        raise InvalidArgument(violations)
