"""The public tier: one ASGI app that serves the public services over Connect
(JSON and binary), gRPC-Web, gRPC and REST, and forwards every call to the
internal gRPC services."""
