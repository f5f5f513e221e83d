"""Gateway settings (GATEWAY_*), with defaults that run on one machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.common.config import (
    GATEWAY,
    AuthSettings,
    BreakerSettings,
    EnvReader,
    TlsSettings,
    service_addresses,
)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Prometheus /metrics, on a port of its own (PORT + 1000 by default; 0: any free port).
    metrics_port: int = 0
    # Internal services: name -> address list (`*_SERVICE_ADDR`).
    upstreams: dict[str, str] = field(default_factory=dict)
    # Deadline of a forwarded unary call when the client sets none, in seconds.
    default_timeout: float = 30.0
    # Request headers passed on to the services, besides the request id and trace context.
    forward_headers: tuple[str, ...] = ("accept-language",)
    # Largest request body accepted, in bytes.
    max_body_bytes: int = 1 << 20
    cors_origins: tuple[str, ...] = ()
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    # Requests a second per client (user, else address), with bursts up to rate_burst;
    # 0 turns the limit off. And the streams one client may hold open.
    rate_limit: float = 100.0
    rate_burst: float = 200.0
    max_streams_per_client: int = 16
    # The keys that verify callers' tokens (from_env: JWT_*, or the development keys).
    auth: AuthSettings = field(kw_only=True)
    # The gateway's client certificate for the services (services.common.tls).
    tls: TlsSettings = field(kw_only=True)

    @classmethod
    def from_env(cls) -> GatewayConfig:
        """The settings from the environment; every bad variable is reported at once.
        No file is read or made (see services.common.devsetup)."""
        read = EnvReader()
        data_dir = Path(read.text("DATA_DIR", "./var"))
        port = read.port("PORT", 8080)
        config = cls(
            host=read.text("HOST", "127.0.0.1"),
            port=port,
            metrics_port=read.port("METRICS_PORT", port + 1000 if port else 0),
            upstreams=service_addresses(),
            default_timeout=read.number("GATEWAY_DEFAULT_TIMEOUT", 30.0),
            forward_headers=_csv(read.text("GATEWAY_FORWARD_HEADERS", "accept-language")),
            max_body_bytes=read.integer("GATEWAY_MAX_BODY_BYTES", 1 << 20),
            cors_origins=_csv(read.text("GATEWAY_CORS_ORIGINS", "")),
            breaker=BreakerSettings.from_env(read),
            rate_limit=read.number("GATEWAY_RATE_LIMIT", 100.0),
            rate_burst=read.number("GATEWAY_RATE_BURST", 200.0),
            max_streams_per_client=read.integer("GATEWAY_MAX_STREAMS_PER_CLIENT", 16),
            auth=AuthSettings.from_env(data_dir, read),
            tls=TlsSettings.from_env("gateway", GATEWAY, data_dir, read),
        )
        read.check()
        return config
