"""nats-servers of the test's own (JetStream, a temp store, free ports), to stop, kill and
restart: one server, or a 3-node JetStream cluster to lose a node of."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from tests.conftest import REQUIRE_SERVICES

BINARY = shutil.which("nats-server") or "/usr/sbin/nats-server"
CLUSTER_NAME = "shoptest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server process. With `cluster_port` and `routes` it is a node of a
    cluster (`server_name` must then be set: JetStream's peers are known by name)."""

    def __init__(
        self,
        store: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        server_name: str = "",
        cluster_port: int | None = None,
        routes: list[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.store = store
        self.server_name = server_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        """The command line (also for running it elsewhere, e.g. in a network namespace)."""
        args = [BINARY, "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store)]
        if self.server_name:
            args += ["--server_name", self.server_name]
        if self.cluster_port is not None:
            args += [
                "--cluster",
                f"nats://{self.host}:{self.cluster_port}",
                "--cluster_name",
                CLUSTER_NAME,
                "--routes",
                ",".join(self.routes),
            ]
        return args

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.process = None

    async def kill(self) -> None:
        """SIGKILL: the node vanishes mid-write, as on a power cut (its store stays)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.process = None


def require_nats_server() -> None:
    """Skips (fails under SHOP_REQUIRE_SERVICES=1) where nats-server is not installed."""
    if not shutil.which(BINARY):
        if REQUIRE_SERVICES:
            pytest.fail("nats-server is not installed (SHOP_REQUIRE_SERVICES=1: it must run here)")
        pytest.skip("nats-server is not installed")


@asynccontextmanager
async def own_nats_server(store: Path) -> AsyncIterator[NatsServer]:
    require_nats_server()
    server = NatsServer(store)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class NatsCluster:
    """`size` JetStream nodes on 127.0.0.1 (names n1, n2, ...), routed to each other."""

    def __init__(self, store: Path, size: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{port}" for port in cluster_ports]
        self.nodes = {
            f"n{i + 1}": NatsServer(
                store / f"n{i + 1}",
                server_name=f"n{i + 1}",
                cluster_port=cluster_ports[i],
                routes=routes,
            )
            for i in range(size)
        }

    @property
    def url(self) -> str:
        """Every node, as BROKER_URL lists them."""
        return ",".join(node.url for node in self.nodes.values())

    def urls(self, *, without: str = "") -> list[str]:
        return [node.url for name, node in self.nodes.items() if name != without]

    async def start(self) -> None:
        await asyncio.gather(*(node.start() for node in self.nodes.values()))
        await self.wait_ready()

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes.values()))

    async def wait_ready(self, within: float = 30.0) -> None:
        """Until a stream with a copy on every node can be made: the nodes have found
        each other and elected a meta leader (a few seconds after they start)."""
        probe = f"PROBE{int(time.monotonic() * 1000)}"
        deadline = time.monotonic() + within
        async with self.client() as client:
            js = client.jetstream(timeout=2)
            while True:
                try:
                    await js.add_stream(
                        StreamConfig(
                            name=probe, subjects=[probe.lower()], num_replicas=len(self.nodes)
                        )
                    )
                    await js.delete_stream(probe)
                    return
                except (nats.errors.Error, nats.js.errors.Error) as error:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the NATS cluster did not form: {error!r}") from None
                    await asyncio.sleep(0.25)

    @asynccontextmanager
    async def client(self, *, without: str = "") -> AsyncIterator[Client]:
        """A connection of the test's own (to any node but `without`)."""
        client = await nats.connect(
            self.urls(without=without),
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
        )
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                await client.close()


@asynccontextmanager
async def own_nats_cluster(store: Path, size: int = 3) -> AsyncIterator[NatsCluster]:
    """A JetStream cluster started for the test, every node stopped afterwards."""
    require_nats_server()
    cluster = NatsCluster(store, size)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()
