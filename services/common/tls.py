"""Mutual TLS between the processes of the mesh.

Every process presents a certificate signed by the mesh CA, and every service
accepts only clients that do (`require_client_auth`). A certificate says what
its holder is in its organizational unit: `service` for the four services,
`gateway` for the gateway; `*InternalService` RPCs accept services only, so
stock can't be reserved from the edge.

Files come from TLS_CA_FILE, TLS_CERT_FILE and TLS_KEY_FILE. Without them, a
development CA and one certificate per process name are made at start in TLS_DIR
(default `$DATA_DIR/dev-pki`) by services.common.devsetup; reading TlsSettings
(which lives in services.common.config, re-exported here) never makes them.
Plaintext is possible only when TLS_MODE=plaintext is set on purpose, for local
debugging.

A development certificate names localhost and 127.0.0.1, plus the process's own
HOST when that is one specific address, plus the names in TLS_DEV_SANS
(comma-separated DNS names or IP addresses), so a service can be reached at a
test host's address. Replicas behind one address list must share their names: a
client checks every replica against the first address of its list (see
services.common.clients), so give each replica TLS_DEV_SANS listing all of them.
A certificate with extra names is kept under a file name of its own (a digest of
the names), so processes asking for the same names share one, and a TLS_DIR made
earlier with fewer names is never reused for them.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.config import GATEWAY as GATEWAY
from services.common.config import NOT_ADDED as NOT_ADDED
from services.common.config import SERVICE as SERVICE
from services.common.config import TlsSettings as TlsSettings
from services.common.files import write_once

VALID_DAYS = 365


def role_of(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The caller's role from a verified client certificate (None: no certificate)."""
    if list(auth_context.get("transport_security_type", [])) != [b"ssl"]:
        return None
    for name in auth_context.get("x509_subject_alternative_name", []):
        text = name.decode()
        if text.startswith("spiffe://shop/"):
            return text.removeprefix("spiffe://shop/").split("/")[0]
    return None


# -- the development PKI ----------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _ensure_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key_file, cert_file = directory / "ca-key.pem", directory / "ca.pem"
    if not cert_file.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        write_once(key_file, _pem_key(ec.generate_private_key(ec.SECP256R1())), 0o600)
        key = _load_key(key_file)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shop development CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        write_once(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return x509.load_pem_x509_certificate(cert_file.read_bytes()), _load_key(key_file)


def _subject_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def dev_pki(directory: Path, name: str, role: str, extra_names: Iterable[str] = ()) -> TlsSettings:
    """The development CA in `directory`, and a certificate for `name` in `role` that
    also names `extra_names` (host names or IP addresses)."""
    settings = TlsSettings.development_files(directory, name, role, extra_names)
    assert settings.development and settings.cert_file and settings.key_file
    extra = settings.development.extra_names
    key_file, cert_file = settings.key_file, settings.cert_file
    ca, ca_key = _ensure_ca(directory)
    if not cert_file.is_file():
        write_once(key_file, _pem_key(ec.generate_private_key(ec.SECP256R1())), 0o600)
        key = _load_key(key_file)
        now = datetime.datetime.now(datetime.UTC)
        names = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            *(_subject_name(extra_name) for extra_name in extra),
            x509.UniformResourceIdentifier(f"spiffe://shop/{role}/{name}"),
        ]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        write_once(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return settings
