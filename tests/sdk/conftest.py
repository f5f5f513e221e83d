"""What the client-library tests share: the packages, built once per session from this
checkout (scripts/sdk.py, --dev so unrecorded contracts build too), installed the way an
external app installs them (a fresh virtualenv, a fresh npm project, both outside the
repository), and a gateway in front of the mesh for them to call.

Node and npm are needed for the npm package: the tests skip without them, except under
SHOP_REQUIRE_SERVICES=1 (CI), where that fails."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from scripts import sdk
from scripts.procs import DIE_WITH_PARENT
from tests.conftest import REQUIRE_SERVICES
from tests.e2e.conftest import gateway_env
from tests.mesh import running_mesh
from tests.processes import service_process

HERE = Path(__file__).resolve().parent
CONNECT = ("connect", "connect-node")  # @connectrpc/*, at the console's version


def need(tool: str) -> None:
    if shutil.which(tool):
        return
    message = f"{tool} is not installed"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (SHOP_REQUIRE_SERVICES=1: it must be here)")
    pytest.skip(message)


def outside_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would lead a child back into the repo."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "NODE_PATH")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def run(
    argv: Sequence[str | Path],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Runs a command to the end (killed with this process if it dies); fails the test
    with its output if it fails."""
    result = subprocess.run(
        [*DIE_WITH_PARENT, *map(str, argv)],
        cwd=cwd,
        env=dict(env) if env is not None else outside_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def sdk_version() -> sdk.Version:
    return sdk.resolve_version(dev=True)


@pytest.fixture(scope="session")
async def client_python(tmp_path_factory: pytest.TempPathFactory, sdk_version: sdk.Version) -> Path:
    """The interpreter of a fresh virtualenv (outside the repository) that has the wheel,
    with its `typing` extra, and nothing else of this project."""
    home = tmp_path_factory.mktemp("sdk-python")
    wheel = await asyncio.to_thread(sdk.build_python, sdk_version.python, home / "dist")
    venv = home / "venv"
    # No pip inside: this environment's pip installs into it (--python), which saves
    # bootstrapping one.
    await asyncio.to_thread(run, [sys.executable, "-m", "venv", "--without-pip", venv], home)
    python = venv / "bin" / "python"
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", python, "install"]
    pip += ["--quiet", "--disable-pip-version-check", f"{wheel}[typing]"]
    await asyncio.to_thread(run, pip, home)
    return python


@pytest.fixture(scope="session")
async def node_app(tmp_path_factory: pytest.TempPathFactory, sdk_version: sdk.Version) -> Path:
    """A fresh npm project (outside the repository) with the packed tarball and the
    Connect runtime for Node at the versions the console pins, and client_program.mts
    compiled in it by tsc (strict, resolving the package through its exports map as
    Node does): returns the compiled program."""
    need("node")
    need("npm")
    home = tmp_path_factory.mktemp("sdk-npm")
    tarball = await asyncio.to_thread(sdk.build_npm, sdk_version.npm, home / "dist")
    pins = json.loads((sdk.WEB / "package.json").read_text("utf-8"))["dependencies"]
    app = home / "app"
    app.mkdir()
    npm: list[str | Path] = [
        "npm",
        "--no-audit",
        "--no-fund",
        "--prefer-offline",
        "--loglevel=error",
    ]
    await asyncio.to_thread(run, [*npm, "init", "-y"], app)
    install: list[str | Path] = [*npm, "install", tarball, "@types/node@20"]
    install.append(f"@bufbuild/protobuf@{pins['@bufbuild/protobuf']}")
    install += [f"@connectrpc/{name}@{pins['@connectrpc/connect']}" for name in CONNECT]
    await asyncio.to_thread(run, install, app)
    shutil.copy(HERE / "client_program.mts", app)
    # skipLibCheck: the package's own .d.ts were checked when it was built; checking
    # @types/node's again would double this step's time.
    tsc: list[str | Path] = ["node", sdk.TSC, "--strict", "--skipLibCheck", "--target", "es2022"]
    tsc += ["--module", "nodenext", "--types", "node", "client_program.mts"]
    await asyncio.to_thread(run, tsc, app)
    return app / "client_program.mjs"


@pytest.fixture(scope="module")
async def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The gateway (its own process, as `python -m gateway` runs it) in front of the mesh."""
    async with (
        running_mesh(tmp_path_factory.mktemp("sdk-mesh")) as mesh,
        service_process("gateway", gateway_env(mesh), module="gateway") as gateway,
    ):
        yield f"http://{gateway.address}"
