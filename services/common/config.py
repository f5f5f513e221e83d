"""Settings from environment variables, with defaults that run on one machine.

Reading the configuration is a plain read of the environment: it computes values
and paths and never touches the file system. Every bad variable is collected and
reported together in one SystemExit. The development keys and certificates the
default paths point to are made by one explicit step at start
(`services.common.devsetup.ensure_development_identities`).

This module depends on no other module of the platform: `auth`, `tls`, `devsetup`
and the gateway's config build on it (AuthSettings and TlsSettings live here and
are re-exported by `services.common.auth` and `services.common.tls`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc

# Where each service listens by default; `<NAME>_SERVICE_ADDR` overrides it for callers,
# and may list several replicas (`host:p1,host:p2`).
DEFAULT_PORTS = {
    "user": 50051,
    "product": 50052,
    "order": 50053,
    "notification": 50054,
    "payment": 50055,
}
MAX_TTL_SECONDS = 24 * 3600
# The roles a certificate names (spiffe://shop/<role>/<name>).
SERVICE = "service"
GATEWAY = "gateway"
# Names a development certificate never adds: named anyway, or wildcards (a HOST of
# 0.0.0.0 listens everywhere and is no name to check).
NOT_ADDED = ("", "localhost", "127.0.0.1", "0.0.0.0", "::")


def env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


class EnvReader:
    """Reads variables, noting every bad one instead of stopping at the first;
    `check()` then stops with one message that names them all."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def text(self, name: str, default: str) -> str:
        return env(name, default)

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def number(self, name: str, default: float) -> float:
        raw = env(name, str(default))
        try:
            return float(raw)
        except ValueError:
            self.problem(f"{name} must be a number, not {raw!r}")
            return default

    def integer(self, name: str, default: int) -> int:
        raw = env(name, str(default))
        try:
            return int(float(raw))
        except (ValueError, OverflowError):
            self.problem(f"{name} must be a whole number, not {raw!r}")
            return default

    def port(self, name: str, default: int) -> int:
        """A port number: 0 (any free port) to 65535."""
        raw = env(name, str(default))
        if not raw.isdigit() or int(raw) > 65535:
            self.problem(f"{name} must be 0..65535, not {raw!r}")
            return default
        return int(raw)

    def check(self) -> None:
        if self.problems:
            raise SystemExit("bad configuration:\n  " + "\n  ".join(self.problems))


def _checked(reader: EnvReader | None) -> tuple[EnvReader, bool]:
    """The reader to use, and whether this call owns it (and so checks it)."""
    return (reader, False) if reader is not None else (EnvReader(), True)


def service_addresses() -> dict[str, str]:
    """Every service's address list, from `<NAME>_SERVICE_ADDR` or its default port."""
    return {
        name: env(f"{name.upper()}_SERVICE_ADDR", f"127.0.0.1:{port}")
        for name, port in DEFAULT_PORTS.items()
    }


def data_dir_from_env() -> Path:
    return Path(env("DATA_DIR", "./var"))


@dataclass(frozen=True)
class BreakerSettings:
    """A peer's circuit opens after `threshold` failed calls in a row, for `reset_after` s."""

    threshold: int = 5
    reset_after: float = 2.0

    @classmethod
    def from_env(cls, reader: EnvReader | None = None) -> BreakerSettings:
        read, owned = _checked(reader)
        settings = cls(
            threshold=read.integer("BREAKER_THRESHOLD", 5),
            reset_after=read.number("BREAKER_RESET_SECONDS", 2.0),
        )
        if owned:
            read.check()
        return settings


def port_from_env(default: int, name: str = "PORT") -> int:
    """A port number from the environment: 0 (any free port) to 65535."""
    read = EnvReader()
    port = read.port(name, default)
    read.check()
    return port


def metrics_port(grpc_or_http_port: int) -> int:
    """METRICS_PORT, or the serving port + 1000 (any free port when that is 0)."""
    return port_from_env(grpc_or_http_port + 1000 if grpc_or_http_port else 0, "METRICS_PORT")


def env_float(name: str, default: float) -> float:
    read = EnvReader()
    value = read.number(name, default)
    read.check()
    return value


# -- who is calling (services.common.auth) ---------------------------------------


