"""The tests' identities: one token signing key and one mesh CA per test run, trusted
by every service and gateway the tests start (in-process through their config, as
processes through JWT_JWKS_FILE and TLS_DIR)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import grpc

from services.common.auth import AuthSettings, ensure_dev_keys, mint
from services.common.tls import GATEWAY, SERVICE, TlsSettings, dev_pki

KEYS = Path(tempfile.gettempdir()) / f"shop-test-keys-{os.getpid()}"
ensure_dev_keys(KEYS)
# The run's private key and CA go with the run (every server the tests start has
# stopped by then).
atexit.register(shutil.rmtree, KEYS, True)
SETTINGS = AuthSettings(KEYS / "jwks.json", private_key_file=KEYS / "private.pem")
PKI = KEYS / "pki"
CLIENT_TLS = dev_pki(PKI, "test-client", SERVICE)  # a service certificate: may call anything
ENV = {"JWT_JWKS_FILE": str(SETTINGS.jwks_file), "TLS_DIR": str(PKI)}


def service_tls(name: str) -> TlsSettings:
    return dev_pki(PKI, name, SERVICE)


def gateway_tls() -> TlsSettings:
    return dev_pki(PKI, "gateway", GATEWAY)


ADMIN_ID = "usr_test_admin"


def token(user_id: str, roles: tuple[str, ...] = (), **options: Any) -> str:
    return mint((KEYS / "private.pem").read_bytes(), user_id, roles, **options)


def bearer(user_id: str, roles: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """gRPC metadata for a call as `user_id`."""
    return (("authorization", f"Bearer {token(user_id, roles)}"),)


ADMIN_TOKEN = token(ADMIN_ID, ("admin",), ttl=24 * 3600)
ADMIN_HEADER = f"Authorization: Bearer {ADMIN_TOKEN}"


class _AsAdmin:
    """Calls go as the test admin unless they carry their own authorization."""

    def _with_token(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if not any(key == "authorization" for key, _ in metadata):
            metadata.append(("authorization", f"Bearer {ADMIN_TOKEN}"))
        return details._replace(metadata=grpc.aio.Metadata(*metadata))


# grpc.aio files an interceptor under the first kind it implements: one class per kind.
class AsAdminUnary(_AsAdmin, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class AsAdminStream(_AsAdmin, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


def admin_channel(address: str) -> grpc.aio.Channel:
    """To a service (mutual TLS with the test client's certificate), as the admin."""
    return grpc.aio.secure_channel(
        address, CLIENT_TLS.channel_credentials(), interceptors=[AsAdminUnary(), AsAdminStream()]
    )


def service_channel(address: str, tls: TlsSettings = CLIENT_TLS) -> grpc.aio.Channel:
    """To a service with a certificate and no token."""
    return grpc.aio.secure_channel(address, tls.channel_credentials())


def edge_channel(address: str) -> grpc.aio.Channel:
    """To the gateway's gRPC (plaintext HTTP/2 at the edge), as the admin."""
    return grpc.aio.insecure_channel(address, interceptors=[AsAdminUnary(), AsAdminStream()])


class ConnectBearer:
    """A connectrpc client interceptor: sends `token` unless the call sets its own."""

    def __init__(self, token: str = ADMIN_TOKEN) -> None:
        self.value = f"Bearer {token}"

    def _add(self, ctx: Any) -> None:
        if "authorization" not in ctx.request_headers:
            ctx.request_headers["authorization"] = self.value

    async def on_start(self, ctx: Any) -> None:
        self._add(ctx)

    async def on_end(self, token: Any, ctx: Any, error: Exception | None, /) -> None:
        return None


class ConnectBearerSync(ConnectBearer):
    def on_start_sync(self, ctx: Any, /) -> None:
        self._add(ctx)

    def on_end_sync(self, token: Any, ctx: Any, error: Exception | None, /) -> None:
        return None
