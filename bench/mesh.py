"""What `make bench` measures, started and stopped by it: the mesh (one process per
service, or replicas of each), its databases and event stream, the baseline and the
FastAPI peer.

Every process listens on a free port (PORT=0) and says where on its first line, so
several meshes can run beside `make run` and each other. PostgreSQL databases and
the NATS stream get names of their own (`bench_<run>_...`) and are dropped after the
run, so the shared servers are left as they were found.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from scripts.procs import launch

ROOT = Path(__file__).resolve().parent.parent
# In start order: a process starts after the ones it calls.
SERVICES = ("user", "product", "payment", "order", "notification")
GATEWAY = "gateway"
PRODUCT_PATH = "/shop.product.v1.ProductService/GetProduct"


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@asynccontextmanager
async def process(
    argv: list[str], env: dict[str, str], name: str, log_dir: Path
) -> AsyncIterator[str]:
    """A process that says where it listens on stdout (scripts.procs); its stderr goes to
    `log_dir/<name>.log`, shown if it fails to start."""
    log = log_dir / f"{name}.log"
    async with await launch(argv, name=name, env=env, stderr=log, grace=15.0) as child:
        yield child.address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def baseline(
    log_dir: Path, tls_dir: Path | None = None, name: str = "baseline"
) -> contextlib.AbstractAsyncContextManager[str]:
    """The baseline server; with `tls_dir`, serving mutual TLS."""
    env = {} if tls_dir is None else {"BASELINE_TLS_DIR": str(tls_dir)}
    return process([sys.executable, "-m", "bench.baseline_server"], env, name, log_dir)


@asynccontextmanager
async def uvicorn_peer(database_url: str) -> AsyncIterator[str]:
    """The FastAPI peer under uvicorn (one worker) on `database_url`, with httptools and
    uvloop, as `uvicorn[standard]` runs it."""
    port = free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "bench.fastapi_peer:app",
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        cwd=ROOT,
        env={**os.environ, "PEER_DATABASE_URL": database_url},
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


# -- databases and the event stream ------------------------------------------------


def sqlite_urls(data_dir: Path, names: Iterable[str]) -> dict[str, str]:
    return {name: f"sqlite+aiosqlite:///{data_dir / (name + '.db')}" for name in names}


def _admin_dsn(pg_url: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(drivername="postgresql", database="postgres")
    return url.render_as_string(hide_password=False)


async def postgres_load(pg_url: str) -> tuple[int, int, str]:
    """Connections in use on the server now, its max_connections and its version: the
    mesh needs room (each process pools up to 20), and the server is shared."""
    import asyncpg

    connection = await asyncpg.connect(_admin_dsn(pg_url), timeout=10)
    try:
        used = await connection.fetchval("SELECT count(*) FROM pg_stat_activity")
        limit = await connection.fetchval("SHOW max_connections")
        version = await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()
    return int(used), int(limit), str(version).split()[0]


def database_prefix() -> str:
    """A prefix of this run's own for database names (`bench_<hex>_`)."""
    return f"bench_{uuid.uuid4().hex[:10]}_"


@asynccontextmanager
async def postgres_databases(
    pg_url: str, names: Iterable[str], prefix: str
) -> AsyncIterator[dict[str, str]]:
    """A fresh database per name (`<prefix><name>`), dropped afterwards even if the run
    failed; yields each one's async URL for the `*_DATABASE_URL` variables."""
    import asyncpg
    from sqlalchemy.engine import make_url

    databases = {name: f"{prefix}{name}" for name in names}
    admin = _admin_dsn(pg_url)
    created: list[str] = []
    try:
        connection = await asyncpg.connect(admin, timeout=10)
        try:
            for database in databases.values():
                await connection.execute(f'CREATE DATABASE "{database}"')
                created.append(database)
        finally:
            await connection.close()
        yield {
            name: make_url(pg_url)
            .set(drivername="postgresql+asyncpg", database=database)
            .render_as_string(hide_password=False)
            for name, database in databases.items()
        }
    finally:
        if created:
            connection = await asyncpg.connect(admin, timeout=10)
            try:
                for database in created:
                    await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            finally:
                await connection.close()


@asynccontextmanager
async def nats_stream(broker_url: str) -> AsyncIterator[dict[str, str]]:
    """The environment for an event stream of this run's own on the shared NATS server
    (EVENT_STREAM and EVENT_SUBJECT_PREFIX), and the stream deleted afterwards."""
    import nats
    import nats.js.errors

    tag = f"bench{uuid.uuid4().hex[:10]}"
    try:
        yield {"BROKER_URL": broker_url, "EVENT_STREAM": tag.upper(), "EVENT_SUBJECT_PREFIX": tag}
    finally:
        client = await nats.connect(broker_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await client.jetstream().delete_stream(tag.upper())
        finally:
            await client.close()


# -- the mesh ----------------------------------------------------------------------


@dataclass
class Mesh:
    """A running mesh: every process's address by name (one per replica)."""

    addresses: dict[str, list[str]]
    data_dir: Path
    database_urls: dict[str, str]
    env: dict[str, str]

    def first(self, name: str) -> str:
        return self.addresses[name][0]


def mesh_env(data_dir: Path) -> dict[str, str]:
    """What every process of a benchmarked mesh shares."""
    # No per-client rate limit: the load tools call from one address on purpose. No TLS
    # inside: h2load can't present a client certificate, and the baseline and the peer
    # are plaintext too (the mTLS comparison starts its own product services).
    return {
        "DATA_DIR": str(data_dir),
        "PORT": "0",
        "LOG_LEVEL": "WARNING",
        "GATEWAY_RATE_LIMIT": "0",
        "TLS_MODE": "plaintext",
    }


async def start_mesh(
    stack: AsyncExitStack,
    data_dir: Path,
    database_urls: dict[str, str],
    replicas: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Mesh:
    """Every service `replicas` times and as many gateways, callees first, each told
    every replica of the services it calls (as scripts/run_mesh.py lays out
    `make run-cluster`, but on free ports)."""
    env = {**mesh_env(data_dir), **(extra_env or {})}
    addresses: dict[str, list[str]] = {}
    for name in (*SERVICES, GATEWAY):
        peers = {
            f"{peer.upper()}_SERVICE_ADDR": ",".join(where) for peer, where in addresses.items()
        }
        own = {} if name == GATEWAY else {f"{name.upper()}_DATABASE_URL": database_urls[name]}
        module = GATEWAY if name == GATEWAY else f"services.{name}"
        addresses[name] = [
            await stack.enter_async_context(
                process(
                    [sys.executable, "-m", module],
                    {**env, **peers, **own},
                    f"{name}-{replica + 1}",
                    data_dir,
                )
            )
            for replica in range(replicas)
        ]
    return Mesh(addresses, data_dir, database_urls, env)


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
