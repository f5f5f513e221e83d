"""Request validation against the contracts' protovalidate (buf.validate) rules.

Message-level CEL rules carry no field path, so their ids follow the
convention ``<field path>.<rule>`` (``user.display_name.not_empty``) and the
field is taken from the id.
"""

from __future__ import annotations

from typing import Any

import protovalidate
from google.protobuf import message

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


def violations_of(request: message.Message) -> list[FieldViolation]:
    """Every rule the request breaks, as field violations (empty when valid)."""
    return [
        FieldViolation(
            field=_field_path(v.proto),
            description=v.proto.message,
            reason=v.proto.rule_id,
        )
        for v in _validator.collect_violations(request)
    ]


def validate(request: message.Message) -> None:
    """Raises InvalidArgument listing every broken rule."""
    violations = violations_of(request)
    if violations:
        raise InvalidArgument(violations)
