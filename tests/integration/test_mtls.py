"""Mutual TLS inside the mesh: no certificate or a foreign CA gets nothing, and the
gateway's certificate can't call the internal RPCs."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from services.common import clients
from services.common.server import start
from services.common.tls import SERVICE, TlsSettings, dev_pki
from services.user.wiring import SPEC as USER
from shop.user.v1 import user_internal_pb2, user_internal_pb2_grpc, user_pb2, user_pb2_grpc
from tests import tokens
from tests.conftest import running
from tests.conftest import test_config as config_for
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


def _served_serial(address: str, client: TlsSettings) -> int:
    """The serial number of the certificate the server presents to a new connection."""
    host, port = address.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    assert client.ca_file and client.cert_file and client.key_file
    context.load_verify_locations(client.ca_file)
    context.load_cert_chain(client.cert_file, client.key_file)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


async def test_a_rotated_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    """The files are replaced (as cert-manager renews a Secret): the next connection
    gets the new certificate, the service was not restarted, and calls still work."""
    served = tmp_path / "tls"
    served.mkdir()
    first = tokens.service_tls("user")
    assert first.ca_file and first.cert_file and first.key_file
    for source, name in (
        (first.ca_file, "ca.pem"),
        (first.cert_file, "tls.crt"),
        (first.key_file, "tls.key"),
    ):
        shutil.copyfile(source, served / name)
    settings = TlsSettings(served / "ca.pem", served / "tls.crt", served / "tls.key")
    url = f"sqlite+aiosqlite:///{tmp_path / 'u.db'}"
    config = replace(config_for(USER, url, tmp_path), tls=settings)
    service = await start(USER, config)
    try:
        before = _served_serial(service.address, tokens.CLIENT_TLS)
        renewed = dev_pki(tokens.PKI, f"user-renewed-{uuid.uuid4().hex[:8]}", SERVICE)
        assert renewed.cert_file and renewed.key_file
        for source, name in ((renewed.key_file, "tls.key"), (renewed.cert_file, "tls.crt")):
            shutil.copyfile(source, served / f".{name}.new")
            os.replace(served / f".{name}.new", served / name)
        os.utime(served / "tls.crt", (time.time() + 5, time.time() + 5))  # a later mtime
        after = _served_serial(service.address, tokens.CLIENT_TLS)
        assert after != before
        assert after == x509.load_pem_x509_certificate(renewed.cert_file.read_bytes()).serial_number
        async with tokens.admin_channel(service.address) as channel:
            reply = await user_pb2_grpc.UserServiceStub(channel).CreateUser(
                user_pb2.CreateUserRequest(email="rotated@example.com", display_name="R")
            )
        assert reply.user.email == "rotated@example.com"
    finally:
        await service.stop(grace=0.2)


class _CertificateRecorder(user_pb2_grpc.UserServiceServicer):
    """Answers GetUser and notes the serial of the client certificate it was called with."""

    CreateUser = ListUsers = UpdateUser = None  # type: ignore[assignment]  # not served

    def __init__(self) -> None:
        self.serials: list[int] = []

    async def GetUser(self, request: Any, context: Any) -> user_pb2.GetUserResponse:
        (pem,) = context.auth_context()["x509_pem_cert"]
        self.serials.append(x509.load_pem_x509_certificate(pem).serial_number)
        return user_pb2.GetUserResponse(user=user_pb2.User(id=request.id))


async def test_a_client_presents_its_rotated_certificate_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's certificate files are replaced: the next calls are made over a new
    connection that presents the new certificate; the old channel is not needed."""
    monkeypatch.setattr(clients, "ROTATION_CHECK_SECONDS", 0.0)
    recorder = _CertificateRecorder()
    server = grpc.aio.server()
    user_pb2_grpc.add_UserServiceServicer_to_server(recorder, server)
    port = server.add_secure_port("127.0.0.1:0", tokens.service_tls("user").server_credentials())
    await server.start()
    mine = tmp_path / "client"
    mine.mkdir()
    first = dev_pki(tokens.PKI, f"client-{uuid.uuid4().hex[:8]}", SERVICE)
    renewed = dev_pki(tokens.PKI, f"client-{uuid.uuid4().hex[:8]}", SERVICE)
    assert first.ca_file and first.cert_file and first.key_file
    assert renewed.cert_file and renewed.key_file
    shutil.copyfile(first.ca_file, mine / "ca.pem")
    shutil.copyfile(first.cert_file, mine / "tls.crt")
    shutil.copyfile(first.key_file, mine / "tls.key")
    settings = TlsSettings(mine / "ca.pem", mine / "tls.crt", mine / "tls.key")
    channel = clients.channel(f"127.0.0.1:{port}", tls=settings)
    stub = user_pb2_grpc.UserServiceStub(channel)
    try:
        await stub.GetUser(user_pb2.GetUserRequest(id="a"))
        for source, name in ((renewed.key_file, "tls.key"), (renewed.cert_file, "tls.crt")):
            shutil.copyfile(source, mine / f".{name}.new")
            os.replace(mine / f".{name}.new", mine / name)
        os.utime(mine / "tls.crt", (time.time() + 5, time.time() + 5))
        await stub.GetUser(user_pb2.GetUserRequest(id="b"))
        serial = x509.load_pem_x509_certificate
        assert recorder.serials == [
            serial(first.cert_file.read_bytes()).serial_number,
            serial(renewed.cert_file.read_bytes()).serial_number,
        ]
    finally:
        await channel.close()
        await server.stop(0)
