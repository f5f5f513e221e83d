"""Separate test hosts on one machine: network namespaces joined by veth pairs to a
bridge that lives in a namespace of its own (see /work/shared/FACTS.md).

Every host, clients included, is a namespace with one link to the bridge and no
default route, so no test address is ever routed through the machine's own network:
a cut link gives "network unreachable", never packets leaving the machine. Nothing in
the root namespace connects to a test address; checks run inside a host
(`Host.run`, `Host.http_get`, `Host.wait_port`). `network()` removes everything it
made (processes, namespaces and with them their veths) even after a failure, and
namespaces left by a test process that died (their names carry its pid) are removed
by the next one.

    async with network() as net:
        db, app = net.add_host("db"), net.add_host("app")
        server = await app.start_service("user", {...})   # python -m services.user
        app.cut(); app.heal()                              # its link down, then up
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "shopt"  # every namespace made here: shopt-<pid>-<tag>-<host>
BRIDGE = "br0"
LINK = "eth0"  # a host's end of its veth
LINE_LIMIT = 1 << 24  # the longest output line kept (a load client's JSON summary)


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def cannot_make_namespaces() -> str | None:
    """Why this machine can't make network namespaces, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except RuntimeError as error:
        return f"cannot make a network namespace: {error}"
    return None


def _namespace_pids(namespace: str) -> list[int]:
    with contextlib.suppress(RuntimeError):
        return [int(pid) for pid in _ip("netns", "pids", namespace).split()]
    return []


def _remove_namespace(namespace: str) -> None:
    """Kills what still runs in it (only processes these helpers started), then deletes
    it, which deletes its veths too."""
    for pid in _namespace_pids(namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not _namespace_pids(namespace):
            break
        time.sleep(0.05)
    with contextlib.suppress(RuntimeError):
        _ip("netns", "del", namespace)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> None:
    """Namespaces of earlier test processes that died before they could clean up."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        ours = name.startswith(PREFIX + "-") and len(parts) > 2 and parts[1].isdigit()
        if ours and not _alive(int(parts[1])):
            _remove_namespace(name)


class HostProcess:
    """A process in a host's namespace; its output is kept line by line."""

    def __init__(self, host: Host, name: str, process: asyncio.subprocess.Process) -> None:
        self.host = host
        self.name = name
        self.process = process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.address = ""  # host:port, for a service (from its "listening" line)
        self._changed = asyncio.Event()
        self._drains = [
            asyncio.create_task(self._drain(process.stdout, self.stdout)),
            asyncio.create_task(self._drain(process.stderr, self.stderr)),
        ]

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _drain(self, stream: asyncio.StreamReader | None, into: list[str]) -> None:
        if stream is None:
            return
        async for line in stream:
            into.append(line.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr[-lines:])

    async def wait_line(
        self, match: Callable[[str], bool], *, stderr: bool = False, within: float = 30.0
    ) -> str:
        """The first output line that `match`es (stdout, or stderr), waiting for it."""
        lines = self.stderr if stderr else self.stdout
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for line in lines[seen:]:
                if match(line):
                    return line
            seen = len(lines)
            if self.process.returncode is not None and all(d.done() for d in self._drains):
                raise RuntimeError(
                    f"{self.name} on {self.host.name} exited ({self.process.returncode}):\n"
                    + self.tail()
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name} on {self.host.name}: no such line:\n{self.tail()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close_stdin(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self.process.stdin.wait_closed()

    async def wait(self, within: float) -> int:
        """Waits for it to exit by itself (and for all its output)."""
        await asyncio.wait_for(self.process.wait(), within)
        await asyncio.gather(*self._drains)
        return self.process.returncode or 0

    async def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
        """`sig` (SIGTERM), then SIGKILL after `grace` seconds."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        for drain in self._drains:
            drain.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)


@dataclass
class Host:
    """One test host: a namespace with `address` on its link to the bridge."""

    name: str
    namespace: str
    address: str
    processes: list[HostProcess] = field(default_factory=list)

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        name: str = "",
        stdin: bool = False,
        cwd: Path = ROOT,
    ) -> HostProcess:
        """Starts `argv` in this host's namespace (`ip netns exec` execs it, so the
        process's pid is the command's own and signals reach it directly)."""
        process = await asyncio.create_subprocess_exec(
            *self.command(*argv),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        started = HostProcess(self, name or Path(argv[0]).name, process)
        self.processes.append(started)
        return started

    async def run(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, within: float = 30.0
    ) -> str:
        """Runs `argv` here to the end; its stdout (an error with its stderr if it fails)."""
        process = await self.spawn(argv, env=env)
        try:
            code = await process.wait(within)
        finally:
            await process.stop(grace=1.0)
            self.processes.remove(process)
        if code != 0:
            raise RuntimeError(
                f"{' '.join(argv)} on {self.name} failed ({code}):\n{process.tail()}"
            )
        return "\n".join(process.stdout)

    async def python(self, code: str, *args: str, within: float = 30.0) -> str:
        return await self.run([sys.executable, "-c", code, *args], within=within)

    async def wait_port(self, address: str, port: int, within: float = 30.0) -> None:
        """Until something accepts TCP connections at address:port, as seen from here."""
        await self.python(_WAIT_PORT, address, str(port), str(within), within=within + 5)

    async def http_get(self, url: str, within: float = 10.0) -> str:
        """GET `url` from this host (e.g. a service's /metrics on its test address)."""
        return await self.python(_HTTP_GET, url, within=within)

    async def start_service(
        self,
        name: str,
        env: Mapping[str, str],
        *,
        module: str = "",
        port: int = 0,
        within: float = 60.0,
    ) -> HostProcess:
        """`python -m services.<name>` (or `module`) listening on this host's address;
        returns once it prints where it listens."""
        full_env = {"HOST": self.address, "PORT": str(port), "PYTHONUNBUFFERED": "1", **env}
        service = await self.spawn(
            [sys.executable, "-m", module or f"services.{name}"], env=full_env, name=name
        )
        line = await service.wait_line(lambda text: '"listening"' in text, within=within)
        service.address = json.loads(line)["listening"]
        return service

    def cut(self) -> None:
        """This host's link down: nothing reaches it, it reaches nothing."""
        _ip("-n", self.namespace, "link", "set", LINK, "down")

    def heal(self) -> None:
        _ip("-n", self.namespace, "link", "set", LINK, "up")

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop(grace=3.0) for p in self.processes))


_WAIT_PORT = """
import socket, sys, time
host, port, within = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + within
while True:
    try:
        socket.create_connection((host, port), timeout=1).close()
        break
    except OSError as error:
        if time.monotonic() > deadline:
            sys.exit(f"{host}:{port} does not answer: {error}")
        time.sleep(0.1)
"""

_HTTP_GET = """
import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
"""


class Network:
    """Hosts on one /24 (`subnet`.2, .3, ...), each joined to a bridge by a veth."""

    def __init__(self, subnet: str = "10.77.0") -> None:
        self.subnet = subnet
        self.tag = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(2)}"
        self.bridge_namespace = f"{self.tag}-br"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []

    def create(self) -> None:
        remove_stale_namespaces()
        self._add_namespace(self.bridge_namespace)
        _ip("-n", self.bridge_namespace, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.bridge_namespace, "link", "set", BRIDGE, "up")

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 2
        if index > 254:
            raise ValueError("a /24 holds at most 253 hosts")
        host = Host(name, f"{self.tag}-{name}", f"{self.subnet}.{index}")
        self._add_namespace(host.namespace)
        peer = f"v{index}"  # the bridge's end, in the bridge's namespace
        veth = f"link add {LINK} type veth peer name {peer} netns {self.bridge_namespace}"
        _ip("-n", host.namespace, *veth.split())
        _ip("-n", self.bridge_namespace, "link", "set", peer, "master", BRIDGE)
        _ip("-n", self.bridge_namespace, "link", "set", peer, "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", LINK)
        _ip("-n", host.namespace, "link", "set", LINK, "up")
        self.hosts[name] = host
        return host

    async def close(self) -> None:
        """Stops every process started on a host, then removes every namespace."""
        await asyncio.gather(*(host.stop_all() for host in self.hosts.values()))
        for namespace in reversed(self._namespaces):
            _remove_namespace(namespace)
        self._namespaces.clear()


