"""Server bootstrap shared by every service.

`start()` opens the database, applies migrations, builds the `Platform` every
service shares, hands it to the service's own wiring (`services/<name>/wiring.py`,
which builds the service's parts explicitly, in order) and serves what that built on a
`grpc.aio` server with health (real readiness: NOT_SERVING while the database
does not answer), reflection, tracing, access logs, error mapping, deadlines and
validation. `main()` runs it until SIGTERM/SIGINT, then drains in-flight calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import eventloop, logs, migrate, telemetry
from services.common.auth import Verifier
from services.common.config import DEFAULT_PORTS, ServiceConfig
from services.common.db import Database
from services.common.devsetup import ensure_development_identities
from services.common.interceptors import (
    ServerAccessLog,
    ServerAuth,
    ServerDeadline,
    ServerErrors,
    ServerPipeline,
    ServerTracing,
    ServerValidation,
)
from services.common.metrics import Metrics
from services.common.pagination import PageTokens

log = logging.getLogger("shop.server")

DB_PING_TIMEOUT = 2.0
STOP_STEP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Platform:
    """What the bootstrap builds before a service's own parts (and closes after them)."""

    config: ServiceConfig
    db: Database
    page_tokens: PageTokens
    metrics: Metrics


@dataclass(frozen=True)
class Servicer:
    """One gRPC service a process serves: its implementation and grpc's add function."""

    descriptor: ServiceDescriptor
    implementation: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]


PartsT = TypeVar("PartsT")


@dataclass(frozen=True)
class Wired(Generic[PartsT]):
    """What a service's wiring built: its main parts (typed, for tests and metrics to read),
    the servicers to serve, the loops to run beside them and what to close at the end."""

    parts: PartsT
    servicers: Sequence[Servicer]
    # Long-running loops (outbox relay, event consumers), started with the server and
    # cancelled when it stops; restarted if one fails.
    background: Sequence[Callable[[], Awaitable[None]]] = ()
    # Called in reverse order when the server stops (peer channels, broker connections).
    closers: Sequence[Callable[[], object]] = ()


@dataclass(frozen=True)
class ServiceSpec:
    """A service as the bootstrap sees it: a name, its migrations and its wiring."""

    name: str
    migrations: Path
    wire: Callable[[Platform], Awaitable[Wired[Any]]]

    @property
    def default_port(self) -> int:
        return DEFAULT_PORTS[self.name]


class RunningService(Generic[PartsT]):
    """A started service: where it listens, its parts, and `stop()` to drain and close it."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        platform: Platform,
        wired: Wired[PartsT],
        health_servicer: health.aio.HealthServicer,
        tasks: list[asyncio.Task[None]],
        closers: list[Callable[[], object]],
        metrics_port: int,
        health_port: int,
    ) -> None:
        self.server = server
        self.port = port
        self.platform = platform
        self.parts = wired.parts
        # Where /metrics and the plaintext health service are served (0: not served).
        self.metrics_port = metrics_port
        self.health_port = health_port
        self._health = health_servicer
        self._tasks = tasks
        self._closers = closers

    @property
    def address(self) -> str:
        return f"{self.platform.config.host}:{self.port}"

    async def begin_draining(self) -> None:
        """Every health status turns NOT_SERVING, so balancers stop sending new calls."""
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace: float | None = None) -> None:
        await self.begin_draining()
        await self.server.stop(self.platform.config.shutdown_grace if grace is None else grace)
        for task in self._tasks:
            task.cancel()
        # Shutdown is bounded: a background task or a closer that does not finish (a
        # peer channel stuck mid-reconnect, say) must not keep the process alive.
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_STEP_TIMEOUT)
            if stuck:
                log.warning("background tasks did not stop", extra={"count": len(stuck)})
        for close in reversed(self._closers):
            result = close()
            if asyncio.iscoroutine(result):
                try:
                    await asyncio.wait_for(result, STOP_STEP_TIMEOUT)
                except TimeoutError:
                    log.warning("a closer did not finish", extra={"closer": repr(close)})
        await self.platform.db.close()


async def _database_answers(db: Database) -> bool:
    try:
        async with asyncio.timeout(DB_PING_TIMEOUT):
            await db.ping()
    except Exception as exc:
        log.warning("database check failed", extra={"error": type(exc).__name__})
        return False
    return True


async def _watch_readiness(
    db: Database, servicer: health.aio.HealthServicer, names: Sequence[str], interval: float
) -> None:
    """Keeps every service's health status in step with the database."""
    last: int | None = None
    while True:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if await _database_answers(db)
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != last:
            for name in ("", *names):
                await servicer.set(name, status)
            last = status
        await asyncio.sleep(interval)


# Peers ping idle connections every 10 s (services.common.clients): allow it. A
# connection is told to go away after 5 minutes (calls under way go on), so clients
# resolve the service's name again and find replicas added since (dns:/// targets).
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_connection_age_ms", 300_000),
]
# Reported SERVING for as long as the process serves, whatever its database does: what a
# liveness probe asks (readiness asks "" or the service's name, which follow the database).
LIVENESS = "liveness"


