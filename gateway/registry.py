"""The public services, found from the generated code: adding an RPC to a proto and
regenerating is enough for it to be served on every protocol.

A service is public unless its name ends in "InternalService": those are for the
mesh's own services (their RPCs declare ACCESS_SERVICE, see services.common.access).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import shop


@dataclass(frozen=True)
class PublicService:
    descriptor: ServiceDescriptor
    # The generated `<Service>ASGIApplication` class (connectrpc, protobuf=google).
    asgi_application: type[Any]

    @property
    def upstream(self) -> str:
        """The internal service that owns it: `shop.user.v1.UserService` -> `user`."""
        return self.descriptor.full_name.split(".")[1]


def procedure(method: MethodDescriptor) -> str:
    """The method's path on the wire: `/shop.user.v1.UserService/GetUser`."""
    return f"/{method.containing_service.full_name}/{method.name}"


def public_services() -> list[PublicService]:
    found = []
    for module_info in pkgutil.walk_packages(shop.__path__, "shop."):
        if not module_info.name.endswith("_connect"):
            continue
        connect_module = importlib.import_module(module_info.name)
        pb2 = importlib.import_module(module_info.name.removesuffix("_connect") + "_pb2")
        for name, descriptor in pb2.DESCRIPTOR.services_by_name.items():
            if name.endswith("InternalService"):
                continue
            found.append(
                PublicService(descriptor, getattr(connect_module, f"{name}ASGIApplication"))
            )
    return sorted(found, key=lambda s: s.descriptor.full_name)
