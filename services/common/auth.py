"""Who is calling: bearer JWTs verified against the mesh's public keys (a JWKS file or URL).

The gateway verifies the token of every request and passes it on as the
`authorization` metadata; each service verifies it again and enforces ownership
itself, so a call that reaches a service without the gateway gains nothing
without a valid signed token.

- Only asymmetric algorithms (ES256, RS256), and only the one the key with the
  token's `kid` declares: `alg: none` and HMAC-with-the-public-key are refused.
- Issuer, audience, expiry, issue time and subject are required and checked, and a
  token may not live longer than JWT_MAX_TTL (24 h by default): a stolen token
  minted for ten years would otherwise never stop working.
- Keys come from JWT_JWKS_FILE: a JWKS document, or a single public key in PEM.
  Several keys may be in a JWKS at once (rotation by `kid`); the file is read
  again whenever it changes, so keys are added and withdrawn without a restart.
- Or from JWT_JWKS_URL, an identity provider's `jwks_uri` (Keycloak, Auth0, Dex):
  see RemoteKeys for when it is fetched and what happens when the provider is down.
- `make run` needs no set-up: with no JWT_JWKS_FILE, a development key pair is
  made in `$DATA_DIR/dev-keys/` by the start-up step (services.common.devsetup;
  reading AuthSettings never makes it), and `python -m services.common.auth token
  --user usr_...` (which makes it too when missing) prints a token signed with it.

AuthSettings lives in services.common.config (it is re-exported here).
"""

from __future__ import annotations

import argparse
import contextvars
import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.common.config import LOCAL_HOSTS, data_dir_from_env, env, jwks_url_problem
from services.common.config import MAX_TTL_SECONDS as MAX_TTL_SECONDS
from services.common.config import AuthSettings as AuthSettings
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.files import write_once

ALGORITHMS = ("ES256", "RS256")
ADMIN = "admin"
LEEWAY_SECONDS = 30

log = logging.getLogger("shop.auth")


@dataclass(frozen=True)
class Caller:
    user_id: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller | None:
    return _caller.get()


def set_caller(caller: Caller | None) -> contextvars.Token[Caller | None]:
    return _caller.set(caller)


def reset_caller(token: contextvars.Token[Caller | None]) -> None:
    _caller.reset(token)


def require_signed_in() -> Caller:
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("this call needs a bearer token", "TOKEN_MISSING")
    return caller


def require_owner(user_id: str) -> Caller:
    """The caller is `user_id`, or an admin."""
    caller = require_signed_in()
    if caller.user_id != user_id and not caller.is_admin:
        raise PermissionDenied("this belongs to another user")
    return caller


def require_admin() -> Caller:
    caller = require_signed_in()
    if not caller.is_admin:
        raise PermissionDenied("this needs the admin role", "ADMIN_ONLY")
    return caller


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value; None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the authorization header must be 'Bearer <token>'", "TOKEN_MALFORMED"
        )
    return token.strip()


def single_authorization(values: list[str]) -> str | None:
    """The one Authorization value of a request. Several are refused: a proxy and the
    service behind it could each read a different one (the first, the last)."""
    if len(values) > 1:
        raise Unauthenticated(
            f"send one Authorization header, not {len(values)}", "TOKEN_MALFORMED"
        )
    return values[0] if values else None


# Tokens verified lately, so a caller's next calls cost a dictionary look-up instead of
# a signature check (the token is the key: a different byte is a different token).
VERIFIED_CACHE_SIZE = 10_000


