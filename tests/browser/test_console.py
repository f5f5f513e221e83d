"""The console in a real browser (issue 15): the mesh as `make run` starts it (each
service and the gateway its own process, SQLite files in a temporary DATA_DIR, the user
service with ADMIN_EMAILS), and console.spec.mjs driving Debian's chromium through
playwright-core against the gateway. The driver runs once, every case in one browser
(starting one costs seconds); each test here reports one case, with its output.

The dropped-stream case needs this side: the driver writes "@@control {...}" lines and
waits for an answer on its stdin; here the gateway is stopped (and an order placed
straight at the order service while it is down) and started again on the same port.

Needs node, /usr/bin/chromium, tests/browser/node_modules (`make browser-deps`) and the
built console (gateway/console/index.html): without them the tests skip, or fail when
SHOP_REQUIRE_SERVICES=1 (CI). Screenshots of a failure are in tests/browser/artifacts/;
CONSOLE_SCREENSHOTS=1 takes one of every page visited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from scripts import procs
from services.common.auth import ensure_dev_keys
from services.common.config import SERVICE, TlsSettings
from services.common.tls import dev_pki
from shop.order.v1 import order_pb2, order_pb2_grpc
from tests.conftest import REQUIRE_SERVICES

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "console.spec.mjs"
ARTIFACTS = HERE / "artifacts"
CONSOLE = procs.ROOT / "gateway" / "console" / "index.html"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin password 123"
SERVICES = ("user", "product", "payment", "order", "notification")
# Start order, each stage at once: every port is chosen beforehand, and a client channel
# connects on its first call, so the order service may start beside its peers; the
# notification service follows the order service's feed as it starts, so it comes after.
STAGES = (("user", "product", "payment", "order"), ("notification", "gateway"))
CASES = ("journey", "wrong-password", "sign-up-violation", "out-of-stock", "dropped-stream")
DRIVER_TIMEOUT = 75.0  # the whole driver run, every case; a hang ends here


def missing() -> list[str]:
    """What this machine lacks to run the browser test."""
    lacking = []
    if shutil.which("node") is None:
        lacking.append("node is not on PATH")
    if not CHROMIUM.is_file():
        lacking.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    if not (HERE / "node_modules" / "playwright-core" / "package.json").is_file():
        lacking.append("tests/browser/node_modules is missing (make browser-deps)")
    if not CONSOLE.is_file():
        lacking.append("the console is not built (gateway/console/index.html; make web)")
    return lacking


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ConsoleMesh:
    """The running processes; the gateway can be stopped and started again."""

    data_dir: Path
    client_tls: TlsSettings
    ports: dict[str, int] = field(
        default_factory=lambda: {name: free_port() for name in (*SERVICES, "gateway")}
    )
    processes: dict[str, procs.MeshProcess] = field(default_factory=dict)
    started_in: float = 0.0  # seconds the mesh took to start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def env(self, name: str) -> dict[str, str]:
        """A process's environment: make run's, on its own port, knowing every peer."""
        peers = {f"{peer.upper()}_SERVICE_ADDR": self.address(peer) for peer in SERVICES}
        env = {
            **peers,
            "HOST": "127.0.0.1",
            "PORT": str(self.ports[name]),
            # Not the default PORT + 1000 and + 2000: another process's chosen port, maybe.
            "METRICS_PORT": "0",
            "HEALTH_PORT": "0",
            "DATA_DIR": str(self.data_dir),
            "SHUTDOWN_GRACE": "1",
        }
        if name == "user":
            env["ADMIN_EMAILS"] = ADMIN_EMAIL
        return env

    async def start(self, name: str) -> None:
        module = "gateway" if name == "gateway" else f"services.{name}"
        process = await procs.launch(
            [sys.executable, "-m", module],
            name=name,
            env=self.env(name),
            start_timeout=30,
            grace=5,
        )
        self.processes[name] = process

    async def stop(self, name: str, grace: float | None = None) -> None:
        """SIGTERM, and SIGKILL after `grace` seconds (the process's own by default)."""
        process = self.processes.pop(name, None)
        if process is not None:
            await process.stop(grace)
            await process.close()

    async def start_all(self) -> None:
        """Every process, stage by stage; once more on other ports if a chosen port was
        taken meanwhile by someone else."""
        for attempt in (1, 2):
            try:
                for stage in STAGES:
                    results = await asyncio.gather(
                        *(self.start(name) for name in stage), return_exceptions=True
                    )
                    for result in results:
                        if isinstance(result, BaseException):
                            raise result
                return
            except procs.StartError as error:
                if attempt == 2 or "Address already in use" not in str(error):
                    raise
                await self.stop_all()
                self.ports = {name: free_port() for name in self.ports}

    async def stop_all(self) -> None:
        for stage in reversed(STAGES):
            await asyncio.gather(*(self.stop(name) for name in stage))

    def troubles(self, lines: int = 8) -> str:
        """Each process's last warnings and errors (its JSON log lines), for a failure."""
        said = []
        for name, process in self.processes.items():
            worrying = [
                line
                for line in process.stderr_lines
                if '"level": "WARNING"' in line
                or '"level": "ERROR"' in line
                or not line.startswith("{")
            ]
            if worrying:
                said += [f"-- {name} --", *worrying[-lines:]]
        return "\n".join(said) or "(no warnings or errors logged)"

    async def order_while_down(self, token: str, user_id: str, product_id: str) -> str:
        """An order for the user straight at the order service (her token, the mesh's
        client certificate), as if another client placed it; its id."""
        credentials = self.client_tls.channel_credentials()
        async with grpc.aio.secure_channel(self.address("order"), credentials) as channel:
            reply = await order_pb2_grpc.OrderServiceStub(channel).CreateOrder(
                order_pb2.CreateOrderRequest(
                    user_id=user_id,
                    idempotency_key=uuid.uuid4().hex,
                    items=[order_pb2.CreateOrderItem(product_id=product_id, quantity=1)],
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        return str(reply.order.id)


@pytest.fixture(scope="module")
async def console_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConsoleMesh]:
    lacking = missing()
    if lacking:
        message = "browser test: " + "; ".join(lacking)
        if REQUIRE_SERVICES:
            pytest.fail(message + " (SHOP_REQUIRE_SERVICES=1: it must run here)")
        pytest.skip(message)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    data_dir = tmp_path_factory.mktemp("console-mesh")
    # make run's development identities (scripts/run_mesh.py prepare_identities), made
    # before the processes start; "cli" is the certificate to call a service by hand.
    ensure_dev_keys(data_dir / "dev-keys")
    mesh = ConsoleMesh(data_dir, dev_pki(data_dir / "dev-pki", "cli", SERVICE))
    try:
        started = time.monotonic()
        await mesh.start_all()
        mesh.started_in = time.monotonic() - started
        yield mesh
    finally:
        await mesh.stop_all()


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def control_handlers(mesh: ConsoleMesh) -> dict[str, Handler]:
    async def stop_gateway_and_order(ask: dict[str, Any]) -> dict[str, Any]:
        # The gateway waits up to 5 s for open streams to end (Hypercorn's graceful
        # timeout), and the browser's never does: 1 s, then it is killed.
        await mesh.stop("gateway", grace=1.0)
        order_id = await mesh.order_while_down(ask["token"], ask["userId"], ask["productId"])
        return {"orderId": order_id}

    async def start_gateway(ask: dict[str, Any]) -> dict[str, Any]:
        await mesh.start("gateway")
        return {"ok": True}

    return {"stop-gateway-and-order": stop_gateway_and_order, "start-gateway": start_gateway}


def _browser_pids(mark: str) -> list[int]:
    """Processes whose command line carries `mark` (the flag given to this run's chromium)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if mark.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


@dataclass
class DriverRun:
    returncode: int | None  # None: stopped after DRIVER_TIMEOUT
    output: list[str]
    seconds: float

    def case(self, name: str) -> tuple[str, list[str]]:
        """The case's result ("ok", "FAIL" or "none": it never ran) and its lines."""
        lines: list[str] = []
        for line in self.output:
            if line.startswith("== "):
                if lines:
                    break
                if line == f"== {name}":
                    lines.append(line)
            elif lines:
                lines.append(line)
        for line in lines:
            for result in ("ok", "FAIL"):
                if line.startswith(f"{result} {name} "):
                    return result, lines
        return "none", lines


async def run_driver(mesh: ConsoleMesh, cases: tuple[str, ...]) -> DriverRun:
    """Runs the driver's `cases` in one browser, answering its control lines."""
    mark = f"--shop-browser-test={uuid.uuid4().hex}"
    env = {
        **os.environ,
        "CONSOLE_URL": mesh.url,
        "CONSOLE_ADMIN_EMAIL": ADMIN_EMAIL,
        "CONSOLE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CONSOLE_ARTIFACTS": str(ARTIFACTS),
        "CONSOLE_CONTROL": "1",
        "CHROMIUM": str(CHROMIUM),
        "CONSOLE_BROWSER_MARK": mark,
    }
    started = time.monotonic()
    node = await asyncio.create_subprocess_exec(
        *procs.DIE_WITH_PARENT,
        "node",
        str(DRIVER),
        *cases,
        cwd=HERE,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output: list[str] = []
    handlers = control_handlers(mesh)

    async def converse() -> None:
        assert node.stdin is not None and node.stdout is not None
        async for raw in node.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line.startswith("@@control "):
                output.append(line)
                continue
            ask = json.loads(line.removeprefix("@@control "))
            shown = {key: value for key, value in ask.items() if key != "token"}
            output.append(f"@@control {json.dumps(shown)}")
            asked = time.monotonic()
            try:
                answer = await handlers[ask["ask"]](ask)
            except Exception as error:
                answer = {"error": f"{type(error).__name__}: {error}"}
            output.append(f"  (orchestrator: {ask['ask']} in {time.monotonic() - asked:.2f} s)")
            node.stdin.write((json.dumps(answer) + "\n").encode())
            await node.stdin.drain()

    returncode: int | None = None
    try:
        await asyncio.wait_for(converse(), DRIVER_TIMEOUT)
        returncode = await asyncio.wait_for(node.wait(), 10)
    except TimeoutError:
        output.append(f"(the driver ran more than {DRIVER_TIMEOUT:g} s: stopped)")
    finally:
        # playwright closes its browser on SIGTERM; whatever is left is killed by pid.
        if node.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(node.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
                await node.wait()
        for pid in _browser_pids(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return DriverRun(returncode, output, time.monotonic() - started)


@pytest.fixture(scope="module")
async def driver_run(console_mesh: ConsoleMesh) -> DriverRun:
    """Every case, once, in one browser (a browser start costs seconds)."""
    return await run_driver(console_mesh, CASES)


@pytest.mark.parametrize("case", CASES)
def test_console(console_mesh: ConsoleMesh, driver_run: DriverRun, case: str) -> None:
    result, lines = driver_run.case(case)
    print(
        f"mesh started in {console_mesh.started_in:.1f} s; the driver ran "
        f"{driver_run.seconds:.1f} s ({driver_run.output[0] if driver_run.output else 'no output'})"
    )
    print("\n".join(lines))
    if result == "ok":
        return
    said = lines if result == "FAIL" else driver_run.output  # no result: all it said
    pytest.fail(
        f"browser case {case!r}: {'failed' if result == 'FAIL' else 'no result'} "
        f"(driver exit {driver_run.returncode} after {driver_run.seconds:.1f} s); "
        f"screenshots in {ARTIFACTS}\n" + "\n".join(said) + "\n"
        f"-- the mesh's warnings and errors --\n{console_mesh.troubles()}",
        pytrace=False,
    )
