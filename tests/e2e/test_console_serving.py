"""The browser console as the gateway serves it (no browser): the page and its assets
with their security and cache headers, path traversal refused, the API paths as they
were, and a clear 404 when the bundle is missing."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.types import Message

from gateway import console
from tests.e2e.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
# Lines of pyproject.toml that must never come back from a traversal attempt.
SECRET_MARKERS = (b"[tool.ruff]", b"[project]", b"requires-python")


def fetch(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """curl with the path sent exactly as written (`--path-as-is`: no `..` folding)."""
    result = subprocess.run(
        ["curl", "-s", "-m", "10", "--path-as-is", "-D", "-", *args, url],
        capture_output=True,
        check=True,
    )
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    return int(lines[0].split()[1]), headers, body


async def get(stack: Stack, path: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(fetch, f"{stack.url}{path}", *args)


def assert_secured(headers: dict[str, str]) -> None:
    for name, value in SECURITY.items():
        assert headers.get(name) == value, (name, headers)


async def test_the_page_and_its_assets_with_their_headers(stack: Stack) -> None:
    status, headers, body = await get(stack, "/")
    assert status == 200, body
    assert headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "no-cache"
    assert_secured(headers)
    page = body.decode()
    assert '<div id="app"></div>' in page
    # Nothing inline that the CSP would block: every script is a file, no style attribute.
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and all("src=" in tag for tag in scripts), scripts
    assert "style=" not in page and "<style" not in page

    assets = re.findall(r'(?:src|href)="(/assets/[^"]+)"', page)
    kinds = {Path(asset).suffix for asset in assets}
    assert {".js", ".css"} <= kinds, assets
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for asset in assets:
        status, headers, body = await get(stack, asset)
        assert status == 200, asset
        assert headers["content-type"].startswith(expected[Path(asset).suffix]), headers
        assert headers["cache-control"] == "public, max-age=31536000, immutable"
        assert_secured(headers)
        assert body == (ROOT / "gateway" / "console" / asset.lstrip("/")).read_bytes()

    status, headers, body = await get(stack, assets[0], "-I")
    assert (status, body.strip()) == (200, b"")  # HEAD: the headers, no body
    assert headers["cache-control"] == "public, max-age=31536000, immutable"


TRAVERSALS = (
    "/assets/../../pyproject.toml",
    "/assets/../pyproject.toml",
    "/assets/..%2F..%2Fpyproject.toml",
    "/assets/..%2f..%2fpyproject.toml",
    "/assets/%2e%2e/%2e%2e/pyproject.toml",
    "/assets/%2e%2e%2f%2e%2e%2fpyproject.toml",
    "/assets/.%2e/.%2e/pyproject.toml",
    "/assets/..%5c..%5cpyproject.toml",
    "/assets/%252e%252e%252f%252e%252e%252fpyproject.toml",
    "/assets/..",
    "/assets/%2e%2e",
    "/assets/.",
    "/assets//pyproject.toml",
    "/assets/%2Fwork%2Fpyproject.toml",
    "/assets/index.html/../../../pyproject.toml",
    "/..%2Fpyproject.toml",
    "/%2e%2e/pyproject.toml",
    "/pyproject.toml",
    "/index.html/../pyproject.toml",
)


async def test_a_path_outside_the_bundle_is_not_found(stack: Stack) -> None:
    assert (ROOT / "pyproject.toml").is_file()  # there is something to reach for
    for path in TRAVERSALS:
        status, headers, body = await get(stack, path)
        assert status == 404, (path, body)
        assert not any(marker in body for marker in SECRET_MARKERS), (path, body)
        # The gateway's own JSON 404, as for any other unknown path.
        assert headers["content-type"].startswith("application/json"), (path, headers)
        assert json.loads(body)["code"] == 5, path


async def test_unknown_paths_keep_the_gateways_json_404(stack: Stack) -> None:
    for path in ("/nothing-here", "/assets/nothing.js", "/assets/a/b.js", "/assets/"):
        status, headers, body = await get(stack, path)
        assert status == 404, path
        assert headers["content-type"].startswith("application/json"), (path, headers)
        assert json.loads(body)["code"] == 5


async def connect_call(stack: Stack, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, payload = await get(
        stack,
        f"/{method}",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps(body),
    )
    return status, json.loads(payload)


async def test_the_api_paths_are_unchanged(stack: Stack) -> None:
    status, headers, body = await get(stack, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert "content-security-policy" not in headers  # the console's headers stay its own

    status, answer = await connect_call(
        stack, "shop.product.v1.ProductService/ListProducts", {"pageSize": 1}
    )
    assert status == 200, answer
    assert "products" in answer or answer == {}

    status, answer = await connect_call(stack, "shop.product.v1.ProductService/Nope", {})
    assert status == 404 and answer["code"] == "unimplemented", answer

    status, _, body = await get(stack, "/v1/products?pageSize=1")
    assert status == 200, body
    status, _, body = await get(stack, "/openapi.json")
    assert status == 200 and json.loads(body)["openapi"].startswith("3."), body[:200]
    status, _, body = await get(stack, "/.well-known/jwks.json")
    assert status == 200 and "keys" in json.loads(body), body
    status, headers, _ = await get(stack, "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")

    # The console answers GET and HEAD only; other methods get the gateway's 405.
    status, _, body = await get(stack, "/", "-X", "POST", "-d", "x")
    assert status == 405, body


async def call_asgi(app: Starlette, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET through the ASGI application itself (no server needed)."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body


async def test_a_missing_bundle_is_a_clear_404(tmp_path: Path) -> None:
    app = Starlette(routes=console.routes(tmp_path))
    status, headers, body = await call_asgi(app, "/")
    assert status == 404
    assert_secured(headers)
    answer = json.loads(body)
    assert answer["code"] == 5 and "make web" in answer["message"], answer

    (tmp_path / "index.html").write_text("<!doctype html><title>t</title>")
    status, headers, body = await call_asgi(app, "/")
    assert (status, headers["cache-control"]) == (200, "no-cache")
    status, _, _ = await call_asgi(app, "/assets/index-0.js")
    assert status == 404