class Verifier:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._remote = RemoteKeys(settings) if settings.jwks_url else None
        self._keys: dict[str, jwt.PyJWK] = {}
        # Which keys _keys are: the file's mtime, or the fetched set's version.
        self._loaded: float = -1.0
        # token -> (who, its exp): only tokens that passed every check, evicted oldest first.
        self._verified: OrderedDict[str, tuple[Caller, float]] = OrderedDict()

    def _reload(self, unknown_kid: bool = False) -> None:
        """Reads the key file again when it changed (one stat a call), or takes the
        keys fetched from JWT_JWKS_URL (fetching them first when RemoteKeys says so):
        a key added is trusted, and a key removed is no longer, without a restart.
        Tokens verified with the old keys are verified again."""
        if self._remote is not None:
            self._remote.refresh(unknown_kid=unknown_kid)
            loaded, keys = self._remote.current
        else:
            loaded = self.settings.jwks_file.stat().st_mtime
            if loaded == self._loaded:
                return
            keys = _read_keys(self.settings.jwks_file)
        if loaded != self._loaded:
            self._keys, self._loaded = keys, loaded
            self._verified.clear()

    def _key(self, kid: Any) -> jwt.PyJWK:
        self._reload()
        if self._remote is not None and not self._keys:
            # What went wrong (DNS, TLS, the provider's status) is in the log, not in the
            # answer: an anonymous caller learns nothing about the mesh's network.
            raise Unauthenticated(
                "the identity provider's keys (JWT_JWKS_URL) could not be fetched",
                "TOKEN_INVALID",
            )
        if kid is None and len(self._keys) == 1:  # a single PEM key needs no kid
            return next(iter(self._keys.values()))
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token names no key (kid)", "TOKEN_INVALID")
        if kid not in self._keys and self._remote is not None:
            self._reload(unknown_kid=True)  # published since the last fetch?
        if kid not in self._keys:
            raise Unauthenticated("the token is signed with an unknown key", "TOKEN_INVALID")
        return self._keys[kid]

    def verify(self, token: str) -> Caller:
        """Who the token says is calling, or Unauthenticated with the reason."""
        self._reload()
        known = self._verified.get(token)
        if known is not None:
            caller, expires = known
            if time.time() <= expires + LEEWAY_SECONDS:
                self._verified.move_to_end(token)
                return caller
            del self._verified[token]  # expired: the full check below says so
        caller, expires = self._verify_signed(token)
        self._verified[token] = (caller, expires)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return caller

    def _verify_signed(self, token: str) -> tuple[Caller, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the token is malformed", "TOKEN_MALFORMED") from None
        if header.get("alg") not in ALGORITHMS:
            raise Unauthenticated("the token's algorithm is not accepted", "TOKEN_INVALID")
        key = self._key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", "TOKEN_EXPIRED") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is for another audience", "TOKEN_INVALID") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token is from another issuer", "TOKEN_INVALID") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature is wrong", "TOKEN_INVALID") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token is not valid", "TOKEN_INVALID") from None
        lifetime = claims["exp"] - claims["iat"]
        if not isinstance(lifetime, int | float) or lifetime > self.settings.max_ttl:
            raise Unauthenticated(
                f"the token lives longer than {int(self.settings.max_ttl)} s", "TOKEN_INVALID"
            )
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("the token's roles are not a list of names", "TOKEN_INVALID")
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("the token has no subject", "TOKEN_INVALID")
        return Caller(subject, frozenset(roles)), float(claims["exp"])