@dataclass(frozen=True)
class AuthSettings:
    jwks_file: Path
    issuer: str = "shop-dev"
    audience: str = "shop"
    # The longest lifetime (exp - iat) a token may have, in seconds.
    max_ttl: float = MAX_TTL_SECONDS
    # No JWT_JWKS_FILE and no JWT_JWKS_URL: jwks_file is the development key's, made
    # at start (services.common.devsetup) next to its private.pem.
    development: bool = False
    # JWT_JWKS_URL: an identity provider's jwks_uri, fetched by the verifier instead of
    # reading jwks_file (which is then the unused development path). https://, or
    # http:// to 127.0.0.1 or localhost only.
    jwks_url: str = ""
    # At most one fetch of jwks_url per this many seconds, whatever asks for it (a
    # token with an unknown kid, a set past its age, a failed fetch).
    jwks_cooldown: float = 30.0
    # The fetched set is fetched again once this old (the answer's Cache-Control
    # max-age may shorten it, down to jwks_cooldown).
    jwks_max_age: float = 300.0
    # The longest a verification waits for a fetch, in seconds.
    jwks_timeout: float = 2.0
    # The private key (EC, PEM) the user service signs the built-in sign-in's access
    # tokens with (JWT_PRIVATE_KEY_FILE; in development, the dev key next to jwks_file).
    # None: built-in sign-in is off (an identity provider signs the tokens).
    private_key_file: Path | None = None

    @classmethod
    def from_env(cls, data_dir: Path, reader: EnvReader | None = None) -> AuthSettings:
        """The settings from JWT_*; no file is read or made, nothing is fetched."""
        read, owned = _checked(reader)
        configured = read.text("JWT_JWKS_FILE", "")
        url = read.text("JWT_JWKS_URL", "")
        if configured and url:
            read.problem("set JWT_JWKS_FILE or JWT_JWKS_URL, not both")
        elif url:
            problem = jwks_url_problem(url)
            if problem:
                read.problem(problem)
        settings = cls(
            Path(configured) if configured else data_dir / "dev-keys" / "jwks.json",
            read.text("JWT_ISSUER", "shop-dev"),
            read.text("JWT_AUDIENCE", "shop"),
            read.number("JWT_MAX_TTL", MAX_TTL_SECONDS),
            development=not configured and not url,
            jwks_url=url,
            jwks_cooldown=_positive(read, "JWT_JWKS_COOLDOWN", 30.0),
            jwks_max_age=_positive(read, "JWT_JWKS_MAX_AGE", 300.0),
            jwks_timeout=_positive(read, "JWT_JWKS_TIMEOUT", 2.0),
            private_key_file=_private_key_file(read, data_dir, not configured and not url),
        )
        if owned:
            read.check()
        return settings


def _private_key_file(read: EnvReader, data_dir: Path, development: bool) -> Path | None:
    configured = read.text("JWT_PRIVATE_KEY_FILE", "")
    if configured:
        return Path(configured)
    return data_dir / "dev-keys" / "private.pem" if development else None


# -- built-in sign-in (services.user) ---------------------------------------------

# An access token of the built-in sign-in lives at most this long: it cannot be
# revoked, so its lifetime is how long a stolen one works.
MAX_ACCESS_TOKEN_TTL = 900


@dataclass(frozen=True)
class SignInSettings:
    """The user service's built-in sign-in (services.user.signin)."""

    # Seconds an access token lives (ACCESS_TOKEN_TTL, at most 15 minutes).
    access_token_ttl: int = MAX_ACCESS_TOKEN_TTL
    # Seconds a refresh token lives (REFRESH_TOKEN_TTL, 30 days).
    refresh_token_ttl: int = 30 * 24 * 3600
    # Failed sign-ins allowed per email (SIGN_IN_MAX_FAILURES) and per client address
    # (SIGN_IN_MAX_FAILURES_PER_ADDRESS) within SIGN_IN_FAILURE_WINDOW seconds; more
    # are refused with RESOURCE_EXHAUSTED until the oldest leaves the window.
    max_failures: int = 5
    max_failures_per_address: int = 20
    failure_window: int = 900
    # Accounts whose access tokens carry the admin role (ADMIN_EMAILS, comma-separated,
    # any case): how the built-in sign-in gets an administrator without a console step.
    admin_emails: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, reader: EnvReader | None = None) -> SignInSettings:
        read, owned = _checked(reader)
        access_ttl = read.integer("ACCESS_TOKEN_TTL", MAX_ACCESS_TOKEN_TTL)
        if not 0 < access_ttl <= MAX_ACCESS_TOKEN_TTL:
            read.problem(
                f"ACCESS_TOKEN_TTL must be 1..{MAX_ACCESS_TOKEN_TTL} seconds, not {access_ttl}"
            )
            access_ttl = MAX_ACCESS_TOKEN_TTL
        settings = cls(
            access_token_ttl=access_ttl,
            refresh_token_ttl=_at_least_one(read, "REFRESH_TOKEN_TTL", cls.refresh_token_ttl),
            max_failures=_at_least_one(read, "SIGN_IN_MAX_FAILURES", cls.max_failures),
            max_failures_per_address=_at_least_one(
                read, "SIGN_IN_MAX_FAILURES_PER_ADDRESS", cls.max_failures_per_address
            ),
            failure_window=_at_least_one(read, "SIGN_IN_FAILURE_WINDOW", cls.failure_window),
            admin_emails=_emails(read, "ADMIN_EMAILS"),
        )
        if owned:
            read.check()
        return settings


