"""`/docs`: Swagger UI for `/openapi.json`, its assets served from the installed
openapi-ui-bundles package (no CDN), with security headers that keep it to itself."""

from __future__ import annotations

from openapi_ui_bundles import swagger_ui
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/assets"
PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Shop mesh API</title>
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS}/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""
INIT = (
    'window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});'
)
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


async def page(_: Request) -> HTMLResponse:
    return HTMLResponse(PAGE, headers=SECURITY_HEADERS)


async def init_script(_: Request) -> HTMLResponse:
    return HTMLResponse(INIT, media_type="text/javascript", headers=SECURITY_HEADERS)


assets = StaticFiles(directory=swagger_ui.static_path)