def _read_keys(path: Path) -> dict[str, jwt.PyJWK]:
    """A JWKS document, or one public key in PEM (EC for ES256, RSA for RS256)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        public = serialization.load_pem_public_key(data)
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
            jwk["alg"] = "ES256"
        elif isinstance(public, rsa.RSAPublicKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
            jwk["alg"] = "RS256"
        else:
            raise SystemExit(f"{path}: only EC (ES256) and RSA (RS256) public keys are accepted")
        jwk["kid"] = _kid(public)
        return {jwk["kid"]: jwt.PyJWK(jwk)}
    keys = jwt.PyJWKSet.from_dict(json.loads(data)).keys
    return {key.key_id: key for key in keys if key.key_id}


def public_jwks(path: Path) -> dict[str, Any]:
    """The key file's keys as a JWKS document with public members only (whatever the
    file holds), for `/.well-known/jwks.json`: what other parties verify our tokens with."""
    published = []
    for kid, key in _read_keys(path).items():
        public = key.key.public_key() if hasattr(key.key, "public_key") else key.key
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        elif isinstance(public, rsa.RSAPublicKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        else:
            continue  # not a signing key of ours (an HMAC secret is never published)
        jwk.update(kid=kid, alg=key.algorithm_name, use="sig")
        published.append(jwk)
    return {"keys": published}


# -- keys from an identity provider (JWT_JWKS_URL) --------------------------------

# A JWKS is a few kilobytes; an answer larger than this is not one.
MAX_JWKS_BYTES = 1 << 20


def _now() -> float:
    """The clock of the fetch schedule (a function, so that tests can move it)."""
    return time.monotonic()


# A JWKS fetch as a whole, connection and answer, in JWT_JWKS_TIMEOUTs (2 s: 10 s).
FETCH_DEADLINE_TIMEOUTS = 5


class RemoteKeys:
    """The signing keys published at JWT_JWKS_URL, fetched when needed.

    - Fetched at the first verification (not at start: a provider that is down does
      not stop the process; until a fetch succeeds every token is refused with
      TOKEN_INVALID and the reason), when the set is older than JWT_JWKS_MAX_AGE (or
      the answer's Cache-Control max-age, never below JWT_JWKS_COOLDOWN nor above
      JWT_JWKS_MAX_AGE), and when a token names a kid the set does not have (the
      provider rotated its keys).
    - At most one fetch per JWT_JWKS_COOLDOWN seconds, whatever asks for it, counted
      from the start of the last attempt, failed or not: tokens with made-up kids, or
      a provider that is down, cost one request per cooldown, not one per token.
    - A failed fetch (no answer, an HTTP error, something that is not a JWKS with an
      ES256 or RS256 signing key) logs a warning and keeps the last good set, so
      tokens signed with known keys go on verifying while the provider is down.
    - Redirects are not followed (an https URL must not lead to plain http), and
      keys marked `use: enc` or of other algorithms are left out.

    Why a thread: `Verifier.verify` is synchronous and runs on the event loop (the
    gateway's middleware, the services' interceptors), so a fetch must not hold the
    loop for long. The fetch runs in a short-lived thread and the verification waits
    for it at most JWT_JWKS_TIMEOUT (2 s): a provider that answers in time is used
    at once (the token with the new kid verifies), and one that does not (slow DNS,
    a stalled connection, which urllib's own timeout does not bound as a whole)
    cannot stall the loop longer than that; its late answer is used from a later
    call, and no other fetch starts while it runs. With the cooldown this bounds the
    loop's wait to JWT_JWKS_TIMEOUT per JWT_JWKS_COOLDOWN in the worst case.

    PyJWT's PyJWKClient was not used: once its cache has expired a failed fetch
    fails the verification (the last good set is not kept), its cooldown only starts
    after a successful fetch (a provider that is down is asked again on every
    unknown kid), and it ignores Cache-Control.
    """

    def __init__(self, settings: AuthSettings) -> None:
        problem = jwks_url_problem(settings.jwks_url)
        if problem:
            raise ValueError(problem)
        self.url = settings.jwks_url
        self.cooldown = settings.jwks_cooldown
        self.max_age = settings.jwks_max_age
        self.timeout = settings.jwks_timeout
        # The last good set's version (bumped each time the keys change) and keys,
        # replaced as one (the fetch thread writes it, verifications read it).
        self.current: tuple[float, dict[str, jwt.PyJWK]] = (0.0, {})
        self._fingerprint = ""
        # Why the last fetch failed ("" after a good one).
        self.problem = "no answer yet"
        self._fetched_at: float | None = None  # of the last good set
        self._lifetime = self.max_age
        self._attempted_at: float | None = None
        self._fetching = False
        self._lock = threading.Lock()
        handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
        if urllib.parse.urlsplit(self.url).hostname in LOCAL_HOSTS:
            handlers.append(urllib.request.ProxyHandler({}))  # never through a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def refresh(self, *, unknown_kid: bool = False) -> None:
        """Fetches the set when it is missing or too old, or when a token names an
        unknown kid, unless a fetch ran less than the cooldown ago or is running."""
        now = _now()
        stale = self._fetched_at is None or now - self._fetched_at >= self._lifetime
        if not (stale or unknown_kid):
            return
        with self._lock:
            since = None if self._attempted_at is None else now - self._attempted_at
            cooling = since is not None and since < self.cooldown
            # A fetch still running past its deadline (stuck before its answer's body,
            # where the deadline is checked: a dripping status line, slow DNS) is
            # abandoned: it no longer keeps every later fetch from starting.
            stuck = since is not None and since > FETCH_DEADLINE_TIMEOUTS * self.timeout
            if (self._fetching and not stuck) or cooling:
                return
            self._attempted_at, self._fetching = now, True
        fetch = threading.Thread(target=self._fetch, name="jwks-fetch", daemon=True)
        fetch.start()
        fetch.join(self.timeout)

    def _fetch(self) -> None:
        try:
            keys, fingerprint, lifetime = self._download()
        except Exception as error:  # whatever the provider does, the last good set stays
            if isinstance(error, urllib.error.HTTPError):
                error.close()
            self.problem = _describe(error)
            log.warning(
                "the identity provider's keys could not be fetched from %s (%s); %s",
                self.url,
                self.problem,
                "the keys fetched before are kept"
                if self.current[1]
                else "tokens are refused until a fetch succeeds",
            )
        else:
            if fingerprint != self._fingerprint:
                self.current, self._fingerprint = (self.current[0] + 1, keys), fingerprint
            self._fetched_at, self._lifetime, self.problem = _now(), lifetime, ""
        finally:
            with self._lock:
                self._fetching = False

    def _download(self) -> tuple[dict[str, jwt.PyJWK], str, float]:
        """The keys, a fingerprint of them (to tell whether they changed), and how long
        to use them."""
        # The socket timeout bounds each wait for a byte, not the whole answer: a
        # provider dripping a byte at a time would keep this fetch (and so every later
        # one) running for ever. The whole fetch gets FETCH_DEADLINE_TIMEOUTS timeouts.
        deadline = time.monotonic() + FETCH_DEADLINE_TIMEOUTS * self.timeout
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        with self._opener.open(request, timeout=self.timeout) as response:
            cache_control = response.headers.get("Cache-Control", "")
            body = b""
            while len(body) <= MAX_JWKS_BYTES:
                chunk = response.read1(MAX_JWKS_BYTES + 1 - len(body))
                if not chunk:
                    break
                body += chunk
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the answer took longer than {FETCH_DEADLINE_TIMEOUTS * self.timeout:g} s"
                    )
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"the answer is larger than {MAX_JWKS_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise ValueError("the answer is not JSON") from None
        keys, fingerprint = _signing_keys(document)
        return keys, fingerprint, self._lifetime_of(cache_control)

    def _lifetime_of(self, cache_control: str) -> float:
        """How long a set is used before it is fetched again: the answer's max-age
        (no-cache, no-store: 0), bounded to [cooldown, max age]; the max age without."""
        for directive in cache_control.lower().split(","):
            name, _, value = directive.strip().partition("=")
            if name in ("no-cache", "no-store"):
                return min(self.cooldown, self.max_age)
            if name == "max-age":
                try:
                    seconds = int(value.strip().strip('"'))  # delta-seconds: digits
                except ValueError:
                    continue
                return min(max(seconds, self.cooldown), self.max_age)
        return self.max_age


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then an HTTPError: "redirects are not followed"


def _describe(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        if 300 <= error.code < 400:
            return f"HTTP {error.code} (redirects are not followed)"
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return f"no answer ({error.reason})"
    return str(error) or type(error).__name__


def _signing_keys(document: Any) -> tuple[dict[str, jwt.PyJWK], str]:
    """The ES256 and RS256 signing keys with a kid of a JWKS document, and a
    fingerprint of them."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('the answer is not a JWKS (no "keys" list)')
    keys, accepted = {}, []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # an algorithm or key type this verifier does not accept anyway
        if key.algorithm_name in ALGORITHMS:
            keys[kid] = key
            accepted.append(json.dumps(entry, sort_keys=True))
    if not keys:
        raise ValueError("the JWKS holds no ES256 or RS256 signing key with a kid")
    return keys, json.dumps(sorted(accepted))


# -- development keys and tokens ----------------------------------------------


def _kid(public_key: Any) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "dev-" + hashlib.sha256(der).hexdigest()[:16]


def ensure_dev_keys(directory: Path) -> None:
    """An ES256 key pair for development: private.pem (0600) and jwks.json."""
    jwks = directory / "jwks.json"
    private = directory / "private.pem"
    if jwks.is_file() and private.is_file():
        return
    directory.mkdir(parents=True, exist_ok=True)
    generated = ec.generate_private_key(ec.SECP256R1())
    pem = generated.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_once(private, pem, 0o600)
    key = serialization.load_pem_private_key(private.read_bytes(), None)  # the winner's
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid=_kid(key.public_key()), alg="ES256", use="sig")
    write_once(jwks, json.dumps({"keys": [public]}, indent=2).encode(), 0o644)