def _emails(read: EnvReader, name: str) -> frozenset[str]:
    emails = {item.strip().lower() for item in read.text(name, "").split(",") if item.strip()}
    for email in sorted(emails):
        if email.count("@") != 1 or email.startswith("@") or email.endswith("@"):
            read.problem(f"{name} lists {email!r}, which is not an email address")
    return frozenset(emails)


def _at_least_one(read: EnvReader, name: str, default: int) -> int:
    value = read.integer(name, default)
    if value < 1:
        read.problem(f"{name} must be a whole number above 0, not {value}")
        return default
    return value


# Where a JWKS may be fetched from over plain http: this machine (tests, development).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def jwks_url_problem(url: str) -> str | None:
    """Why `url` may not be JWT_JWKS_URL, or None: https://host/..., or http:// to
    this machine only (a key set fetched in plaintext could be swapped on the way)."""
    try:
        parts = urlsplit(url)
        scheme, host, _ = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:  # a port that is not a number, a broken [IPv6] address
        scheme, host = "", None
    if host and (scheme == "https" or (scheme == "http" and host in LOCAL_HOSTS)):
        return None
    return (
        "JWT_JWKS_URL must be an https:// URL (plain http:// only to 127.0.0.1 or "
        f"localhost, for tests and development), not {url!r}"
    )


def _positive(read: EnvReader, name: str, default: float) -> float:
    value = read.number(name, default)
    if not 0 < value < float("inf"):
        read.problem(f"{name} must be a number of seconds above 0, not {value!r}")
        return default
    return value


# -- mutual TLS (services.common.tls) ---------------------------------------------


