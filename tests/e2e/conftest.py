"""What the whole-mesh tests share: the mesh with the gateway in front, and curl."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import tokens
from tests.mesh import Mesh, running_mesh
from tests.processes import service_process


@dataclass
class Stack:
    mesh: Mesh
    url: str  # http://127.0.0.1:<port>, the gateway
    gateway_log: list[str]  # the gateway process's JSON log lines so far


def gateway_env(mesh: Mesh) -> dict[str, str]:
    env = {f"{name.upper()}_SERVICE_ADDR": f"127.0.0.1:{port}" for name, port in mesh.ports.items()}
    return {
        **env,
        "LOG_LEVEL": "INFO",  # the access log (test_hardening reads it)
        "GATEWAY_FORWARD_HEADERS": "accept-language,x-tenant",
        # The suites call from one address faster than a client may; test_limits sets it.
        "GATEWAY_RATE_LIMIT": "0",
    }


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with (
        # Every service the gateway serves a public API of, so none of its routes is a 503.
        running_mesh(tmp_path) as mesh,
        service_process("gateway", gateway_env(mesh), module="gateway") as gateway,
    ):
        yield Stack(mesh, f"http://{gateway.address}", gateway.stderr_lines)


def curl(*args: str, token: str | None = tokens.ADMIN_TOKEN) -> tuple[int, dict[str, Any]]:
    """curl, as a person would use it (signed in as the test admin unless `token` says
    otherwise; None: no token); returns the HTTP status and the JSON body."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    result = subprocess.run(
        ["curl", "-s", "-m", "10", "-w", "\n%{http_code}", *auth, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except ValueError:
        return int(status), {"text": body}


@dataclass
class InProcessGateway:
    url: str  # the gateway, http://127.0.0.1:<port>
    metrics_url: str  # its /metrics server, http://127.0.0.1:<port>


@asynccontextmanager
async def gateway_in_process(mesh: Mesh) -> AsyncIterator[InProcessGateway]:
    """The gateway app served as `python -m gateway` serves it, in this event loop (for
    tests that need its spans or its state in this process), its metrics on a port of
    their own."""
    from gateway.__main__ import listening_socket
    from gateway.app import create_app
    from gateway.config import GatewayConfig
    from gateway.server import serve

    upstreams = {name: f"127.0.0.1:{port}" for name, port in mesh.ports.items()}
    settings = GatewayConfig(
        upstreams={**upstreams, **mesh.peer_addresses},
        auth=tokens.SETTINGS,
        tls=tokens.gateway_tls(),
    )
    app = create_app(settings)
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stopping = asyncio.Event()
    server = asyncio.create_task(serve(app, sock, stopping.wait, graceful_timeout=1.0))
    metrics_port = app.state.metrics.serve("127.0.0.1", 0)
    try:
        yield InProcessGateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}")
    finally:
        app.state.metrics.close()
        stopping.set()
        await asyncio.wait_for(server, 10)
