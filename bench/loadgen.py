"""A realistic traffic mix against a running mesh, at a chosen rate and duration.

    python -m bench.loadgen --target http://127.0.0.1:8080 --rate 20 --duration 60

Modelled on Online Boutique's load generator: weighted tasks (browse the
catalogue 50, view a product 25, place an order 4, place an order on a card
that is declined 1, list one's orders 10, read one's payments 5, open a
notification stream 5), started open-loop at `--rate` per second with Poisson
arrivals, so a slow mesh shows up as latency and a backlog, not as a quietly
lower request rate. It talks Connect through the gateway with the generated
clients, prints per-operation figures every `--report-every` seconds and a
summary at the end, and can write that summary as JSON.

Written here rather than with Locust: the notification stream is a server
stream that the generated asyncio clients hold open cheaply, and the whole
generator is one process of a few hundred lines with no gevent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.rpc import error_details_pb2

from services.common.auth import mint
from shop.common.v1 import money_pb2
from shop.notification.v1 import notification_connect, notification_pb2
from shop.order.v1 import order_connect, order_pb2
from shop.payment.v1 import payment_connect, payment_pb2
from shop.product.v1 import product_connect, product_pb2
from shop.user.v1 import user_connect, user_pb2

# Every fifth order is on a card that is declined (a payment failure: no order, a
# notification); "payments" lists a user's payments and reads the newest one.
DEFAULT_MIX = {
    "browse": 50,
    "view": 25,
    "order": 4,
    "decline": 1,
    "list": 10,
    "payments": 5,
    "stream": 5,
}
# The simulated provider's payment method that is always declined.
DECLINING_METHOD = "card_decline"
CATALOGUE_SIZE = 20
USERS = 20


def percentile(ordered: list[float], fraction: float) -> float | None:
    """The value at `fraction` of a sorted list, rounded to 0.01 ms; None when there is none."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)