@dataclass(frozen=True)
class DevCertificate:
    """What the development certificate of a TlsSettings names (made at start)."""

    name: str
    role: str
    extra_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class TlsSettings:
    """None of the files set: plaintext (TLS_MODE=plaintext only)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # Set when the files are the development PKI's, made at start
    # (services.common.devsetup); None for configured files and plaintext.
    development: DevCertificate | None = None

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None

    @classmethod
    def from_env(
        cls, name: str, role: str, data_dir: Path, reader: EnvReader | None = None
    ) -> TlsSettings:
        """The settings from TLS_*; no file is read or made."""
        read, owned = _checked(reader)
        settings = cls._from_env(name, role, data_dir, read)
        if owned:
            read.check()
        return settings

    @classmethod
    def _from_env(cls, name: str, role: str, data_dir: Path, read: EnvReader) -> TlsSettings:
        mode = read.text("TLS_MODE", "mtls").lower()
        if mode == "plaintext":
            return cls()
        if mode != "mtls":
            read.problem(f"TLS_MODE must be mtls or plaintext, not {mode!r}")
            return cls()
        files = [read.text(f"TLS_{part}_FILE", "") for part in ("CA", "CERT", "KEY")]
        if all(files):
            ca, cert, key = (Path(f) for f in files)
            return cls(ca, cert, key)
        if any(files):
            read.problem("set all of TLS_CA_FILE, TLS_CERT_FILE and TLS_KEY_FILE, or none")
            return cls()
        extra = [part.strip() for part in read.text("TLS_DEV_SANS", "").split(",")]
        extra.append(read.text("HOST", ""))
        directory = Path(read.text("TLS_DIR", str(data_dir / "dev-pki")))
        return cls.development_files(directory, name, role, extra)

    @classmethod
    def development_files(
        cls, directory: Path, name: str, role: str, extra_names: Iterable[str] = ()
    ) -> TlsSettings:
        """Where the development PKI in `directory` keeps the CA and the certificate
        of `name` in `role` that also names `extra_names`. A certificate with extra
        names has a file of its own (`<name>-<digest of the names>.pem`)."""
        extra = tuple(sorted({n for n in extra_names if n not in NOT_ADDED}))
        stem = name
        if extra:
            stem += "-" + hashlib.sha256(",".join(extra).encode()).hexdigest()[:12]
        return cls(
            directory / "ca.pem",
            directory / f"{stem}.pem",
            directory / f"{stem}-key.pem",
            DevCertificate(name, role, extra),
        )

    def files(self) -> list[Path]:
        """The files the credentials are read from (none in plaintext)."""
        return [path for path in (self.ca_file, self.cert_file, self.key_file) if path]

    def read(self) -> tuple[bytes, bytes, bytes]:
        assert self.ca_file and self.cert_file and self.key_file
        return self.ca_file.read_bytes(), self.cert_file.read_bytes(), self.key_file.read_bytes()

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials that read the files again when they change (checked at each new
        connection's handshake), so a rotated certificate (cert-manager renewing a
        Secret) is served without a restart."""
        files = self.files()
        seen = [_mtime(path) for path in files]

        def configuration() -> grpc.ServerCertificateConfiguration:
            ca, cert, key = self.read()
            return grpc.ssl_server_certificate_configuration([(key, cert)], ca)

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            now = [_mtime(path) for path in files]
            if now == seen:
                return None  # unchanged: keep serving the current one
            seen[:] = now
            return configuration()

        return grpc.dynamic_ssl_server_credentials(
            configuration(),
            fetch,  # type: ignore[arg-type]  # None means "no change" (grpc's docs)
            require_client_authentication=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        ca, cert, key = self.read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0  # being replaced: look again at the next handshake


# -- a service process ------------------------------------------------------------


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
    # notification: streams one replica may hold open (MAX_STREAMS).
    max_streams: int = 10000
    # order: the longest one order attempt may take, in seconds (ORDER_ATTEMPT_TIMEOUT).
    order_attempt_timeout: float = 20.0
    # product: how long a released reservation (or tombstone) is kept, in seconds
    # (RESERVATION_RETENTION).
    reservation_retention: float = 3600.0
    # payment: how long each call to the simulated payment provider takes, in seconds
    # (PAYMENT_PROVIDER_LATENCY_MS, in milliseconds).
    payment_provider_latency: float = 0.0
    # user: the built-in sign-in's token lifetimes and failure limits.
    sign_in: SignInSettings = field(default_factory=SignInSettings)
    # Where the public keys that verify callers' tokens are (see services.common.auth).
    auth: AuthSettings = field(kw_only=True)
    # This process's certificate and the mesh CA (services.common.tls).
    tls: TlsSettings = field(kw_only=True)

    def peer(self, name: str) -> str:
        return self.peers.get(name) or f"127.0.0.1:{DEFAULT_PORTS[name]}"

    @classmethod
    def from_env(cls, name: str, default_port: int) -> ServiceConfig:
        """The settings from the environment; every bad variable is reported at once.
        No file is read or made (see services.common.devsetup)."""
        read = EnvReader()
        prefix = name.upper()
        data_dir = Path(read.text("DATA_DIR", "./var"))
        port = read.port("PORT", default_port)
        config = cls(
            name=name,
            host=read.text("HOST", "127.0.0.1"),
            port=port,
            data_dir=data_dir,
            database_url=read.text(
                f"{prefix}_DATABASE_URL", f"sqlite+aiosqlite:///{data_dir / (name + '.db')}"
            ),
            page_token_secret=read.text(
                "PAGE_TOKEN_SECRET", f"shop-{name}-development-page-tokens"
            ),
            health_interval=read.number("HEALTH_CHECK_INTERVAL", 2.0),
            shutdown_grace=read.number("SHUTDOWN_GRACE", 5.0),
            log_level=read.text("LOG_LEVEL", "INFO").upper(),
            broker_url=read.text("BROKER_URL", ""),
            event_stream=read.text("EVENT_STREAM", "SHOP"),
            event_subject_prefix=read.text("EVENT_SUBJECT_PREFIX", "shop"),
            event_stream_replicas=read.integer("EVENT_STREAM_REPLICAS", 1),
            peers=service_addresses(),
            breaker=BreakerSettings.from_env(read),
            metrics_port=read.port("METRICS_PORT", port + 1000 if port else 0),
            health_port=read.port("HEALTH_PORT", port + 2000 if port else 0),
            max_streams=read.integer("MAX_STREAMS", 10000),
            order_attempt_timeout=read.number("ORDER_ATTEMPT_TIMEOUT", 20.0),
            reservation_retention=read.number("RESERVATION_RETENTION", 3600.0),
            payment_provider_latency=read.number("PAYMENT_PROVIDER_LATENCY_MS", 0.0) / 1000,
            sign_in=SignInSettings.from_env(read),
            auth=AuthSettings.from_env(data_dir, read),
            tls=TlsSettings.from_env(name, SERVICE, data_dir, read),
        )
        read.check()
        return config
