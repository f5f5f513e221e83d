"""`make bench`: both tiers against a baseline and a peer, in one bounded run on loopback.

Starts what it measures (a bare grpc.aio server, the mesh with its gateway, a
FastAPI peer), measures each at 1 and 64 requests in flight, stops everything,
prints a table and the ratios the project aims for, and writes
bench/results/<time>.json and .md. h2load measures gRPC, wrk HTTP/1.1 (Connect,
REST, the peer); an asyncio client of our own measures order-to-notification
latency on an open stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from bench.loadtools import (
    Figures,
    h2load_grpc,
    lua_binary_request,
    lua_create_orders,
    lua_request,
    wrk,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LEVELS = (1, 64)
GOALS = {
    "internal GetProduct / FastAPI peer (64 in flight)": (">=", 1.5),
    "gateway Connect-JSON GetProduct / FastAPI peer (64 in flight)": (">=", 1.0),
    "gateway p50 - direct gRPC p50 at 1 in flight (ms)": ("<=", 0.5),
    "CreateOrder / internal GetProduct (64 in flight)": (">=", 0.25),
    "order-to-notification p99 (ms)": ("<=", 50.0),
}


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@asynccontextmanager
async def process(argv: list[str], env: dict[str, str], name: str) -> AsyncIterator[str]:
    """A process that prints {"listening": "host:port"} on its first line."""
    child = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"{name} did not start")
        yield json.loads(line)["listening"]
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), 15)
            except TimeoutError:
                child.kill()
                await child.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def uvicorn_peer(data_dir: Path) -> AsyncIterator[str]:
    port = free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "bench.fastapi_peer:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        cwd=ROOT,
        env={**os.environ, "PEER_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'peer.db'}"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        child.send_signal(signal.SIGTERM)
        await child.wait()


async def start_mesh(stack: AsyncExitStack, data_dir: Path) -> dict[str, str]:
    addresses: dict[str, str] = {}
    # No per-client rate limit: the load tools call from one address on purpose. And no
    # TLS inside: h2load can't present a client certificate, and the baseline and the
    # peer are plaintext too (mutual TLS is what the mesh runs by default).
    env = {
        "DATA_DIR": str(data_dir),
        "PORT": "0",
        "LOG_LEVEL": "WARNING",
        "GATEWAY_RATE_LIMIT": "0",
        "TLS_MODE": "plaintext",
    }
    for name in ("user", "product", "order", "notification", "gateway"):
        peers = {f"{peer.upper()}_SERVICE_ADDR": address for peer, address in addresses.items()}
        module = "gateway" if name == "gateway" else f"services.{name}"
        addresses[name] = await stack.enter_async_context(
            process([sys.executable, "-m", module], {**env, **peers}, name)
        )
    return addresses


def signed_in(data_dir: Path, user_id: str, roles: tuple[str, ...] = ()) -> str:
    """A token from the development key the mesh made in its data directory."""
    from services.common.auth import mint

    return mint((data_dir / "dev-keys" / "private.pem").read_bytes(), user_id, roles)


async def seed(gateway: str, data_dir: Path) -> tuple[str, str]:
    """A user and a product with plenty of stock, through the gateway."""
    from shop.common.v1 import money_pb2
    from shop.product.v1 import product_connect, product_pb2
    from shop.user.v1 import user_connect, user_pb2

    async with (
        user_connect.UserServiceClient(f"http://{gateway}") as users,
        product_connect.ProductServiceClient(f"http://{gateway}") as products,
    ):
        user = (
            await users.create_user(
                user_pb2.CreateUserRequest(
                    email=f"{uuid.uuid4().hex[:8]}@bench.io", display_name="Bench"
                )
            )
        ).user
        product = (
            await products.create_product(
                product_pb2.CreateProductRequest(
                    name="Mug",
                    price=money_pb2.Money(currency_code="EUR", amount_minor=1299),
                    stock=2_000_000_000,
                ),
                headers={"authorization": f"Bearer {signed_in(data_dir, 'usr_bench', ('admin',))}"},
            )
        ).product
    return user.id, product.id


async def notification_latency(
    gateway: str, user_id: str, product_id: str, orders: int, token: str
) -> Figures:
    """Order placed (reply received) -> its notification read from an open Connect stream."""
    from shop.notification.v1 import notification_connect, notification_pb2
    from shop.order.v1 import order_connect, order_pb2

    latencies: list[float] = []
    headers = {"authorization": f"Bearer {token}"}
    async with (
        notification_connect.NotificationServiceClient(f"http://{gateway}") as notifications,
        order_connect.OrderServiceClient(f"http://{gateway}") as client,
    ):
        stream = aiter(
            notifications.stream_notifications(
                notification_pb2.StreamNotificationsRequest(user_id=user_id, cursor=""),
                headers=headers,
            )
        )
        # Drain what is there already (orders placed by earlier scenarios are unread).
        pending = asyncio.ensure_future(anext(stream))
        while True:
            done, _ = await asyncio.wait([pending], timeout=1.0)
            if not done:
                break
            pending = asyncio.ensure_future(anext(stream))
        started = time.perf_counter()
        for _ in range(orders):
            request = order_pb2.CreateOrderRequest(
                user_id=user_id,
                idempotency_key=uuid.uuid4().hex,
                items=[order_pb2.CreateOrderItem(product_id=product_id, quantity=1)],
            )
            placed = (await client.create_order(request, headers=headers)).order
            sent = time.perf_counter()
            while True:
                message = await asyncio.wait_for(pending, 10)
                pending = asyncio.ensure_future(anext(stream))
                if message.notification.order_id == placed.id:
                    latencies.append((time.perf_counter() - sent) * 1000)
                    break
        elapsed = time.perf_counter() - started
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
    ordered = sorted(latencies)
    return Figures(
        "order -> notification (Connect stream)",
        "asyncio client",
        1,
        len(latencies),
        len(latencies) / elapsed,
        statistics.median(ordered),
        ordered[int(0.99 * (len(ordered) - 1))],
        0,
    )


def wanted(name: str, only: set[str]) -> bool:
    """`--only 2,3a,5,notify` picks scenarios by their number; empty picks all."""
    key = "notify" if name.startswith("order ->") else name.split()[0]
    return not only or key in only or key.rstrip("abc") in only


async def measure(seconds: float, notify_orders: int, only: set[str]) -> list[Figures]:
    from shop.product.v1 import product_pb2

    figures: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="shop-bench-") as tmp:
        data_dir = Path(tmp)
        async with AsyncExitStack() as stack:
            say("starting the baseline server, the mesh and the FastAPI peer")
            baseline = await stack.enter_async_context(
                process([sys.executable, "-m", "bench.baseline_server"], {}, "baseline")
            )
            mesh = await start_mesh(stack, data_dir)
            peer = await stack.enter_async_context(uvicorn_peer(data_dir))
            user_id, product_id = await seed(mesh["gateway"], data_dir)
            token = signed_in(data_dir, user_id)
            get = product_pb2.GetProductRequest(id=product_id)
            connect_json = lua_request("POST", json.dumps({"id": product_id}))
            connect_proto = lua_binary_request(get.SerializeToString(), "application/proto")
            plans: list[tuple[str, Callable[[], Awaitable[Figures]]]] = []
            product_url = f"http://{mesh['product']}/shop.product.v1.ProductService/GetProduct"
            baseline_url = f"http://{baseline}/shop.product.v1.ProductService/GetProduct"
            connect_url = f"http://{mesh['gateway']}/shop.product.v1.ProductService/GetProduct"
            rest_url = f"http://{mesh['gateway']}/v1/products/{product_id}"
            baseline_body = product_pb2.GetProductRequest(id="prd_baseline").SerializeToString()
            for level in LEVELS:
                orders = lua_create_orders(user_id, product_id, uuid.uuid4().hex[:8], token)
                scenarios: list[tuple[str, Callable[..., Awaitable[Figures]]]] = [
                    (
                        "1 baseline: bare grpc.aio GetProduct",
                        partial(h2load_grpc, baseline_url, baseline_body),
                    ),
                    (
                        "2 internal GetProduct (gRPC, SQLite)",
                        partial(h2load_grpc, product_url, get.SerializeToString()),
                    ),
                    ("3a gateway Connect JSON GetProduct", partial(wrk, connect_url, connect_json)),
                    (
                        "3b gateway Connect binary GetProduct",
                        partial(wrk, connect_url, connect_proto),
                    ),
                    (
                        "3c gateway REST GET /v1/products/{id}",
                        partial(wrk, rest_url, lua_request("GET")),
                    ),
                    (
                        "4 FastAPI + SQLAlchemy + aiosqlite peer",
                        partial(wrk, f"http://{peer}/products/prd_peer", lua_request("GET")),
                    ),
                    (
                        "5 CreateOrder through the gateway",
                        partial(wrk, f"http://{mesh['gateway']}/v1/orders", orders),
                    ),
                ]
                plans += [
                    (name, partial(tool, name, level, seconds))
                    for name, tool in scenarios
                    if wanted(name, only)
                ]
            notify = wanted("order -> notification", only)
            total = len(plans) + notify
            for index, (name, run) in enumerate(plans, 1):
                say(f"({index}/{total}) {name}")
                figures.append(await run())
            if notify:
                say(f"({total}/{total}) order -> notification, {notify_orders} orders")
                figures.append(
                    await notification_latency(
                        mesh["gateway"], user_id, product_id, notify_orders, token
                    )
                )
            say("stopping everything")
    return figures


def _find(figures: list[Figures], prefix: str, level: int) -> Figures:
    return next(f for f in figures if f.scenario.startswith(prefix) and f.in_flight == level)


def ratios(figures: list[Figures]) -> dict[str, float]:
    """The goal ratios, each one whose scenarios were measured in this run."""

    def rps(prefix: str) -> float:
        return _find(figures, prefix, 64).rps

    def p50(prefix: str) -> float:
        return _find(figures, prefix, 1).p50_ms

    def p99(prefix: str) -> float:
        return next(f for f in figures if f.scenario.startswith(prefix)).p99_ms

    formulas: dict[str, Callable[[], float]] = {
        "internal GetProduct / FastAPI peer (64 in flight)": lambda: rps("2 ") / rps("4 "),
        "gateway Connect-JSON GetProduct / FastAPI peer (64 in flight)": (
            lambda: rps("3a") / rps("4 ")
        ),
        "gateway p50 - direct gRPC p50 at 1 in flight (ms)": lambda: p50("3a") - p50("2 "),
        "CreateOrder / internal GetProduct (64 in flight)": lambda: rps("5 ") / rps("2 "),
        "order-to-notification p99 (ms)": lambda: p99("order ->"),
        "internal GetProduct / bare grpc.aio baseline (64 in flight)": (
            lambda: rps("2 ") / rps("1 ")
        ),
    }
    computed = {}
    for name, formula in formulas.items():
        with contextlib.suppress(StopIteration):
            computed[name] = formula()
    return computed


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "cores": str(os.cpu_count())}
    for package in (
        "grpcio",
        "protobuf",
        "connectrpc",
        "hypercorn",
        "starlette",
        "sqlalchemy",
        "aiosqlite",
        "fastapi",
        "uvicorn",
    ):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "-"
    for tool, flag in (("h2load", "--version"), ("wrk", "-v")):
        out = (
            subprocess.run([tool, flag], capture_output=True, text=True).stdout.strip().splitlines()
        )
        found[tool] = out[0] if out else "?"
    return found


def table(figures: list[Figures], computed: dict[str, float], info: dict[str, str]) -> str:
    lines = [
        f"Shop mesh benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {info['cores']} cores, "
        f"Python {info['python']}, grpcio {info['grpcio']}, connectrpc {info['connectrpc']}",
        "",
        "| scenario | tool | in flight | requests | rps | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in figures:
        lines.append(
            f"| {f.scenario} | {f.tool} | {f.in_flight} | {f.requests} | {f.rps:.0f} "
            f"| {f.p50_ms:.2f} | {f.p99_ms:.2f} | {f.errors} |"
        )
    lines += ["", "| ratio | value | goal |", "| --- | ---: | --- |"]
    for name, value in computed.items():
        goal = GOALS.get(name)
        verdict = ""
        if goal is not None:
            op, target = goal
            met = value >= target if op == ">=" else value <= target
            verdict = f"{op} {target} {'met' if met else 'NOT met'}"
        lines.append(f"| {name} | {value:.2f} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument(
        "--orders", type=int, default=200, help="orders for the notification latency"
    )
    parser.add_argument(
        "--only",
        default="",
        help="scenarios to run, by number: e.g. 2,3a,5,notify (default: all)",
    )
    args = parser.parse_args()
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    figures = asyncio.run(measure(args.seconds, args.orders, only))
    computed = ratios(figures)
    info = versions()
    report = table(figures, computed, info)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}.md").write_text(report + "\n")
    (RESULTS / f"{stamp}.json").write_text(
        json.dumps(
            {"versions": info, "figures": [f.as_dict() for f in figures], "ratios": computed},
            indent=2,
        )
        + "\n"
    )
    say(f"written to bench/results/{stamp}.json and .md")


if __name__ == "__main__":
    main()