def shown(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@dataclass
class OpStats:
    """Latencies (ms) and errors of one operation, for the whole run and since the last report."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    since_report: list[float] = field(default_factory=list)
    errors_since_report: int = 0
    unmeasured: int = 0  # finished well with nothing to time (a stream with no message)

    def ok(self, millis: float) -> None:
        self.latencies.append(millis)
        self.since_report.append(millis)

    def failed(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        self.errors_since_report += 1

    def count(self) -> int:
        return len(self.latencies) + self.unmeasured + sum(self.errors.values())

    def summary(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "ok": len(ordered),
            "errors": dict(self.errors),
            "unmeasured": self.unmeasured,
            "rate": round(self.count() / seconds, 2),
            "p50_ms": percentile(ordered, 0.50),
            "p90_ms": percentile(ordered, 0.90),
            "p99_ms": percentile(ordered, 0.99),
            "max_ms": percentile(ordered, 1.0),
        }


class Shop:
    """The clients, and the users and products the traffic picks from."""

    def __init__(
        self, target: str, timeout_ms: int, stream_hold: float, signing_key: bytes
    ) -> None:
        self.target = target
        self._signing_key = signing_key
        self._tokens: dict[str, dict[str, str]] = {}
        self.timeout_ms = timeout_ms
        self.stream_hold = stream_hold
        self.users = user_connect.UserServiceClient(target, timeout_ms=timeout_ms)
        self.products = product_connect.ProductServiceClient(target, timeout_ms=timeout_ms)
        self.orders = order_connect.OrderServiceClient(target, timeout_ms=timeout_ms)
        self.payments = payment_connect.PaymentServiceClient(target, timeout_ms=timeout_ms)
        self.notifications = notification_connect.NotificationServiceClient(target)
        self.user_ids: list[str] = []
        self.product_ids: list[str] = []

    def as_user(self, user_id: str, roles: tuple[str, ...] = ()) -> dict[str, str]:
        """Headers that sign the call in as `user_id` (a token signed with --signing-key)."""
        if user_id not in self._tokens:
            token = mint(self._signing_key, user_id, roles, ttl=24 * 3600)
            self._tokens[user_id] = {"authorization": f"Bearer {token}"}
        return self._tokens[user_id]

    async def close(self) -> None:
        for client in (self.users, self.products, self.orders, self.payments, self.notifications):
            await client.close()

    async def prepare(self, users: int, catalogue: int) -> None:
        """Signs up `users` users; tops the catalogue up to `catalogue` products with stock."""
        run = uuid.uuid4().hex[:6]
        for index in range(users):
            request = user_pb2.CreateUserRequest(
                email=f"load-{run}-{index}@example.com", display_name=f"Load {index}"
            )
            self.user_ids.append((await self.users.create_user(request)).user.id)
        listed = await self.products.list_products(product_pb2.ListProductsRequest(page_size=1000))
        self.product_ids = [product.id for product in listed.products if product.stock > 1000]
        for index in range(len(self.product_ids), catalogue):
            product = product_pb2.CreateProductRequest(
                name=f"Load product {run}-{index}",
                price=money_pb2.Money(currency_code="EUR", amount_minor=100 + 50 * index),
                stock=1_000_000_000,
            )
            admin = self.as_user("usr_loadgen_admin", ("admin",))
            reply = await self.products.create_product(product, headers=admin)
            self.product_ids.append(reply.product.id)

    def operations(self) -> dict[str, Callable[[], Awaitable[float | None]]]:
        return {
            "browse": self.browse,
            "view": self.view,
            "order": self.place_order,
            "decline": self.place_declined_order,
            "list": self.list_orders,
            "payments": self.read_payments,
            "stream": self.open_stream,
        }

    async def browse(self) -> None:
        await self.products.list_products(product_pb2.ListProductsRequest(page_size=10))

    async def view(self) -> None:
        await self.products.get_product(
            product_pb2.GetProductRequest(id=random.choice(self.product_ids))
        )

    async def place_order(self, payment_method: str = "") -> None:
        items = [
            order_pb2.CreateOrderItem(product_id=product_id, quantity=random.randint(1, 3))
            for product_id in random.sample(
                self.product_ids, random.randint(1, min(3, len(self.product_ids)))
            )
        ]
        user_id = random.choice(self.user_ids)
        request = order_pb2.CreateOrderRequest(
            user_id=user_id,
            idempotency_key=uuid.uuid4().hex,
            items=items,
            payment_method=payment_method,
        )
        await self.orders.create_order(request, headers=self.as_user(user_id))

    async def place_declined_order(self) -> None:
        """An order on a card that is declined: the expected answer is FAILED_PRECONDITION
        PAYMENT_DECLINED (the stock is given back, the user is notified); anything else,
        an order placed included, is an error."""
        try:
            await self.place_order(DECLINING_METHOD)
        except ConnectError as error:
            if error.code == Code.FAILED_PRECONDITION and reason_of(error) == "PAYMENT_DECLINED":
                return
            raise
        raise ConnectError(Code.INTERNAL, "an order on a declining card was placed")

    async def read_payments(self) -> None:
        """One page of a user's payments, then the newest of them by id (as a client
        showing a payment's page would)."""
        user_id = random.choice(self.user_ids)
        headers = self.as_user(user_id)
        listed = await self.payments.list_payments(
            payment_pb2.ListPaymentsRequest(user_id=user_id, page_size=10), headers=headers
        )
        if listed.payments:
            await self.payments.get_payment(
                payment_pb2.GetPaymentRequest(id=listed.payments[0].id), headers=headers
            )

    async def list_orders(self) -> None:
        user_id = random.choice(self.user_ids)
        await self.orders.list_orders(
            order_pb2.ListOrdersRequest(user_id=user_id, page_size=20),
            headers=self.as_user(user_id),
        )

    async def open_stream(self) -> float | None:
        """Holds a notification stream open for `stream_hold` seconds (the call's deadline).

        Returns the time to its first message (unread ones are replayed at once), or
        None when nothing arrived while it was open.
        """
        user_id = random.choice(self.user_ids)
        request = notification_pb2.StreamNotificationsRequest(user_id=user_id)
        started = time.perf_counter()
        first: float | None = None
        try:
            async for _ in self.notifications.stream_notifications(
                request, timeout_ms=int(self.stream_hold * 1000), headers=self.as_user(user_id)
            ):
                if first is None:
                    first = (time.perf_counter() - started) * 1000
        except ConnectError as error:
            if error.code != Code.DEADLINE_EXCEEDED:
                raise
        return first


class LoadRun:
    def __init__(self, shop: Shop, mix: dict[str, int], rate: float, max_in_flight: int) -> None:
        self.shop = shop
        self.mix = mix
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.stats = {name: OpStats() for name in mix}
        self.in_flight = 0
        self.skipped = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.operations = shop.operations()

    async def _one(self, name: str, operation: Callable[[], Awaitable[float | None]]) -> None:
        started = time.perf_counter()
        self.in_flight += 1
        try:
            measured = await operation()
        except ConnectError as error:
            self.stats[name].failed(error.code.name.lower())
        except Exception as error:  # a transport failure counts as an error, not a crash
            self.stats[name].failed(type(error).__name__)
        else:
            if measured is None and name == "stream":
                self.stats[name].unmeasured += 1
            else:
                self.stats[name].ok(measured or (time.perf_counter() - started) * 1000)
        finally:
            self.in_flight -= 1

    def start_one(self) -> None:
        if self.in_flight >= self.max_in_flight:
            self.skipped += 1
            return
        name = random.choices(list(self.mix), weights=list(self.mix.values()))[0]
        task = asyncio.create_task(self._one(name, self.operations[name]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, duration: float, report_every: float) -> float:
        """Starts operations for `duration` seconds; returns that window's length (for rates)."""
        started = time.perf_counter()
        next_report = started + report_every
        next_start = started
        while (now := time.perf_counter()) < started + duration:
            if now >= next_start:
                self.start_one()
                next_start += random.expovariate(self.rate)
            if now >= next_report:
                self.report(now - started)
                next_report += report_every
            await asyncio.sleep(max(0.0, min(next_start, next_report) - time.perf_counter()))
        window = time.perf_counter() - started
        # Let what was started finish: unary calls within their deadline, streams after their hold.
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=max(self.shop.timeout_ms / 1000, 1) + 1)
        leftovers = list(self.tasks)
        for task in leftovers:
            task.cancel()
        # Wait for the cancelled calls to unwind before the clients close under them.
        await asyncio.gather(*leftovers, return_exceptions=True)
        return window

    def report(self, elapsed: float) -> None:
        parts = []
        for name, stats in self.stats.items():
            window = sorted(stats.since_report)
            parts.append(
                f"{name} {len(window)} ok/{stats.errors_since_report} err "
                f"p50 {shown(percentile(window, 0.5))} p99 {shown(percentile(window, 0.99))}"
            )
            stats.since_report.clear()
            stats.errors_since_report = 0
        print(
            f"[{elapsed:6.1f}s in flight {self.in_flight}] " + " | ".join(parts),
            file=sys.stderr,
            flush=True,
        )

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "seconds": round(seconds, 2),
            "target_rate": self.rate,
            "skipped_at_max_in_flight": self.skipped,
            "operations": {name: stats.summary(seconds) for name, stats in self.stats.items()},
        }


