"""Places orders over gRPC for the multi-host tests, and prints what it saw as JSON.

    python -m tests.load_client --user A:50051 --product B:50052 --order C:50053 \\
        --ca ca.pem --cert client.pem --key client-key.pem --rate 20 --until-stdin-closes

It runs inside a test host's network namespace, as a process of its own, so it does
not import tests.tokens (which makes keys per process): the certificate files come as
arguments and the bearer token (an admin's) from LOAD_TOKEN. It signs up `--users`
users and stocks one product, prints `{"ready": ...}`, then starts orders open-loop at
`--rate` a second until stdin closes (or `--max-orders`), so the test decides when
the load ends. Each order keeps its idempotency key across attempts and is retried
while the mesh answers UNAVAILABLE or DEADLINE_EXCEEDED, for up to `--give-up-after`
seconds: a well-behaved client, whose every order ends placed exactly once or failed
for good. The last line is `{"summary": ...}` with every order's outcome and
attempts, in CLOCK_MONOTONIC seconds (the same clock as the test's, in any namespace).

Chosen over bench/loadgen.py through a gateway: the checks need each order's id and
its outcome under one idempotency key (to compare with the databases exactly), and
the gateway is not what these tests are about.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from shop.common.v1 import money_pb2
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.product.v1 import product_pb2, product_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class Outcome:
    key: str
    start: float
    end: float = 0.0
    order_id: str = ""
    code: str = ""  # the final status: OK, or why it failed for good
    # Each failed attempt: [monotonic time it ended, status code, details].
    errors: list[list[Any]] = field(default_factory=list)


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(args.ca).read_bytes(),
            private_key=Path(args.key).read_bytes(),
            certificate_chain=Path(args.cert).read_bytes(),
        )
        self.metadata = (("authorization", f"Bearer {os.environ['LOAD_TOKEN']}"),)
        self.channels = [
            grpc.aio.secure_channel(address, credentials)
            for address in (args.user, args.product, args.order)
        ]
        self.users = user_pb2_grpc.UserServiceStub(self.channels[0])
        self.products = product_pb2_grpc.ProductServiceStub(self.channels[1])
        self.orders = order_pb2_grpc.OrderServiceStub(self.channels[2])
        self.args = args

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def setup(self) -> tuple[list[str], str]:
        users = []
        for _ in range(self.args.users):
            reply = await self.users.CreateUser(
                user_pb2.CreateUserRequest(
                    email=f"{uuid.uuid4().hex[:12]}@example.com", display_name="Load"
                ),
                metadata=self.metadata,
                timeout=10,
            )
            users.append(reply.user.id)
        product = await self.products.CreateProduct(
            product_pb2.CreateProductRequest(
                name="Load mug",
                price=money_pb2.Money(currency_code="EUR", amount_minor=500),
                stock=self.args.stock,
            ),
            metadata=self.metadata,
            timeout=10,
        )
        return users, product.product.id

    async def place(self, user_id: str, product_id: str) -> Outcome:
        """One order under one idempotency key, retried until placed or given up."""
        outcome = Outcome(key=uuid.uuid4().hex, start=time.monotonic())
        give_up = outcome.start + self.args.give_up_after
        request = order_pb2.CreateOrderRequest(
            user_id=user_id,
            idempotency_key=outcome.key,
            items=[order_pb2.CreateOrderItem(product_id=product_id, quantity=1)],
        )
        backoff = 0.1
        while True:
            timeout = min(self.args.attempt_timeout, give_up - time.monotonic())
            try:
                reply = await self.orders.CreateOrder(
                    request, metadata=self.metadata, timeout=max(timeout, 0.1)
                )
            except grpc.aio.AioRpcError as error:
                now = time.monotonic()
                outcome.errors.append([now, error.code().name, (error.details() or "")[:120]])
                if error.code() not in RETRYABLE or now + backoff >= give_up:
                    outcome.code, outcome.end = error.code().name, now
                    return outcome
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            outcome.order_id, outcome.code, outcome.end = reply.order.id, "OK", time.monotonic()
            return outcome


async def stdin_closed() -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()


def emit(kind: str, value: object) -> None:
    print(json.dumps({kind: value}), flush=True)


async def main(args: argparse.Namespace) -> None:
    client = Client(args)
    try:
        users, product_id = await client.setup()
        emit("ready", {"users": users, "product_id": product_id, "stock": args.stock})
        stop = asyncio.Event()
        watcher = None
        if args.until_stdin_closes:
            watcher = asyncio.create_task(stdin_closed())
            watcher.add_done_callback(lambda _: stop.set())
        in_flight = asyncio.Semaphore(args.in_flight)
        tasks: list[asyncio.Task[Outcome]] = []

        async def one(i: int) -> Outcome:
            async with in_flight:
                return await client.place(users[i % len(users)], product_id)

        start = time.monotonic()
        for i in range(args.max_orders):
            if stop.is_set():
                break
            tasks.append(asyncio.create_task(one(i)))
            with contextlib.suppress(TimeoutError):
                delay = start + (i + 1) / args.rate - time.monotonic()
                await asyncio.wait_for(stop.wait(), max(delay, 0.0))
        load_end = time.monotonic()
        outcomes = await asyncio.gather(*tasks)
        if watcher is not None:
            watcher.cancel()
        emit(
            "summary",
            {
                "product_id": product_id,
                "load_start": start,
                "load_end": load_end,
                "placed": sum(o.code == "OK" for o in outcomes),
                "failed": sum(o.code != "OK" for o in outcomes),
                "orders": [asdict(o) for o in outcomes],
            },
        )
    finally:
        await client.close()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for service in ("user", "product", "order"):
        parser.add_argument(f"--{service}", required=True, help=f"the {service} service host:port")
    for part in ("ca", "cert", "key"):
        parser.add_argument(f"--{part}", required=True, help=f"TLS {part} file (PEM)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--stock", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=20.0, help="orders started a second")
    parser.add_argument("--max-orders", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--attempt-timeout", type=float, default=10.0)
    parser.add_argument("--give-up-after", type=float, default=40.0)
    parser.add_argument("--until-stdin-closes", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
