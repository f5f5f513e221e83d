"""Settings from environment variables, with defaults that run on one machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


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

    @classmethod
    def from_env(cls, name: str, default_port: int) -> ServiceConfig:
        prefix = name.upper()
        data_dir = Path(env("DATA_DIR", "./var"))
        port_raw = env("PORT", str(default_port))
        if not port_raw.isdigit() or int(port_raw) > 65535:
            raise SystemExit(f"PORT must be 0..65535, not {port_raw!r}")
        return cls(
            name=name,
            host=env("HOST", "127.0.0.1"),
            port=int(port_raw),
            data_dir=data_dir,
            database_url=env(
                f"{prefix}_DATABASE_URL", f"sqlite+aiosqlite:///{data_dir / (name + '.db')}"
            ),
            page_token_secret=env("PAGE_TOKEN_SECRET", f"shop-{name}-development-page-tokens"),
            health_interval=env_float("HEALTH_CHECK_INTERVAL", 2.0),
            shutdown_grace=env_float("SHUTDOWN_GRACE", 5.0),
            log_level=env("LOG_LEVEL", "INFO").upper(),
        )