def reason_of(error: ConnectError) -> str:
    """The google.rpc.ErrorInfo reason among a Connect error's details ("" if none)."""
    for detail in error.details:
        if detail.type_name == "google.rpc.ErrorInfo":
            return str(error_details_pb2.ErrorInfo.FromString(detail.message_bytes).reason)
    return ""


def parse_mix(text: str) -> dict[str, int]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in DEFAULT_MIX or not weight.isdigit():
            raise argparse.ArgumentTypeError(
                f"bad mix entry {part!r}: expected name=weight with name in {sorted(DEFAULT_MIX)}"
            )
        mix[name] = int(weight)
    return {name: weight for name, weight in mix.items() if weight > 0}


def render(summary: dict[str, Any]) -> str:
    lines = [
        "| operation | ok | errors | rate/s | p50 ms | p90 ms | p99 ms | max ms |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        # A stream's latency is the time to its first message; quiet streams are counted in ok.
    ]
    for name, op in summary["operations"].items():
        errors = ", ".join(f"{code} {count}" for code, count in op["errors"].items()) or "0"
        lines.append(
            f"| {name} | {op['ok'] + op['unmeasured']} | {errors} | {op['rate']} | "
            + " | ".join(shown(op[key]) for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
            + " |"
        )
    return "\n".join(lines)


async def generate(args: argparse.Namespace) -> dict[str, Any]:
    shop = Shop(args.target, args.timeout_ms, args.stream_hold, args.signing_key.read_bytes())
    try:
        await shop.prepare(args.users, args.catalogue)
        load = LoadRun(shop, args.mix, args.rate, args.max_in_flight)
        seconds = await load.run(args.duration, args.report_every)
        return load.summary(seconds)
    finally:
        await shop.close()


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    options.add_argument("--target", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"))
    options.add_argument("--rate", type=float, default=20.0, help="operations started per second")
    options.add_argument("--duration", type=float, default=30.0, help="seconds")
    options.add_argument("--mix", type=parse_mix, default=DEFAULT_MIX, help="browse=50,view=25,...")
    options.add_argument("--report-every", type=float, default=5.0, help="seconds")
    options.add_argument("--stream-hold", type=float, default=5.0, help="seconds open")
    options.add_argument("--timeout-ms", type=int, default=5000, help="deadline of unary calls")
    options.add_argument("--max-in-flight", type=int, default=512)
    options.add_argument("--users", type=int, default=USERS)
    options.add_argument("--catalogue", type=int, default=CATALOGUE_SIZE)
    options.add_argument("--json", help="write the summary here as JSON")
    options.add_argument(
        "--signing-key",
        type=Path,
        default=Path(os.environ.get("DATA_DIR", "./var")) / "dev-keys" / "private.pem",
        help="EC private key (PEM) the gateway trusts; default: make run's development key",
    )
    return options


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        parser().error("--rate and --duration must be positive")
    summary = asyncio.run(generate(args))
    print(render(summary))
    if skipped := summary["skipped_at_max_in_flight"]:
        print(f"{skipped} operations skipped: {args.max_in_flight} already in flight")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=2)
    # Everything is written and the clients are closed: skip interpreter finalisation.
    # Under load the suite twice saw this process die with SIGABRT right after its run,
    # with no Python error, which points at the HTTP client's native runtime shutting down.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
