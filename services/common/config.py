"""Settings from environment variables, with defaults that run on one machine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.common.auth import AuthSettings
    from services.common.tls import TlsSettings

# Where each service listens by default; `<NAME>_SERVICE_ADDR` overrides it for callers,
# and may list several replicas (`host:p1,host:p2`).
DEFAULT_PORTS = {"user": 50051, "product": 50052, "order": 50053, "notification": 50054}


def env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def service_addresses() -> dict[str, str]:
    """Every service's address list, from `<NAME>_SERVICE_ADDR` or its default port."""
    return {
        name: env(f"{name.upper()}_SERVICE_ADDR", f"127.0.0.1:{port}")
        for name, port in DEFAULT_PORTS.items()
    }


@dataclass(frozen=True)
class BreakerSettings:
    """A peer's circuit opens after `threshold` failed calls in a row, for `reset_after` s."""

    threshold: int = 5
    reset_after: float = 2.0

    @classmethod
    def from_env(cls) -> BreakerSettings:
        return cls(
            threshold=int(env_float("BREAKER_THRESHOLD", 5)),
            reset_after=env_float("BREAKER_RESET_SECONDS", 2.0),
        )


def _auth_from_env(data_dir: Path) -> AuthSettings:
    from services.common.auth import AuthSettings  # auth builds on this module

    return AuthSettings.from_env(data_dir)


def _tls_from_env(name: str, data_dir: Path) -> TlsSettings:
    from services.common.tls import SERVICE, TlsSettings  # tls builds on this module

    return TlsSettings.from_env(name, SERVICE, data_dir)


def port_from_env(default: int, name: str = "PORT") -> int:
    """A port number from the environment: 0 (any free port) to 65535."""
    raw = env(name, str(default))
    if not raw.isdigit() or int(raw) > 65535:
        raise SystemExit(f"{name} must be 0..65535, not {raw!r}")
    return int(raw)


def metrics_port(grpc_or_http_port: int) -> int:
    """METRICS_PORT, or the serving port + 1000 (any free port when that is 0)."""
    return port_from_env(grpc_or_http_port + 1000 if grpc_or_http_port else 0, "METRICS_PORT")


def env_float(name: str, default: float) -> float:
    raw = env(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, not {raw!r}") from None


@dataclass(frozen=True)
class ServiceConfig:
    """What a service process needs to start: where to listen and where its data lives."""

    name: str
    host: str
    port: int
    data_dir: Path
    database_url: str
    # Signs page tokens; set the same value on every replica of a service.
    page_token_secret: str
    # How often readiness is re-checked against the database, in seconds.
    health_interval: float
    # How long in-flight calls may finish after SIGTERM, in seconds.
    shutdown_grace: float
    log_level: str
    # Empty: no broker (events follow the order service's outbox over gRPC).
    # `nats://host:4222`: NATS JetStream.
    broker_url: str = ""
    # JetStream stream and subject prefix, so that several meshes (or test runs) can
    # share one NATS server without their subjects overlapping.
    event_stream: str = "SHOP"
    event_subject_prefix: str = "shop"
    # Copies JetStream keeps of the stream (1, or 3 on a 3-node cluster to survive a node).
    event_stream_replicas: int = 1
    # Peer service name -> address list, from `<NAME>_SERVICE_ADDR`.
    peers: Mapping[str, str] = field(default_factory=dict)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    # Prometheus /metrics over HTTP; None: not served.
    metrics_port: int | None = None
    # grpc.health.v1 alone, in plaintext, for probes that can't present a client
    # certificate (Kubernetes' gRPC probes); None: not served.
    health_port: int | None = None
    # Where the public keys that verify callers' tokens are (see services.common.auth).
    auth: AuthSettings = field(default_factory=lambda: _auth_from_env(Path("./var")))
    # This process's certificate and the mesh CA (services.common.tls).
    tls: TlsSettings = field(default_factory=lambda: _tls_from_env("service", Path("./var")))

    def peer(self, name: str) -> str:
        return self.peers.get(name) or f"127.0.0.1:{DEFAULT_PORTS[name]}"

    @classmethod
    def from_env(cls, name: str, default_port: int) -> ServiceConfig:
        prefix = name.upper()
        data_dir = Path(env("DATA_DIR", "./var"))
        port = port_from_env(default_port)
        return cls(
            name=name,
            host=env("HOST", "127.0.0.1"),
            port=port,
            data_dir=data_dir,
            database_url=env(
                f"{prefix}_DATABASE_URL", f"sqlite+aiosqlite:///{data_dir / (name + '.db')}"
            ),
            page_token_secret=env("PAGE_TOKEN_SECRET", f"shop-{name}-development-page-tokens"),
            health_interval=env_float("HEALTH_CHECK_INTERVAL", 2.0),
            shutdown_grace=env_float("SHUTDOWN_GRACE", 5.0),
            log_level=env("LOG_LEVEL", "INFO").upper(),
            broker_url=env("BROKER_URL", ""),
            event_stream=env("EVENT_STREAM", "SHOP"),
            event_subject_prefix=env("EVENT_SUBJECT_PREFIX", "shop"),
            event_stream_replicas=int(env_float("EVENT_STREAM_REPLICAS", 1)),
            peers=service_addresses(),
            breaker=BreakerSettings.from_env(),
            metrics_port=metrics_port(port),
            health_port=port_from_env(port + 2000 if port else 0, "HEALTH_PORT"),
            auth=_auth_from_env(data_dir),
            tls=_tls_from_env(name, data_dir),
        )
