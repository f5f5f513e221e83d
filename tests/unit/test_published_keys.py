"""/.well-known/jwks.json: the public half of the key file, or a pointer to the provider."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from starlette.requests import Request

from gateway.app import published_keys_route
from gateway.config import GatewayConfig
from services.common.auth import AuthSettings, ensure_dev_keys
from tests import tokens

GET = {"type": "http", "method": "GET", "headers": []}


async def test_the_key_file_is_published_without_its_private_members(tmp_path: Path) -> None:
    ensure_dev_keys(tmp_path)
    jwk = json.loads((tmp_path / "jwks.json").read_text())["keys"][0]
    # A key file may carry the private key too (a JWKS with "d"): only the public half goes out.
    private = serialization.load_pem_private_key((tmp_path / "private.pem").read_bytes(), None)
    with_d = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private))  # type: ignore[arg-type]
    assert "d" in with_d
    private_jwks = tmp_path / "with-private.json"
    private_jwks.write_text(json.dumps({"keys": [{**with_d, "kid": jwk["kid"], "alg": "ES256"}]}))
    for path in (tmp_path / "jwks.json", private_jwks):
        config = GatewayConfig(auth=AuthSettings(path), tls=tokens.gateway_tls())
        response = await published_keys_route(config)(Request(GET))
        assert response.status_code == 200
        (published,) = json.loads(bytes(response.body))["keys"]
        assert "d" not in published
        assert (published["kid"], published["x"], published["use"]) == (jwk["kid"], jwk["x"], "sig")


async def test_with_an_identity_provider_the_gateway_points_to_it(tmp_path: Path) -> None:
    url = "https://login.example.com/.well-known/jwks.json"
    auth = AuthSettings(tmp_path / "none", jwks_url=url)
    config = GatewayConfig(auth=auth, tls=tokens.gateway_tls())
    response = await published_keys_route(config)(Request(GET))
    assert response.status_code == 404
    assert url in json.loads(bytes(response.body))["message"]
