"""`gateway.asgi:app`, for any ASGI server (settings from the environment)."""

from gateway.app import create_app

app = create_app()
