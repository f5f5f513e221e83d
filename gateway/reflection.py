"""gRPC server reflection (v1, and v1alpha for older tools) for the public services, so
`buf curl`, grpcurl and Postman find the gateway's schema without a `--schema` file.

It is connectrpc's own companion, connectrpc-grpcreflect, served like any other
connect app. That package speaks protobuf-py descriptors while the generated code
holds Google protobuf ones, so the files are handed over serialized. Only the public
services are listed, and only their files and imports can be fetched: the
*InternalService ones are never served here, so reflection does not reveal them.
"""

from __future__ import annotations

from typing import Any

# The package has no py.typed marker; its classes are used as plain ASGI apps here.
from connectrpc_grpcreflect import (  # type: ignore[import-untyped]
    ServerReflectionAlphaASGIApplication,
    ServerReflectionAlphaService,
    ServerReflectionASGIApplication,
    ServerReflectionService,
)
from google.protobuf.descriptor import FileDescriptor
from protobuf import DescService
from protobuf.wkt import FileDescriptorProto, FileDescriptorSet

from gateway.registry import PublicService


def _with_dependencies(files: list[FileDescriptor]) -> list[FileDescriptor]:
    """The files and everything they import, each after its imports (the order in
    which a protobuf-py registry can be built from them)."""
    ordered: dict[str, FileDescriptor] = {}

    def visit(file: FileDescriptor) -> None:
        if file.name in ordered:
            return
        for dependency in file.dependencies:
            visit(dependency)
        ordered[file.name] = file

    for file in files:
        visit(file)
    return list(ordered.values())


def reflection_apps(services: list[PublicService]) -> list[Any]:
    """The v1 and v1alpha reflection apps listing `services`; each has `.path` to mount at."""
    files = _with_dependencies([service.descriptor.file for service in services])
    registry = FileDescriptorSet(
        file=[FileDescriptorProto.from_binary(file.serialized_pb) for file in files]
    ).to_registry()
    descriptors: list[DescService] = []
    for service in services:
        found = registry.service(service.descriptor.full_name)
        if found is None:
            raise LookupError(f"{service.descriptor.full_name} is not in its own file")
        descriptors.append(found)
    return [
        ServerReflectionASGIApplication(ServerReflectionService(*descriptors)),
        ServerReflectionAlphaASGIApplication(ServerReflectionAlphaService(*descriptors)),
    ]
