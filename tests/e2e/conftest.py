"""What the whole-mesh tests share: the mesh with the gateway in front, and curl."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mesh import Mesh, running_mesh
from tests.processes import service_process


@dataclass
class Stack:
    mesh: Mesh
    url: str  # http://127.0.0.1:<port>, the gateway


def gateway_env(mesh: Mesh) -> dict[str, str]:
    env = {f"{name.upper()}_SERVICE_ADDR": f"127.0.0.1:{port}" for name, port in mesh.ports.items()}
    return {**env, "LOG_LEVEL": "WARNING", "GATEWAY_FORWARD_HEADERS": "accept-language,x-tenant"}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with (
        running_mesh(tmp_path) as mesh,
        service_process("gateway", gateway_env(mesh), module="gateway") as gateway,
    ):
        yield Stack(mesh, f"http://{gateway.address}")


def curl(*args: str) -> tuple[int, dict[str, Any]]:
    """curl, as a person would use it; returns the HTTP status and the JSON body."""
    result = subprocess.run(
        ["curl", "-s", "-m", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except ValueError:
        return int(status), {"text": body}
