"""Resolving an update's FieldMask into the fields to change.

With a mask, exactly the named fields change (a field left at its default is
set to that default). Without one, the fields the client gave a non-default
value change (AIP-134), so `PATCH {"name": "x"}` does what it says.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from google.protobuf import field_mask_pb2, message

from services.common.errors import FieldViolation, InvalidArgument


def changes(
    mask: field_mask_pb2.FieldMask, resource: message.Message, updatable: Collection[str]
) -> dict[str, Any]:
    """Maps each field to change to its new value (a message field maps to the message)."""
    if mask.paths:
        paths = list(dict.fromkeys(mask.paths))
    else:
        paths = [fd.name for fd, _ in resource.ListFields() if fd.name in updatable]
    unknown = [p for p in paths if p not in updatable]
    if unknown:
        raise InvalidArgument(
            [
                FieldViolation("update_mask", f"cannot update {p!r}", "field_mask.in")
                for p in unknown
            ]
        )
    if not paths:
        raise InvalidArgument.of("update_mask", "names no field to update", "field_mask.empty")
    return {path: getattr(resource, path) for path in paths}
