"""Who may call what is declared by every RPC of the contracts, and read back right."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2

from gateway.auth import require_token
from services.common import access
from services.common.errors import Unauthenticated
from shop.common.v1 import access_pb2

SERVICES = {
    "shop.user.v1.UserService",
    "shop.user.v1.UserInternalService",
    "shop.user.v1.AuthService",
    "shop.product.v1.ProductService",
    "shop.product.v1.ProductInternalService",
    "shop.order.v1.OrderService",
    "shop.order.v1.OrderInternalService",
    "shop.notification.v1.NotificationService",
    "shop.payment.v1.PaymentService",
    "shop.payment.v1.PaymentInternalService",
}
PUBLIC = {
    "/shop.user.v1.UserService/CreateUser",
    "/shop.user.v1.AuthService/SignUp",
    "/shop.user.v1.AuthService/SignIn",
    "/shop.user.v1.AuthService/Refresh",
    "/shop.user.v1.AuthService/SignOut",
    "/shop.product.v1.ProductService/GetProduct",
    "/shop.product.v1.ProductService/ListProducts",
    "/shop.product.v1.ProductService/BatchGetProducts",
}
ADMIN = {
    "/shop.user.v1.UserService/ListUsers",
    "/shop.product.v1.ProductService/CreateProduct",
    "/shop.product.v1.ProductService/UpdateProduct",
}
SERVICE_ONLY = {
    "/shop.user.v1.UserInternalService/ValidateUser",
    "/shop.user.v1.UserInternalService/StreamUserEvents",
    "/shop.product.v1.ProductInternalService/ReserveStock",
    "/shop.product.v1.ProductInternalService/ReleaseStock",
    "/shop.order.v1.OrderInternalService/StreamOrderEvents",
    "/shop.payment.v1.PaymentInternalService/Authorize",
    "/shop.payment.v1.PaymentInternalService/Capture",
    "/shop.payment.v1.PaymentInternalService/CapturePayments",
    "/shop.payment.v1.PaymentInternalService/Void",
    "/shop.payment.v1.PaymentInternalService/Refund",
}


def with_level(level: int) -> set[str]:
    return {p for p, declared in access.declared_by_procedure().items() if declared == level}


def test_every_rpc_of_every_service_declares_its_access() -> None:
    table = access.declared_by_procedure()
    assert {p.split("/")[1] for p in table} == SERVICES
    assert len(table) == 32
    assert with_level(access_pb2.ACCESS_UNSPECIFIED) == set()


def test_public_admin_and_service_rpcs_are_declared_as_such() -> None:
    assert with_level(access.PUBLIC) == PUBLIC
    assert with_level(access.ADMIN) == ADMIN
    assert with_level(access.SERVICE) == SERVICE_ONLY
    internal = {p for p in access.declared_by_procedure() if "InternalService/" in p}
    assert internal == SERVICE_ONLY
    signed_in = set(access.declared_by_procedure()) - PUBLIC - ADMIN - SERVICE_ONLY
    assert with_level(access.SIGNED_IN) == signed_in and len(signed_in) == 11


def test_missing_or_unknown_access_means_signed_in() -> None:
    check = health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]
    assert isinstance(check, MethodDescriptor)  # the upb class, typed apart by the stubs
    assert access.declared(check) == access_pb2.ACCESS_UNSPECIFIED
    assert access.access_of("/grpc.health.v1.Health/Check") == access.SIGNED_IN
    assert access.access_of("/shop.user.v1.UserService/NoSuchMethod") == access.SIGNED_IN
    assert access.access_of("/shop.user.v1.UserService/GetUser") == access.SIGNED_IN
    assert access.access_of("/shop.user.v1.UserService/ListUsers") == access.ADMIN
    assert access.access_of("/shop.order.v1.OrderInternalService/StreamOrderEvents") == (
        access.SERVICE
    )


def test_only_public_procedures_go_without_a_token() -> None:
    for procedure in PUBLIC:
        assert access.is_public(procedure)
        require_token(procedure, None)
    for procedure in ("/shop.user.v1.UserService/GetUser", "/shop.user.v1.UserService/Nope"):
        assert not access.is_public(procedure)
        require_token(procedure, "Bearer x")  # verified by the middleware, not here
        with pytest.raises(Unauthenticated) as refused:
            require_token(procedure, None)
        assert refused.value.reason == "TOKEN_MISSING"
