"""Token verification: rotation by kid, PEM keys, and the tokens that must not pass."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.common.auth import AuthSettings, Verifier, bearer_token, ensure_dev_keys, mint
from services.common.errors import Unauthenticated


def keys(directory: Path) -> tuple[bytes, dict[str, object]]:
    ensure_dev_keys(directory)
    jwks = json.loads((directory / "jwks.json").read_text())
    return (directory / "private.pem").read_bytes(), jwks["keys"][0]


def write_jwks(path: Path, *entries: dict[str, object]) -> None:
    path.write_text(json.dumps({"keys": list(entries)}))
    # A new mtime even within the file system's time granularity.
    stamp = time.time() + len(entries) + os.getpid() % 7
    os.utime(path, (stamp, stamp))


def test_keys_rotate_by_kid_without_a_restart(tmp_path: Path) -> None:
    old_private, old_public = keys(tmp_path / "old")
    new_private, new_public = keys(tmp_path / "new")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, old_public)
    verifier = Verifier(AuthSettings(jwks))
    assert verifier.verify(mint(old_private, "usr_a")).user_id == "usr_a"
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier.verify(mint(new_private, "usr_a"))

    write_jwks(jwks, old_public, new_public)  # the new key is published
    assert verifier.verify(mint(new_private, "usr_b", ["admin"])).is_admin
    write_jwks(jwks, new_public)  # the old one withdrawn
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier.verify(mint(old_private, "usr_a"))


def test_a_pem_public_key_verifies_rs256_tokens_without_kid(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "public.pem"
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    now = int(time.time())
    claims = {"sub": "usr_r", "iss": "shop-dev", "aud": "shop", "iat": now, "exp": now + 60}
    verifier = Verifier(AuthSettings(pem))
    assert verifier.verify(jwt.encode(claims, private, algorithm="RS256")).user_id == "usr_r"
    # The same claims as HS256 with the public key as the secret: refused.
    forged = _hs256(claims, secret=pem.read_bytes())  # by hand: PyJWT refuses to make it
    with pytest.raises(Unauthenticated, match="algorithm"):
        verifier.verify(forged)


def _hs256(claims: dict[str, object], secret: bytes) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + part(signature)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": None}, "not valid"),  # no expiry at all
        ({"sub": ""}, "subject"),
        ({"roles": "admin"}, "roles"),
        ({"iss": "elsewhere"}, "issuer"),
    ],
)
def test_incomplete_or_odd_claims_are_refused(
    tmp_path: Path, claims: dict[str, object], reason: str
) -> None:
    private, public = keys(tmp_path / "k")
    now = int(time.time())
    body = {"sub": "usr_x", "iss": "shop-dev", "aud": "shop", "iat": now, "exp": now + 60}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    token = jwt.encode(
        body,
        serialization.load_pem_private_key(private, None),  # type: ignore[arg-type]
        algorithm="ES256",
        headers={"kid": public["kid"]},
    )
    with pytest.raises(Unauthenticated, match=reason):
        Verifier(AuthSettings(tmp_path / "k" / "jwks.json")).verify(token)


def test_bearer_header_forms() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    for bad in ("Basic abc", "Bearer", "Bearer   ", "abc"):
        with pytest.raises(Unauthenticated):
            bearer_token(bad)


def test_a_verified_token_is_remembered_but_still_expires_and_follows_key_withdrawal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = keys(tmp_path / "k")
    other_private, other_public = keys(tmp_path / "other")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, public, other_public)
    verifier = Verifier(AuthSettings(jwks))
    token = mint(private, "usr_a", ttl=60)
    assert verifier.verify(token).user_id == "usr_a"
    # The second check of the same token is a look-up: it no longer reads the signature.
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: pytest.fail("verified again"))
    assert verifier.verify(token).user_id == "usr_a"
    monkeypatch.undo()

    # Past exp and the leeway, the remembered answer no longer counts: the token is
    # checked in full again (and the signature check's own clock says it expired).
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 60 + 31)
    checked_again = []

    def expired(*args: object, **kwargs: object) -> None:
        checked_again.append(1)
        raise jwt.ExpiredSignatureError

    monkeypatch.setattr(jwt, "decode", expired)
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(token)
    assert (checked_again, refused.value.reason) == ([1], "TOKEN_EXPIRED")
    monkeypatch.undo()

    kept = mint(other_private, "usr_b", ttl=60)
    assert verifier.verify(kept).user_id == "usr_b"
    write_jwks(jwks, public)  # the key of a remembered token is withdrawn
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier.verify(kept)
