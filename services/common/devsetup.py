"""The one step at start that makes the development identities.

Reading the configuration (services.common.config) never touches the file system.
A process calls `ensure_development_identities(config)` once before it serves:
when the development defaults are in use (no JWT_JWKS_FILE; no TLS_*_FILE and
TLS_MODE not plaintext) it makes what is missing of the development signing key
(`$DATA_DIR/dev-keys/`) and of the development CA and this process's certificate
(TLS_DIR, default `$DATA_DIR/dev-pki/`); both are idempotent and safe when several
processes start at once. Configured files that do not exist stop the process with
one message naming them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.common.auth import ensure_dev_keys
from services.common.config import AuthSettings, TlsSettings
from services.common.tls import dev_pki


class HasIdentities(Protocol):
    """A ServiceConfig or a GatewayConfig."""

    @property
    def auth(self) -> AuthSettings: ...

    @property
    def tls(self) -> TlsSettings: ...


@dataclass(frozen=True)
class Identities:
    """Just the identities, for a process that has no ServiceConfig (a script)."""

    auth: AuthSettings
    tls: TlsSettings


def ensure_development_identities(config: HasIdentities) -> None:
    """Makes the development key and certificate the config points to (when it uses
    them), then checks that every file the config names exists."""
    if config.auth.development:
        ensure_dev_keys(config.auth.jwks_file.parent)
    dev = config.tls.development
    if dev is not None and config.tls.ca_file is not None:
        dev_pki(config.tls.ca_file.parent, dev.name, dev.role, dev.extra_names)
    missing = [
        f"{variable} {str(path)!r} does not exist"
        for variable, path in _named_files(config)
        if not path.is_file()
    ]
    if missing:
        raise SystemExit("missing files:\n  " + "\n  ".join(missing))


def _named_files(config: HasIdentities) -> list[tuple[str, Path]]:
    """Each file the config reads, with the variable that names it."""
    auth, tls = config.auth, config.tls
    files = [] if auth.jwks_url else [("JWT_JWKS_FILE", auth.jwks_file)]
    for variable, path in (
        ("TLS_CA_FILE", tls.ca_file),
        ("TLS_CERT_FILE", tls.cert_file),
        ("TLS_KEY_FILE", tls.key_file),
    ):
        if path is not None:
            files.append((variable, path))
    return files
