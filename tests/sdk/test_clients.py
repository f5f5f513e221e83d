"""The client libraries as an external app gets them: the wheel in a fresh virtualenv and
the npm package in a fresh Node project, both outside the repository, calling the
gateway over Connect, gRPC-Web and gRPC."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from tests import tokens
from tests.sdk.conftest import HERE, outside_env, run

# Building, a virtualenv and installs from the registries: more than a usual test.
pytestmark = pytest.mark.timeout(360)


async def test_python_wheel_calls_the_gateway(client_python: Path, gateway_url: str) -> None:
    workdir = client_python.parents[2] / "app"
    workdir.mkdir(exist_ok=True)
    shutil.copy(HERE / "client_program.py", workdir)
    result = await asyncio.to_thread(
        run,
        [client_python, "client_program.py", gateway_url],
        workdir,
        outside_env(SHOP_TOKEN=tokens.ADMIN_TOKEN),
        60,
    )
    lines = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert lines == [
        "ok isolated",
        "ok connect sync",
        "ok connect async (connect json)",
        "ok connect async (grpc-web)",
        "ok grpcio",
    ], result.stdout + result.stderr


PROBE = """\
import grpc
from shop.product.v1 import product_connect, product_pb2, product_pb2_grpc

def probe(
    sync: product_connect.ProductServiceClientSync, channel: grpc.Channel
) -> None:
    request = product_pb2.GetProductRequest(id="prd_1")
    reveal_type(sync.get_product(request).product.price.amount_minor)
    reveal_type(product_pb2_grpc.ProductServiceStub(channel).GetProduct(request))
    product_pb2.CreateProductRequest(stock="many")
"""


async def test_python_wheel_is_typed(client_python: Path) -> None:
    """mypy (this environment's) on code that uses the installed wheel: the types come
    from its .pyi files and py.typed markers, and a wrong field type is an error."""
    workdir = client_python.parents[2] / "typing"
    workdir.mkdir(exist_ok=True)
    (workdir / "probe.py").write_text(PROBE, "utf-8")
    argv = [sys.executable, "-m", "mypy", "--python-executable", str(client_python)]
    argv += ["--strict", "--config-file=", "--cache-dir", str(workdir / ".cache"), "probe.py"]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workdir,
        env=outside_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), 120))[0].decode()
    lines = [line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("probe.py")]
    assert lines == [
        'note: Revealed type is "int"',
        'note: Revealed type is "shop.product.v1.product_pb2.GetProductResponse"',
        'error: Argument "stock" to "CreateProductRequest" has incompatible type "str"; '
        'expected "int | None"  [arg-type]',
    ], output


async def test_npm_package_calls_the_gateway(node_app: Path, gateway_url: str) -> None:
    result = await asyncio.to_thread(
        run,
        ["node", node_app.name, gateway_url],
        node_app.parent,
        outside_env(SHOP_TOKEN=tokens.ADMIN_TOKEN),
        60,
    )
    assert result.stdout.splitlines() == [
        "ok connect json http/1.1",
        "ok connect binary http/2",
        "ok grpc-web",
        "ok grpc",
    ], result.stdout + result.stderr
