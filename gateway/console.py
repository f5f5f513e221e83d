"""The browser console at `/`: the bundle that `make web` builds from web/ into
gateway/console (committed, so the gateway needs no Node).

Only two kinds of path are served: `/` (index.html, revalidated on every load so a new
bundle shows at once) and `/assets/<name>` (content-hashed names, so cached for a year
as immutable). An asset name is a single path segment of safe characters, so `..`,
slashes and encoded variants never reach the file system; every other path falls
through to the gateway's own routes and its JSON 404. Every answer carries the
security headers below: the console runs only its own files, talks only to its origin
and cannot be framed.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

from google.rpc import code_pb2, status_pb2
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.rest import status_response

DIRECTORY = Path(__file__).resolve().parent / "console"
ASSETS = "assets"

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

# One segment, no leading dot: what Vite names its output (`index-Q9gQdOu2.js`).
_ASSET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Given explicitly: with nosniff, a script served under a wrong type does not run, and
# the platform's mimetypes table varies.
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".json": "application/json",
}


def _media_type(path: Path) -> str:
    guessed = mimetypes.guess_type(path.name)[0]
    return _TYPES.get(path.suffix) or guessed or "application/octet-stream"


def _missing(message: str) -> Response:
    response = status_response(status_pb2.Status(code=code_pb2.NOT_FOUND, message=message))
    response.headers.update(SECURITY_HEADERS)
    return response


def routes(directory: Path = DIRECTORY) -> list[BaseRoute]:
    """The console's routes, for the gateway's route list (after its API routes)."""
    assets = directory / ASSETS

    async def index(_: Request) -> Response:
        page = directory / "index.html"
        if not page.is_file():
            return _missing(
                "the console is not built: gateway/console/index.html is missing "
                "(run `make web`, or restore the committed bundle)"
            )
        headers = {**SECURITY_HEADERS, "cache-control": REVALIDATE}
        return FileResponse(page, media_type="text/html; charset=utf-8", headers=headers)

    async def asset(request: Request) -> Response:
        name = str(request.path_params["name"])
        path = assets / name
        if not (_ASSET_NAME.fullmatch(name) and path.is_file() and path.parent == assets):
            return _missing(f"no route for {request.method} {request.url.path}")
        headers = {**SECURITY_HEADERS, "cache-control": IMMUTABLE}
        return FileResponse(path, media_type=_media_type(path), headers=headers)

    return [
        Route("/", index, methods=["GET", "HEAD"]),
        # `{name}` matches one segment only: `/assets/a/b` is not this route.
        Route(f"/{ASSETS}/{{name}}", asset, methods=["GET", "HEAD"]),
    ]
