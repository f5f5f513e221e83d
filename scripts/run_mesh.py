"""`make run` and `make run-cluster`: the whole mesh in one terminal.

`make run` starts each service once on embedded defaults (SQLite files in ./var, no
broker). `make run-cluster` (`--cluster`) starts it scaled out on this machine:
PostgreSQL (one database per service on the server at PG_URL, created if missing,
migrated by the services as they start), NATS JetStream at BROKER_URL, two replicas
of every service and two gateways (8080 and 8081), every client channel balanced
over both replicas.

Either way each process is its own `python -m ...`; the script prints where each
listens and a first call to try, and on Ctrl-C (or SIGTERM) stops them all
gracefully. If one dies, the rest are stopped and the exit is non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from scripts.procs import MeshProcess, StartError, launch

# In start order: a process starts after the ones it calls.
SERVICES = ("user", "product", "payment", "order", "notification")
PORTS = {
    "user": 50051,
    "product": 50052,
    "order": 50053,
    "notification": 50054,
    "payment": 50055,
    "gateway": 8080,
}
# The cluster's databases on PG_URL's server, one per service.
DATABASES = {
    "user": "shop_users",
    "product": "shop_products",
    "order": "shop_orders",
    "notification": "shop_notifications",
    "payment": "shop_payments",
}
# A second replica listens this far above the first (50051 -> 60051; gateway 8081).
REPLICA_OFFSET = {"gateway": 1}
DEFAULT_OFFSET = 10_000


@dataclass
class Process:
    """One process to start: its name in the banner, its module and its environment."""

    label: str
    module: str
    env: dict[str, str] = field(default_factory=dict)


async def start(plan: Process) -> MeshProcess:
    try:
        return await launch(
            [sys.executable, "-m", plan.module], name=plan.label, env=plan.env, stderr="inherit"
        )
    except StartError as error:
        raise SystemExit(str(error)) from None


def embedded_plan() -> list[Process]:
    return [
        *(Process(name, f"services.{name}") for name in SERVICES),
        Process("gateway", "gateway"),
    ]


def cluster_plan(pg_url: str, broker_url: str, replicas: int = 2) -> list[Process]:
    """Every service `replicas` times on PostgreSQL and NATS, and as many gateways."""

    def port(name: str, replica: int) -> int:
        return PORTS[name] + replica * REPLICA_OFFSET.get(name, DEFAULT_OFFSET)

    shared = {
        f"{name.upper()}_SERVICE_ADDR": ",".join(
            f"127.0.0.1:{port(name, r)}" for r in range(replicas)
        )
        for name in SERVICES
    }
    shared["BROKER_URL"] = broker_url
    plan = []
    for name in (*SERVICES, "gateway"):
        for replica in range(replicas):
            env = {**shared, "PORT": str(port(name, replica))}
            if name != "gateway":
                env[f"{name.upper()}_DATABASE_URL"] = database_url(pg_url, DATABASES[name])
            module = "gateway" if name == "gateway" else f"services.{name}"
            plan.append(Process(f"{name}-{replica + 1}", module, env))
    return plan


def database_url(pg_url: str, database: str) -> str:
    """`postgresql://user@host:5432` and a database name as the services' async URL."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(drivername="postgresql+asyncpg", database=database)
    return url.render_as_string(hide_password=False)


async def create_databases(pg_url: str) -> None:
    """Each service's database on the server, unless it is there already."""
    import asyncpg
    from sqlalchemy.engine import make_url

    admin = make_url(pg_url).set(drivername="postgresql", database="postgres")
    connection = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=10)
    try:
        for database in DATABASES.values():
            exists = await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", database
            )
            if not exists:
                await connection.execute(f'CREATE DATABASE "{database}"')
                print(f"created database {database}", file=sys.stderr)
    finally:
        await connection.close()


def banner(started: dict[str, dict[str, Any]]) -> str:
    gateway = next(where["listening"] for label, where in started.items() if "gateway" in label)
    lines = ["", "shop mesh is up (Ctrl-C stops it):"]
    for label, where in started.items():
        scheme = "http" if label.startswith("gateway") else "grpc"
        metrics = f"   metrics http://{where['metrics']}/metrics" if where.get("metrics") else ""
        lines.append(f"  {label:<15} {scheme}://{where['listening']:<18}{metrics}")
    lines += [
        "",
        f"the console: http://{gateway}/ (its admin page for the emails in ADMIN_EMAILS)",
        "",
        "try (Connect JSON through the gateway; note the user id it returns):",
        f"  curl -X POST http://{gateway}/shop.user.v1.UserService/CreateUser \\",
        "      -H 'content-type: application/json' \\",
        '      -d \'{"email": "ann@example.com", "displayName": "Ann"}\'',
        "",
        "everything but sign-up and the catalogue needs a token; with that user id:",
        "  TOKEN=$(make -s token USER_ID=usr_...)       # ROLES=admin for product writes",
        f'  curl http://{gateway}/v1/users/usr_... -H "Authorization: Bearer $TOKEN"',
        "",
        "the README's walk-through does it all by copy and paste; /docs lists every route.",
        "",
    ]
    return "\n".join(lines)


def prepare_identities() -> None:
    """The development signing key and CA (and a certificate to call the services with
    by hand, `cli`), made once before any process needs them, when they are in use;
    configured files (JWT_JWKS_FILE, TLS_*_FILE) must exist."""
    from services.common.config import SERVICE, AuthSettings, TlsSettings, data_dir_from_env
    from services.common.devsetup import Identities, ensure_development_identities

    data_dir = data_dir_from_env()
    tls = TlsSettings.from_env("cli", SERVICE, data_dir)
    if tls.development is not None and tls.ca_file is not None:
        tls = TlsSettings.development_files(tls.ca_file.parent, "cli", SERVICE)
    ensure_development_identities(Identities(AuthSettings.from_env(data_dir), tls))


async def run(plan: list[Process]) -> int:
    processes: dict[str, MeshProcess] = {}
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    exit_code = 0
    try:
        for step in plan:
            processes[step.label] = await start(step)
        print(banner({label: p.listening for label, p in processes.items()}), flush=True)
        waiters = {asyncio.create_task(p.process.wait()): n for n, p in processes.items()}
        stop_task = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait([stop_task, *waiters], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in waiters:
                print(
                    f"{waiters[task]} exited with {task.result()}; stopping the mesh",
                    file=sys.stderr,
                )
                exit_code = 1
    finally:
        await asyncio.gather(*(process.stop(grace=15) for process in processes.values()))
    return exit_code


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", action="store_true", help="PostgreSQL, NATS, 2 replicas")
    args = parser.parse_args()
    prepare_identities()
    if not args.cluster:
        return await run(embedded_plan())
    pg_url = os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1:5432")
    broker_url = os.environ.get("BROKER_URL", "nats://127.0.0.1:4222")
    await create_databases(pg_url)
    return await run(cluster_plan(pg_url, broker_url))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