@asynccontextmanager
async def network(subnet: str = "10.77.0") -> AsyncIterator[Network]:
    """A network of the test's own (skips with the reason when namespaces can't be made)."""
    reason = cannot_make_namespaces()
    if reason is not None:
        pytest.skip(reason)
    net = Network(subnet)
    try:
        net.create()
        yield net
    finally:
        await net.close()


# -- servers on test hosts ------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian's layout)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


class Postgres:
    """A private PostgreSQL server on a host: a fresh cluster in a temp directory, run as
    the `postgres` OS user (PostgreSQL refuses root), trust auth for the test subnet,
    listening on the host's address only."""

    def __init__(self, host: Host, subnet: str) -> None:
        self.host = host
        self.subnet = subnet
        self.port = 5432
        self.directory = Path(tempfile.mkdtemp(prefix="shop-pg-"))
        self.process: HostProcess | None = None

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@{self.host.address}:{self.port}/{database}"

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]

    async def start(self, databases: Sequence[str]) -> None:
        binaries = postgres_bin()
        if binaries is None:
            message = "the PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are missing"
            if REQUIRE_SERVICES:
                pytest.fail(message + " (SHOP_REQUIRE_SERVICES=1: they must be here)")
            pytest.skip(message)
        shutil.chown(self.directory, "postgres", "postgres")
        data = self.directory / "data"
        await self.host.run(
            self._as_postgres(
                str(binaries / "initdb"),
                *("-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
                *("--locale=C", "--no-sync"),
            ),
            env={"LC_ALL": "C"},
            within=60,
        )
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.subnet}.0/24 trust\n")
        settings = {
            "listen_addresses": self.host.address,
            "port": self.port,
            "unix_socket_directories": self.directory,
            "max_connections": 300,
            # A throwaway cluster: durability is not what these tests are about.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        self.process = await self.host.spawn(
            self._as_postgres(str(binaries / "postgres"), "-D", str(data), *options),
            env={"LC_ALL": "C"},
            name="postgres",
            cwd=self.directory,
        )
        await self.process.wait_line(
            lambda line: "ready to accept connections" in line, stderr=True, within=30
        )
        for database in databases:
            await self.query("postgres", f'CREATE DATABASE "{database}"')

    async def query(self, database: str, sql: str) -> str:
        """psql on the server's own host, over its Unix socket; unaligned rows."""
        connection = ("-h", str(self.directory), "-p", str(self.port), "-U", "postgres")
        return await self.host.run(
            ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", *connection, "-d", database, "-c", sql]
        )

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop(grace=10.0, sig=signal.SIGINT)  # fast shutdown
        shutil.rmtree(self.directory, ignore_errors=True)


@asynccontextmanager
async def postgres_on(host: Host, subnet: str, databases: Sequence[str]) -> AsyncIterator[Postgres]:
    server = Postgres(host, subnet)
    try:
        await server.start(databases)
        yield server
    finally:
        await server.stop()
