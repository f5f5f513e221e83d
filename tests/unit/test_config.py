"""Reading the configuration is a plain read of the environment; the development
identities are made by one explicit, idempotent step."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from services.common.config import DEFAULT_PORTS, GATEWAY, SERVICE, ServiceConfig, SignInSettings
from services.common.devsetup import ensure_development_identities

VARIABLES = (
    "DATA_DIR",
    "TLS_DIR",
    "TLS_MODE",
    "TLS_CA_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_DEV_SANS",
    "HOST",
    "JWT_JWKS_FILE",
    "PORT",
    "METRICS_PORT",
    "HEALTH_PORT",
    "BREAKER_THRESHOLD",
    "MAX_STREAMS",
    "ORDER_ATTEMPT_TIMEOUT",
    "RESERVATION_RETENTION",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def everything_under(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*"))


@pytest.mark.parametrize("data_dir", [None, "data"])
def test_reading_the_configuration_creates_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: str | None
) -> None:
    if data_dir is not None:
        monkeypatch.setenv("DATA_DIR", str(tmp_path / data_dir))
    monkeypatch.setenv("TLS_DEV_SANS", "shop.internal,10.0.0.7")
    configs = [ServiceConfig.from_env(name, port) for name, port in DEFAULT_PORTS.items()]
    gateway = GatewayConfig.from_env()
    assert everything_under(tmp_path) == []
    base = tmp_path / (data_dir or "var")
    for config in configs:
        assert config.auth.jwks_file.resolve() == (base / "dev-keys" / "jwks.json").resolve()
        assert config.auth.development
        assert config.tls.ca_file is not None and config.tls.cert_file is not None
        assert config.tls.ca_file.resolve() == (base / "dev-pki" / "ca.pem").resolve()
        # A certificate with extra names has a file of its own.
        assert config.tls.cert_file.name.startswith(f"{config.name}-")
        assert config.tls.development is not None
        assert config.tls.development.role == SERVICE
    assert gateway.tls.development is not None and gateway.tls.development.role == GATEWAY


def test_the_settings_read_by_services_are_in_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = ServiceConfig.from_env("order", 0)
    assert (defaults.max_streams, defaults.order_attempt_timeout) == (10000, 20.0)
    assert defaults.reservation_retention == 3600.0
    monkeypatch.setenv("MAX_STREAMS", "12")
    monkeypatch.setenv("ORDER_ATTEMPT_TIMEOUT", "0.5")
    monkeypatch.setenv("RESERVATION_RETENTION", "60")
    config = ServiceConfig.from_env("order", 0)
    assert (config.max_streams, config.order_attempt_timeout) == (12, 0.5)
    assert config.reservation_retention == 60.0


def test_admin_emails_are_read_normalised_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_EMAILS", " Boss@Example.com, ops@example.com ,,")
    assert SignInSettings.from_env().admin_emails == {"boss@example.com", "ops@example.com"}
    monkeypatch.setenv("ADMIN_EMAILS", "boss@example.com,not-an-email")
    with pytest.raises(SystemExit) as stopped:
        SignInSettings.from_env()
    assert "ADMIN_EMAILS lists 'not-an-email'" in str(stopped.value.code)


@pytest.mark.parametrize("read", ["service", "gateway"])
def test_every_bad_variable_is_named_in_one_error(
    monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    monkeypatch.setenv("PORT", "abc")
    monkeypatch.setenv("METRICS_PORT", "99999")
    monkeypatch.setenv("BREAKER_THRESHOLD", "x")
    with pytest.raises(SystemExit) as stopped:
        if read == "service":
            ServiceConfig.from_env("user", 0)
        else:
            GatewayConfig.from_env()
    message = str(stopped.value.code)
    for name in ("PORT must be", "METRICS_PORT", "BREAKER_THRESHOLD"):
        assert name in message


@pytest.mark.parametrize("read", ["service", "gateway"])
def test_a_jwks_file_and_a_jwks_url_together_are_named_with_the_other_problems(
    monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    monkeypatch.setenv("JWT_JWKS_FILE", "/etc/shop/jwks.json")
    monkeypatch.setenv("JWT_JWKS_URL", "http://idp.internal/certs")
    monkeypatch.setenv("PORT", "abc")
    with pytest.raises(SystemExit) as stopped:
        if read == "service":
            ServiceConfig.from_env("user", 0)
        else:
            GatewayConfig.from_env()
    message = str(stopped.value.code)
    assert "set JWT_JWKS_FILE or JWT_JWKS_URL, not both" in message
    assert "PORT must be" in message
    monkeypatch.delenv("JWT_JWKS_FILE")
    monkeypatch.delenv("PORT")
    with pytest.raises(SystemExit, match=r"JWT_JWKS_URL must be an https:// URL"):
        ServiceConfig.from_env("user", 0) if read == "service" else GatewayConfig.from_env()


def test_the_setup_step_makes_the_development_identities_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOST", "10.1.2.3")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "var"))
    config = ServiceConfig.from_env("user", 0)
    ensure_development_identities(config)
    made = {path: path.read_bytes() for path in everything_under(tmp_path) if path.is_file()}
    assert config.auth.jwks_file in made
    assert config.auth.jwks_file.with_name("private.pem") in made
    assert set(config.tls.files()) <= set(made)
    ensure_development_identities(config)  # again: nothing changes
    again = {path: path.read_bytes() for path in everything_under(tmp_path) if path.is_file()}
    assert again == made
    gateway = GatewayConfig.from_env()
    ensure_development_identities(gateway)  # the same CA, a certificate of its own
    assert (tmp_path / "var" / "dev-pki" / "ca.pem").read_bytes() == made[
        tmp_path / "var" / "dev-pki" / "ca.pem"
    ]
    assert all(path.is_file() for path in gateway.tls.files())


def test_configured_files_that_do_not_exist_stop_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JWT_JWKS_FILE", str(tmp_path / "nowhere" / "jwks.json"))
    monkeypatch.setenv("TLS_MODE", "plaintext")
    config = ServiceConfig.from_env("user", 0)
    assert not config.auth.development and not config.tls.enabled
    with pytest.raises(SystemExit, match=r"JWT_JWKS_FILE .*nowhere"):
        ensure_development_identities(config)
    assert everything_under(tmp_path) == []
    with pytest.raises(SystemExit, match="TLS_CA_FILE"):
        ensure_development_identities(
            replace(
                config,
                auth=replace(config.auth, jwks_file=Path(__file__)),
                tls=replace(config.tls, ca_file=tmp_path / "ca.pem"),
            )
        )


def test_a_remote_key_set_needs_no_key_file_and_makes_no_development_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("JWT_JWKS_URL", "https://login.example.com/.well-known/jwks.json")
    monkeypatch.setenv("TLS_MODE", "plaintext")
    config = ServiceConfig.from_env("user", 0)
    assert not config.auth.development
    ensure_development_identities(config)  # no JWT_JWKS_FILE to find, nothing to make
    assert everything_under(tmp_path) == []
