"""Mutual TLS inside the mesh: no certificate or a foreign CA gets nothing, and the
gateway's certificate can't call the internal RPCs."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from services.common.tls import SERVICE, dev_pki
from services.user.server import SPEC as USER
from shop.user.v1 import user_internal_pb2, user_internal_pb2_grpc, user_pb2, user_pb2_grpc
from tests import tokens
from tests.conftest import running
from tests.rpc import fails


async def test_callers_without_a_mesh_certificate_get_nothing(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'u.db'}"
    async with running(USER, url, tmp_path) as (service, admin):
        user = (
            await user_pb2_grpc.UserServiceStub(admin).CreateUser(
                user_pb2.CreateUserRequest(email="tls@example.com", display_name="T")
            )
        ).user
        foreign = dev_pki(tmp_path / "other-ca", "intruder", SERVICE)
        ca_only = grpc.ssl_channel_credentials(root_certificates=tokens.CLIENT_TLS.read()[0])
        foreign_client = grpc.ssl_channel_credentials(
            root_certificates=tokens.CLIENT_TLS.read()[0],
            private_key=foreign.read()[2],
            certificate_chain=foreign.read()[1],
        )
        channels = {
            "plaintext": grpc.aio.insecure_channel(service.address),
            "no client certificate": grpc.aio.secure_channel(service.address, ca_only),
            "another CA's certificate": grpc.aio.secure_channel(service.address, foreign_client),
        }
        for name, channel in channels.items():
            async with channel:
                for call in (
                    user_pb2_grpc.UserServiceStub(channel).GetUser(
                        user_pb2.GetUserRequest(id=user.id),
                        metadata=tokens.bearer(user.id),
                        timeout=5,
                    ),
                    user_internal_pb2_grpc.UserInternalServiceStub(channel).ValidateUser(
                        user_internal_pb2.ValidateUserRequest(user_id=user.id), timeout=5
                    ),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await call
                    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name


async def test_the_gateway_certificate_cannot_call_internal_rpcs(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'u.db'}"
    async with running(USER, url, tmp_path) as (service, admin):
        user = (
            await user_pb2_grpc.UserServiceStub(admin).CreateUser(
                user_pb2.CreateUserRequest(email="gw@example.com", display_name="G")
            )
        ).user
        async with tokens.service_channel(service.address, tokens.gateway_tls()) as gateway:
            # Public RPCs, yes (with the user's token)...
            reply = await user_pb2_grpc.UserServiceStub(gateway).GetUser(
                user_pb2.GetUserRequest(id=user.id), metadata=tokens.bearer(user.id)
            )
            assert reply.user.id == user.id
            # ...internal ones, no: stock can't be reserved from the edge.
            error = await fails(
                user_internal_pb2_grpc.UserInternalServiceStub(gateway).ValidateUser(
                    user_internal_pb2.ValidateUserRequest(user_id=user.id)
                ),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            assert "services only" in (error.details() or "")
        async with tokens.service_channel(service.address) as peer:  # a service certificate
            validated = await user_internal_pb2_grpc.UserInternalServiceStub(peer).ValidateUser(
                user_internal_pb2.ValidateUserRequest(user_id=user.id)
            )
            assert validated.user.id == user.id
