"""An external app: runs in a fresh virtualenv outside the repository that has only the
shop-mesh-client wheel (and what it depends on) installed, and calls the gateway with
the Connect clients (sync and async) and a grpcio stub.

    python client_program.py http://127.0.0.1:<port>    (the token in SHOP_TOKEN)

Prints one `ok ...` line per check; a failed check raises (exit status 1)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.rpc import error_details_pb2, status_pb2

from shop.common.v1 import money_pb2
from shop.product.v1 import product_connect, product_pb2, product_pb2_grpc


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def check_isolation() -> None:
    """Nothing of the repository is importable; the contracts come from the wheel."""
    for name in ("services", "gateway", "tests", "scripts", "buf"):
        expect(importlib.util.find_spec(name) is None, f"{name!r} is importable here")
    installed = Path(product_pb2.__file__ or "").resolve()
    expect(installed.is_relative_to(Path(sys.prefix).resolve()), f"{installed} not in the venv")
    expect(
        importlib.util.find_spec("shop.product.v1.product_internal_pb2") is None,
        "an internal contract was shipped",
    )
    # The validation rules travel in the descriptors; the wheel's own buf/validate module
    # (imported by name: it exists only in the wheel) reads them.
    validate: Any = importlib.import_module("shop._vendor.buf.validate.validate_pb2")
    field = product_pb2.CreateProductRequest.DESCRIPTOR.fields_by_name["name"]
    rules = field.GetOptions().Extensions[validate.field]
    expect(rules.string.min_len == 1 and rules.string.max_len == 200, f"rules: {rules}")
    print("ok isolated:", installed)


def new_product(label: str) -> product_pb2.CreateProductRequest:
    return product_pb2.CreateProductRequest(
        name=f"{label} {uuid.uuid4().hex[:6]}",
        price=money_pb2.Money(currency_code="EUR", amount_minor=1299),
        stock=4,
    )


INVALID = product_pb2.CreateProductRequest(
    name="", price=money_pb2.Money(currency_code="EUR", amount_minor=5)
)


def violated_fields(details: list[Any]) -> set[str]:
    """The fields of the google.rpc.BadRequest among a ConnectError's details."""
    return {
        violation.field
        for detail in details
        if detail.type_name == "google.rpc.BadRequest"
        for violation in error_details_pb2.BadRequest.FromString(
            detail.message_bytes
        ).field_violations
    }


def same(created: product_pb2.Product, fetched: product_pb2.Product, what: str) -> None:
    expect(created.id.startswith("prd_"), f"{what}: id {created.id!r}")
    expect(fetched.id == created.id, f"{what}: read back {fetched.id!r}")
    expect(fetched.name == created.name, f"{what}: name {fetched.name!r} != {created.name!r}")
    expect(fetched.price == created.price, f"{what}: price {fetched.price} != {created.price}")
    expect(fetched.price.amount_minor == 1299 and fetched.stock == 4, f"{what}: {fetched}")


def check_connect_sync(url: str, auth: dict[str, str]) -> None:
    with product_connect.ProductServiceClientSync(url) as products:
        request = new_product("Sync")
        created = products.create_product(request, headers=auth).product
        expect(created.name == request.name, f"sync: created {created}")
        fetched = products.get_product(product_pb2.GetProductRequest(id=created.id), headers=auth)
        same(created, fetched.product, "connect sync")
        try:
            products.create_product(INVALID, headers=auth)
        except ConnectError as error:
            expect(error.code == Code.INVALID_ARGUMENT, f"sync: {error.code}")
            expect("name" in violated_fields(list(error.details)), f"sync: {error.details}")
        else:
            raise AssertionError("sync: an empty name was accepted")
    print("ok connect sync")


async def check_connect_async(url: str, auth: dict[str, str]) -> None:
    variants: list[tuple[str, dict[str, Any]]] = [
        ("connect json", {"codec": google_protobuf_json_codec()}),
        ("grpc-web", {"protocol": ProtocolType.GRPC_WEB}),
    ]
    for label, options in variants:
        async with product_connect.ProductServiceClient(url, **options) as products:
            created = (await products.create_product(new_product(label), headers=auth)).product
            fetched = await products.get_product(
                product_pb2.GetProductRequest(id=created.id), headers=auth
            )
            same(created, fetched.product, f"async {label}")
            try:
                await products.create_product(INVALID, headers=auth)
            except ConnectError as error:
                expect(error.code == Code.INVALID_ARGUMENT, f"async {label}: {error.code}")
                expect("name" in violated_fields(list(error.details)), f"{label}: no violation")
            else:
                raise AssertionError(f"async {label}: an empty name was accepted")
        print(f"ok connect async ({label})")


def check_grpcio(address: str, token: str) -> None:
    """Real gRPC (HTTP/2 with trailers) against the gateway's port."""
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(address) as channel:
        products = product_pb2_grpc.ProductServiceStub(channel)
        created = products.CreateProduct(new_product("grpcio"), metadata=metadata, timeout=10)
        fetched = products.GetProduct(
            product_pb2.GetProductRequest(id=created.product.id), metadata=metadata, timeout=10
        )
        same(created.product, fetched.product, "grpcio")
        try:
            products.CreateProduct(INVALID, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            call: Any = error  # a grpc.Call too
            expect(call.code() == grpc.StatusCode.INVALID_ARGUMENT, f"grpcio: {call.code()}")
            trailers = dict(call.trailing_metadata() or ())
            status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
            fields = set()
            for detail in status.details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    fields |= {v.field for v in bad_request.field_violations}
            expect("name" in fields, f"grpcio: {status}")
        else:
            raise AssertionError("grpcio: an empty name was accepted")
    print("ok grpcio")


def main() -> None:
    url = sys.argv[1]
    token = os.environ["SHOP_TOKEN"]
    auth = {"authorization": f"Bearer {token}"}
    check_isolation()
    check_connect_sync(url, auth)
    asyncio.run(check_connect_async(url, auth))
    check_grpcio(url.removeprefix("http://"), token)


if __name__ == "__main__":
    main()
