"""Gateway settings (GATEWAY_*), with defaults that run on one machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.common.auth import AuthSettings
from services.common.config import (
    BreakerSettings,
    env,
    env_float,
    metrics_port,
    port_from_env,
    service_addresses,
)
from services.common.tls import GATEWAY, TlsSettings


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
    # The keys that verify callers' tokens (by default the development keys in ./var).
    auth: AuthSettings = field(default_factory=lambda: AuthSettings.from_env(Path("./var")))
    # The gateway's client certificate for the services (services.common.tls).
    tls: TlsSettings = field(
        default_factory=lambda: TlsSettings.from_env("gateway", GATEWAY, Path("./var"))
    )

    @classmethod
    def from_env(cls) -> GatewayConfig:
        port = port_from_env(8080)
        return cls(
            host=env("HOST", "127.0.0.1"),
            port=port,
            metrics_port=metrics_port(port),
            upstreams=service_addresses(),
            default_timeout=env_float("GATEWAY_DEFAULT_TIMEOUT", 30.0),
            forward_headers=_csv(env("GATEWAY_FORWARD_HEADERS", "accept-language")),
            max_body_bytes=int(env("GATEWAY_MAX_BODY_BYTES", str(1 << 20))),
            cors_origins=_csv(env("GATEWAY_CORS_ORIGINS", "")),
            breaker=BreakerSettings.from_env(),
            rate_limit=env_float("GATEWAY_RATE_LIMIT", 100.0),
            rate_burst=env_float("GATEWAY_RATE_BURST", 200.0),
            max_streams_per_client=int(env_float("GATEWAY_MAX_STREAMS_PER_CLIENT", 16)),
            auth=AuthSettings.from_env(Path(env("DATA_DIR", "./var"))),
            tls=TlsSettings.from_env("gateway", GATEWAY, Path(env("DATA_DIR", "./var"))),
        )
