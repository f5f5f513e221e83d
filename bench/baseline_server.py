"""The baseline: a bare grpc.aio GetProduct answering from memory (no database, no
interceptors). It is the limit for a Python gRPC server on this machine.

With BASELINE_TLS_DIR set it serves mutual TLS with a certificate of the development
PKI there (services.common.tls), as the services do: TLS's cost measured on a
server that does nothing else is the most it can cost a service."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import grpc

from shop.common.v1 import money_pb2
from shop.product.v1 import product_pb2, product_pb2_grpc

PRODUCT = product_pb2.Product(
    id="prd_baseline",
    name="Mug",
    description="",
    price=money_pb2.Money(currency_code="EUR", amount_minor=1299),
    stock=10,
)


class InMemoryProducts(product_pb2_grpc.ProductServiceServicer):
    CreateProduct = ListProducts = UpdateProduct = BatchGetProducts = None  # type: ignore[assignment]

    async def GetProduct(
        self, request: product_pb2.GetProductRequest, context: object
    ) -> product_pb2.GetProductResponse:
        return product_pb2.GetProductResponse(product=PRODUCT)


async def main() -> None:
    server = grpc.aio.server()
    product_pb2_grpc.add_ProductServiceServicer_to_server(InMemoryProducts(), server)
    tls_dir = os.environ.get("BASELINE_TLS_DIR")
    if tls_dir:
        from services.common.tls import SERVICE, dev_pki

        credentials = dev_pki(Path(tls_dir), "baseline", SERVICE).server_credentials()
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"service": "baseline", "listening": f"127.0.0.1:{port}"}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
