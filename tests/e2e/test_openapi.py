"""The OpenAPI document, the docs page, CORS, and a bounded schemathesis run."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import tokens
from tests.e2e.conftest import Stack, curl, gateway_env
from tests.mesh import running_mesh
from tests.processes import service_process

ROOT = Path(__file__).resolve().parents[2]


async def test_openapi_describes_every_rest_route(stack: Stack) -> None:
    status, spec = await asyncio.to_thread(curl, f"{stack.url}/openapi.json")
    assert status == 200 and spec["openapi"] == "3.1.0"
    paths = spec["paths"]
    assert set(paths["/v1/users"]) == {"get", "post"}
    assert "patch" in paths["/v1/products/{id}"] and "get" in paths["/v1/products/{id}"]
    assert set(paths["/v1/orders"]) == {"get", "post"}  # CreateOrder, and ListOrders' extra binding
    stream = paths["/v1/users/{user_id}/notifications:stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    schemas = spec["components"]["schemas"]
    create_user = schemas["shop.user.v1.CreateUserRequest"]
    assert create_user["required"] == ["email", "displayName"]
    assert create_user["properties"]["email"] == {
        "type": "string",
        "format": "email",
        "maxLength": 254,
        "description": "Email address to sign up with; it must not be taken.",
    }
    page_size = next(p for p in paths["/v1/users"]["get"]["parameters"] if p["name"] == "pageSize")
    assert (page_size["schema"]["minimum"], page_size["schema"]["maximum"]) == (1, 1000)
    money = schemas["shop.common.v1.Money"]["properties"]
    assert "EUR" in money["currencyCode"]["enum"] and money["amountMinor"]["type"] == "string"
    assert schemas["shop.user.v1.User"]["properties"]["createTime"]["format"] == "date-time"
    assert paths["/v1/users"]["post"]["responses"]["default"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/google.rpc.Status"}


async def test_openapi_says_who_may_call_and_what_the_protos_say(stack: Stack) -> None:
    status, spec = await asyncio.to_thread(curl, f"{stack.url}/openapi.json", token=None)
    assert status == 200
    bearer = spec["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"], bearer["bearerFormat"]) == ("http", "bearer", "JWT")
    paths = spec["paths"]
    get_product = paths["/v1/products/{id}"]["get"]
    get_user = paths["/v1/users/{id}"]["get"]
    create_product = paths["/v1/products"]["post"]
    assert get_product.get("security", []) == []  # ACCESS_PUBLIC
    assert "401" not in get_product["responses"]
    assert get_user["security"] == [{"bearer": []}]  # ACCESS_SIGNED_IN
    assert create_product["security"] == [{"bearer": []}]  # ACCESS_ADMIN
    assert "`ACCESS_ADMIN`" in create_product["description"]
    assert set(get_user["responses"]) == {"200", "401", "403", "default"}
    operations = [op for methods in paths.values() for op in methods.values()]
    assert len(operations) == 23  # 19, and the four of AuthService
    status_ref = {"$ref": "#/components/schemas/google.rpc.Status"}
    for op in operations:
        assert op["summary"] and op["summary"].endswith("."), op["operationId"]
        assert op["responses"]["default"]["content"]["application/json"]["schema"] == status_ref
    # The proto comments: the first sentence is the summary, the whole comment the description.
    create_user = paths["/v1/users"]["post"]
    assert create_user["summary"] == "Creates a user."
    assert create_user["description"].startswith(
        "Creates a user. The email must not be taken (ALREADY_EXISTS otherwise)."
    )
    assert get_user["summary"] == "Returns one user by id (NOT_FOUND for an unknown id)."
    schemas = spec["components"]["schemas"]
    user = schemas["shop.user.v1.User"]
    assert user["description"] == "A customer account."
    assert user["properties"]["active"]["description"] == "Only active users can place orders."
    status_field = schemas["shop.order.v1.Order"]["properties"]["status"]["description"]
    assert "- `ORDER_STATUS_PLACED`: Stored with its stock reserved." in status_field
    undocumented = [
        f"{name}.{prop}" if prop else name
        for name, schema in schemas.items()
        for prop in ["", *schema.get("properties", {})]
        if "description" not in (schema["properties"][prop] if prop else schema)
    ]
    assert undocumented == []


async def test_docs_page_is_served_without_a_cdn(stack: Stack) -> None:
    def fetch(path: str) -> tuple[int, dict[str, str], bytes]:
        with urllib.request.urlopen(f"{stack.url}{path}", timeout=10) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )

    status, headers, body = await asyncio.to_thread(fetch, "/docs")
    assert status == 200
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-frame-options"] == "DENY"
    page = body.decode()
    assert "https://" not in page and "/docs/assets/swagger-ui-bundle.js" in page
    status, _, script = await asyncio.to_thread(fetch, "/docs/assets/swagger-ui-bundle.js")
    assert status == 200 and len(script) > 100_000


@pytest.fixture
async def cors_gateway(tmp_path: Path) -> AsyncIterator[str]:
    async with running_mesh(tmp_path) as mesh:
        env = {**gateway_env(mesh), "GATEWAY_CORS_ORIGINS": "http://shop.test"}
        async with service_process("gateway", env, module="gateway") as gateway:
            yield f"http://{gateway.address}"


async def test_cors_allows_configured_origins_and_exposes_grpc_headers(cors_gateway: str) -> None:
    def preflight(origin: str) -> str:
        return subprocess.run(
            [
                "curl",
                "-s",
                "-i",
                "-X",
                "OPTIONS",
                f"{cors_gateway}/shop.user.v1.UserService/CreateUser",
                "-H",
                f"origin: {origin}",
                "-H",
                "access-control-request-method: POST",
                "-H",
                "access-control-request-headers: content-type,connect-protocol-version,x-grpc-web",
            ],
            capture_output=True,
            text=True,
        ).stdout.lower()

    allowed = await asyncio.to_thread(preflight, "http://shop.test")
    assert "access-control-allow-origin: http://shop.test" in allowed
    assert "connect-protocol-version" in allowed and "x-grpc-web" in allowed
    refused = await asyncio.to_thread(preflight, "http://evil.test")
    assert "access-control-allow-origin" not in refused
    simple = await asyncio.to_thread(
        subprocess.run,
        [
            "curl",
            "-s",
            "-i",
            "-X",
            "POST",
            f"{cors_gateway}/shop.user.v1.UserService/GetUser",
            "-H",
            "origin: http://shop.test",
            "-H",
            "content-type: application/json",
            "-d",
            '{"id": "usr_x"}',
        ],
        capture_output=True,
        text=True,
    )
    assert (
        "grpc-status-details-bin"
        in simple.stdout.lower().split("access-control-expose-headers:")[1].splitlines()[0]
    )


async def test_schemathesis_finds_no_server_error_and_no_schema_break(stack: Stack) -> None:
    """A bounded fuzz run over every REST operation but the endless streams."""
    result = await asyncio.to_thread(
        subprocess.run,
        [
            str(ROOT / ".venv" / "bin" / "schemathesis"),
            "run",
            f"{stack.url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--exclude-path-regex",
            ":stream$",
            "--header",
            tokens.ADMIN_HEADER,
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            "--phases",
            "examples,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=stack.mesh.data_dir,  # its cache stays out of the repository
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1].lower()
