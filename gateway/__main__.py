"""`python -m gateway`: serves the gateway on one port for every protocol (HTTP/1.1 and
cleartext HTTP/2 with trailers, `gateway.server`), so Connect (POST and GET), gRPC-Web,
REST and real gRPC all work there. Metrics are served on a port of their own."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys

from gateway.config import GatewayConfig
from services.common import eventloop, logs, telemetry
from services.common.config import env
from services.common.devsetup import ensure_development_identities

log = logging.getLogger("shop.gateway")
# How long requests under way may take to finish once asked to stop.
GRACEFUL_SECONDS = 5.0


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound here rather than by the server, so that port 0 tells us the port it got."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def run() -> None:
    from gateway.app import create_app
    from gateway.server import serve

    config = GatewayConfig.from_env()
    ensure_development_identities(config)
    sock = listening_socket(config.host, config.port)
    address = f"{config.host}:{sock.getsockname()[1]}"
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    app = create_app(config)
    metrics = app.state.metrics
    metrics_address = f"{config.host}:{metrics.serve(config.host, config.metrics_port)}"
    print(
        json.dumps({"service": "gateway", "listening": address, "metrics": metrics_address}),
        flush=True,
    )
    log.info("serving", extra={"address": address, "metrics": metrics_address})
    try:
        await serve(app, sock, shutdown_trigger=stopping.wait, graceful_timeout=GRACEFUL_SECONDS)
    finally:
        metrics.close()
    log.info("stopped")


def main() -> None:
    logs.configure("gateway", env("LOG_LEVEL", "INFO").upper())
    telemetry.configure("gateway")
    try:
        eventloop.run(run())
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
