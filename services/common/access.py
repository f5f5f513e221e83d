"""Who may call what, as the contracts declare it: the `(shop.common.v1.access)` option
that every RPC carries (proto/shop/common/v1/access.proto).

The gateway, the services' auth interceptor and the OpenAPI document all ask here,
so adding an RPC to a proto is the only place its access is written down.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import cache
from typing import Any

from google.protobuf.descriptor import MethodDescriptor

import shop
from shop.common.v1 import access_pb2

PUBLIC = access_pb2.ACCESS_PUBLIC
SIGNED_IN = access_pb2.ACCESS_SIGNED_IN
ADMIN = access_pb2.ACCESS_ADMIN
SERVICE = access_pb2.ACCESS_SERVICE


def declared(method: MethodDescriptor) -> int:
    """The option as written in the proto (ACCESS_UNSPECIFIED when it is missing)."""
    extension: Any = access_pb2.access  # typed as a plain FieldDescriptor by its stub
    level: int = method.GetOptions().Extensions[extension]
    return level


@cache
def declared_by_procedure() -> Mapping[str, int]:
    """`/shop.user.v1.UserService/GetUser` -> its declared access, for every RPC of every
    generated `shop.*_pb2` module; read once, since descriptors never change at run time."""
    found: dict[str, int] = {}
    for module_info in pkgutil.walk_packages(shop.__path__, "shop."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = declared(method)
    return found


def access_of(procedure: str) -> int:
    """The access a call to `procedure` needs. An unknown procedure, or one without the
    option, needs a signed-in caller: the safe default, never PUBLIC by omission."""
    level = declared_by_procedure().get(procedure, access_pb2.ACCESS_UNSPECIFIED)
    return SIGNED_IN if level == access_pb2.ACCESS_UNSPECIFIED else level


def is_public(procedure: str) -> bool:
    """True when anyone may call `procedure` without a token."""
    return access_of(procedure) == PUBLIC