def pipeline(metrics: Metrics, verifier: Verifier, mutual_tls: bool) -> ServerPipeline:
    """What every RPC of a service goes through, outermost first."""
    return ServerPipeline(
        [
            ServerTracing(),
            ServerAccessLog(metrics),
            ServerErrors(),
            ServerDeadline(),
            ServerAuth(verifier, services_only_internal=mutual_tls),
            ServerValidation(),
        ]
    )


async def start(spec: ServiceSpec, config: ServiceConfig) -> RunningService[Any]:
    """Starts the service and returns once it listens and its readiness is known.

    In order: the database (migrated), the platform, the service's own wiring, then
    the server with health and reflection; the background loops start last.
    """
    db = Database(config.database_url)
    await migrate.upgrade(db, spec.migrations, spec.name)
    platform = Platform(
        config=config,
        db=db,
        page_tokens=PageTokens(config.page_token_secret),
        metrics=Metrics(spec.name),
    )
    platform.metrics.gauge(
        "db_pool_connections_in_use", "Database connections checked out.", db.connections_in_use
    )
    wired = await spec.wire(platform)
    closers = list(wired.closers)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    concerns = pipeline(platform.metrics, Verifier(config.auth), config.tls.enabled)
    for servicer in wired.servicers:
        servicer.add_to_server(
            concerns.serving(servicer.descriptor, servicer.implementation), server
        )
    names = [servicer.descriptor.full_name for servicer in wired.servicers]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    listen = f"{config.host}:{config.port}"
    if config.tls.enabled:
        port = server.add_secure_port(listen, config.tls.server_credentials())
    else:
        log.warning("TLS_MODE=plaintext: serving without TLS, for local debugging only")
        port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"cannot listen on {config.host}:{config.port}")
    await server.start()
    # Readiness is known before start() returns: the first check runs now.
    ready = await _database_answers(db)
    initial = (
        health_pb2.HealthCheckResponse.SERVING
        if ready
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", *names):
        await health_servicer.set(name, initial)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    health_port = 0
    if config.health_port is not None:
        health_server, health_port = await _serve_health(health_servicer, config)
        closers.insert(0, lambda: health_server.stop(0))
    tasks = [
        asyncio.create_task(_watch_readiness(db, health_servicer, names, config.health_interval)),
        *(asyncio.create_task(_supervised(loop)) for loop in wired.background),
    ]
    metrics_port = 0
    if config.metrics_port is not None:
        metrics_port = platform.metrics.serve(config.host, config.metrics_port)
        closers.insert(0, platform.metrics.close)
    return RunningService(
        server,
        port,
        platform,
        wired,
        health_servicer,
        tasks,
        closers,
        metrics_port=metrics_port,
        health_port=health_port,
    )


async def _serve_health(
    servicer: health.aio.HealthServicer, config: ServiceConfig
) -> tuple[grpc.aio.Server, int]:
    """grpc.health.v1 alone on a plaintext port of its own."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{config.host}:{config.health_port}")
    if port == 0:
        raise SystemExit(f"cannot listen on {config.host}:{config.health_port} (HEALTH_PORT)")
    await server.start()
    return server, port


async def _supervised(loop: Callable[[], Awaitable[None]], pause: float = 1.0) -> None:
    """Runs a background loop for the life of the server, restarting it if it fails."""
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed; restarting", extra={"task": repr(loop)})
        await asyncio.sleep(pause)


async def _serve(spec: ServiceSpec, config: ServiceConfig) -> None:
    # Handlers first: a SIGTERM that comes as soon as the service says it listens
    # (a test, an orchestrator) must be a graceful stop, not a kill.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    running = await start(spec, config)
    # One machine-readable line on stdout says where the service listens (PORT=0 picks a port).
    print(
        json.dumps(
            {
                "service": spec.name,
                "listening": running.address,
                "metrics": f"{config.host}:{running.metrics_port}" if running.metrics_port else "",
                "health": f"{config.host}:{running.health_port}" if running.health_port else "",
            }
        ),
        flush=True,
    )
    log.info("serving", extra={"address": running.address, "database": _redacted(config)})
    await stopping.wait()
    log.info("shutting down", extra={"grace_s": config.shutdown_grace})
    await running.stop()
    log.info("stopped")


def _redacted(config: ServiceConfig) -> str:
    from sqlalchemy.engine import make_url

    return make_url(config.database_url).render_as_string(hide_password=True)


def main(spec: ServiceSpec) -> None:
    """Entry point of `python -m services.<name>`."""
    config = ServiceConfig.from_env(spec.name, spec.default_port)
    logs.configure(spec.name, config.log_level)
    telemetry.configure(spec.name)
    # The one step that makes files: the development key and certificate, when in use.
    ensure_development_identities(config)
    try:
        eventloop.run(_serve(spec, config))
    except KeyboardInterrupt:
        sys.exit(130)