def mint(
    private_pem: bytes,
    user_id: str,
    roles: list[str] | tuple[str, ...] = (),
    *,
    issuer: str = "shop-dev",
    audience: str = "shop",
    ttl: int = 3600,
    now: float | None = None,
    kid: str | None = None,
) -> str:
    """A token for `user_id`, signed with an EC (ES256) private key in PEM; `kid` names
    the key (by default the development kid derived from the public key)."""
    key = serialization.load_pem_private_key(private_pem, None)
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": user_id,
        "roles": list(roles),
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl,
    }
    headers = {"kid": kid or _kid(key.public_key())}
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)  # type: ignore[arg-type]


def signing_kid(private_pem: bytes, settings: AuthSettings) -> str:
    """The kid the verifiers know the public half of `private_pem` by: the kid of the
    same key in the JWKS file (so tokens signed with it verify everywhere), or the
    derived one when the keys come from JWT_JWKS_URL. A key the JWKS file does not
    hold is a configuration error (SystemExit): its tokens would never verify."""
    key = serialization.load_pem_private_key(private_pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SystemExit("JWT_PRIVATE_KEY_FILE must hold an EC (P-256, ES256) private key")
    public = key.public_key()
    if settings.jwks_url:
        return _kid(public)
    mine = public.public_numbers()
    for kid, known in _read_keys(settings.jwks_file).items():
        candidate = known.key.public_key() if hasattr(known.key, "public_key") else known.key
        if isinstance(candidate, ec.EllipticCurvePublicKey) and candidate.public_numbers() == mine:
            return kid
    raise SystemExit(
        f"the signing key {settings.private_key_file} is not in {settings.jwks_file}: "
        "tokens signed with it would not verify"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.auth", description="Development tokens."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a token signed with the development key")
    token.add_argument("--user", required=True, help="the user id (the token's subject)")
    token.add_argument("--roles", default="", help="comma-separated, e.g. admin")
    token.add_argument("--ttl", type=int, default=3600, help="seconds")
    args = parser.parse_args(argv)
    settings = AuthSettings.from_env(data_dir_from_env())
    if settings.development:
        ensure_dev_keys(settings.jwks_file.parent)
    if settings.jwks_url and not env("JWT_PRIVATE_KEY_FILE", ""):
        raise SystemExit(
            "JWT_JWKS_URL is set: tokens come from your identity provider "
            "(set JWT_PRIVATE_KEY_FILE to sign one with a key it publishes)"
        )
    private = Path(env("JWT_PRIVATE_KEY_FILE", str(settings.jwks_file.parent / "private.pem")))
    roles = [role for role in args.roles.split(",") if role]
    print(
        mint(
            private.read_bytes(),
            args.user,
            roles,
            issuer=settings.issuer,
            audience=settings.audience,
            ttl=args.ttl,
        )
    )


if __name__ == "__main__":
    main()
