"""Keys fetched from an identity provider's jwks_uri (JWT_JWKS_URL): served here by a
local HTTP server on 127.0.0.1 that counts the requests it answers. The fetch schedule's
clock is services.common.auth._now, moved by the tests (no sleeps)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from services.common import auth
from services.common.auth import AuthSettings, Verifier, ensure_dev_keys, mint
from services.common.config import ServiceConfig
from services.common.errors import Unauthenticated

COOLDOWN = 30.0
MAX_AGE = 300.0


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Provider:
    """A JWKS endpoint: answers `answer`, counts requests; `hold` delays answers."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.requests = 0
        self.hold = threading.Event()
        self.hold.set()
        self.drip = False  # answer one byte every 50 ms, for ever
        self.drip_status = False  # the same, from the status line on
        self.stopped = threading.Event()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests += 1
                provider.hold.wait(10)
                if provider.drip_status:
                    while not provider.stopped.wait(0.05):
                        try:
                            self.wfile.write(b"H")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                if provider.drip:
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    while not provider.stopped.wait(0.05):
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                answer = provider.answer
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def publish(self, *keys: dict[str, Any], **headers: str) -> None:
        self.answer = Answer(200, json.dumps({"keys": list(keys)}).encode(), headers)

    def stop(self) -> None:
        self.stopped.set()
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def provider() -> Iterator[Provider]:
    served = Provider()
    yield served
    served.stop()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    moved = Clock()
    monkeypatch.setattr(auth, "_now", moved)
    return moved


def keys(directory: Path) -> tuple[bytes, dict[str, Any]]:
    ensure_dev_keys(directory)
    jwks = json.loads((directory / "jwks.json").read_text())
    return (directory / "private.pem").read_bytes(), jwks["keys"][0]


def verifier(url: str, timeout: float = 2.0) -> Verifier:
    return Verifier(
        AuthSettings(
            Path("unused"),
            jwks_url=url,
            jwks_cooldown=COOLDOWN,
            jwks_max_age=MAX_AGE,
            jwks_timeout=timeout,
        )
    )


def with_kid(private: bytes, kid: str) -> str:
    """A token signed with `private` that names `kid`."""
    token = mint(private, "usr_x")
    claims = jwt.decode(token, options={"verify_signature": False})
    key = serialization.load_pem_private_key(private, None)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})  # type: ignore[arg-type]


def refused(check: Verifier, token: str, match: str) -> None:
    with pytest.raises(Unauthenticated, match=match) as error:
        check.verify(token)
    assert error.value.reason == "TOKEN_INVALID"


def test_a_token_signed_with_a_published_key_verifies_and_the_set_is_cached(
    tmp_path: Path, provider: Provider, clock: Clock
) -> None:
    private, public = keys(tmp_path / "a")
    provider.publish(public)
    check = verifier(provider.url)
    assert check.verify(mint(private, "usr_a")).user_id == "usr_a"
    clock.advance(MAX_AGE - 1)
    assert check.verify(mint(private, "usr_b", ["admin"])).is_admin
    assert provider.requests == 1
    clock.advance(2)  # older than the max age: fetched again
    assert check.verify(mint(private, "usr_c")).user_id == "usr_c"
    assert provider.requests == 2


def test_a_rotated_set_is_fetched_when_a_token_names_an_unknown_kid(
    tmp_path: Path, provider: Provider, clock: Clock
) -> None:
    old_private, old_public = keys(tmp_path / "old")
    new_private, new_public = keys(tmp_path / "new")
    provider.publish(old_public)
    check = verifier(provider.url)
    old_token = mint(old_private, "usr_a")
    assert check.verify(old_token).user_id == "usr_a"

    provider.publish(new_public)  # rotated: the old key withdrawn
    clock.advance(COOLDOWN)
    assert check.verify(mint(new_private, "usr_b")).user_id == "usr_b"
    assert provider.requests == 2
    # The remembered token of the withdrawn key is checked again, and refused.
    refused(check, old_token, "unknown key")


def test_the_last_good_set_is_kept_while_the_provider_is_down(
    tmp_path: Path, provider: Provider, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    private, public = keys(tmp_path / "a")
    other_private, _ = keys(tmp_path / "b")
    provider.publish(public)
    check = verifier(provider.url)
    assert check.verify(mint(private, "usr_a")).user_id == "usr_a"

    provider.stop()
    clock.advance(MAX_AGE + 1)  # due for a fetch, which fails
    with caplog.at_level(logging.WARNING, logger="shop.auth"):
        assert check.verify(mint(private, "usr_b", ttl=120)).user_id == "usr_b"
    assert "the keys fetched before are kept" in caplog.text
    clock.advance(COOLDOWN)
    refused(check, mint(other_private, "usr_c"), "unknown key")
    assert check.verify(mint(private, "usr_d", ttl=180)).user_id == "usr_d"


def test_a_burst_of_unknown_kids_costs_one_fetch_per_cooldown(
    tmp_path: Path, provider: Provider, clock: Clock
) -> None:
    private, public = keys(tmp_path / "a")
    provider.publish(public)
    check = verifier(provider.url)
    assert check.verify(mint(private, "usr_a")).user_id == "usr_a"
    assert provider.requests == 1

    for n in range(20):  # within the cooldown of the first fetch: no fetch at all
        refused(check, with_kid(private, f"made-up-{n}"), "unknown key")
    assert provider.requests == 1
    clock.advance(COOLDOWN)
    for n in range(20):
        refused(check, with_kid(private, f"made-up-{n}"), "unknown key")
        clock.advance(1)
    assert provider.requests == 2  # one fetch for the burst
    clock.advance(COOLDOWN - 20)
    refused(check, with_kid(private, "made-up-again"), "unknown key")
    assert provider.requests == 3  # the next window
    assert check.verify(mint(private, "usr_b")).user_id == "usr_b"
    assert provider.requests == 3


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, b"<html>maintenance</html>", {"Content-Type": "text/html"}),
        Answer(200, b'{"keys": []}'),
        Answer(200, b'{"keys": "none"}'),
        Answer(200, b'{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}'),
        Answer(503, b"down"),
        Answer(302, b"", {"Location": "http://127.0.0.1:9/elsewhere"}),
    ],
    ids=["html", "empty", "not-a-list", "hmac-only", "503", "redirect"],
)
def test_a_garbage_answer_keeps_the_last_good_set(
    tmp_path: Path, provider: Provider, clock: Clock, answer: Answer
) -> None:
    private, public = keys(tmp_path / "a")
    new_private, new_public = keys(tmp_path / "b")
    provider.publish(public)
    check = verifier(provider.url)
    assert check.verify(mint(private, "usr_a")).user_id == "usr_a"

    provider.answer = answer
    clock.advance(MAX_AGE + 1)
    assert check.verify(mint(private, "usr_b")).user_id == "usr_b"
    assert provider.requests == 2
    clock.advance(COOLDOWN)
    refused(check, mint(new_private, "usr_c"), "unknown key")
    assert provider.requests == 3

    provider.publish(public, new_public)  # the provider is back, rotating
    clock.advance(COOLDOWN)
    assert check.verify(mint(new_private, "usr_c")).user_id == "usr_c"
    assert check.verify(mint(private, "usr_d")).user_id == "usr_d"


def test_a_fresh_process_whose_first_fetch_fails_refuses_tokens_and_logs_the_reason(
    tmp_path: Path, provider: Provider, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    private, public = keys(tmp_path / "a")
    provider.answer = Answer(503, b"starting")
    check = verifier(provider.url)  # made without fetching: the process starts
    assert provider.requests == 0
    with pytest.raises(Unauthenticated) as first:
        check.verify(mint(private, "usr_a"))
    assert "could not be fetched" in str(first.value)
    assert "503" not in str(first.value)  # the caller is not told about the network
    assert any("HTTP 503" in record.getMessage() for record in caplog.records)  # the log is
    refused(check, mint(private, "usr_b"), r"could not be fetched")
    assert provider.requests == 1  # the second token waited for the cooldown

    provider.publish(public)
    clock.advance(COOLDOWN)
    assert check.verify(mint(private, "usr_a")).user_id == "usr_a"


def test_a_provider_that_does_not_answer_holds_a_verification_at_most_the_timeout(
    tmp_path: Path, provider: Provider, clock: Clock
) -> None:
    private, public = keys(tmp_path / "a")
    provider.publish(public)
    provider.hold.clear()  # the request is taken, the answer held back
    check = verifier(provider.url, timeout=0.3)
    started = time.monotonic()
    refused(check, mint(private, "usr_a"), "could not be fetched")
    assert time.monotonic() - started < 1.5  # the wait is bounded (the default is 2 s)
    refused(check, mint(private, "usr_a"), "could not be fetched")  # no second fetch
    assert provider.requests == 1
    provider.hold.set()
    for fetch in [t for t in threading.enumerate() if t.name == "jwks-fetch"]:
        fetch.join()
    clock.advance(COOLDOWN)  # the next fetch, once the provider answers, is used
    token = mint(private, "usr_a")
    try:
        caller = check.verify(token)
    except Unauthenticated:
        # A loaded machine took longer than the 0.3 s timeout to answer: the late answer
        # is kept and used by the next call (no new fetch).
        for fetch in [t for t in threading.enumerate() if t.name == "jwks-fetch"]:
            fetch.join()
        caller = check.verify(token)
    assert caller.user_id == "usr_a"
    # A new fetch, or none when the held answer still came within the fetch's own socket
    # timeout (a loaded machine starts the fetch's read late) and was kept: either way the
    # answer the provider gave is what verified, and nothing was fetched while it held.
    assert provider.requests in (1, 2)


def test_a_provider_dripping_its_answer_is_given_up_on_and_asked_again_later(
    tmp_path: Path, provider: Provider, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    private, public = keys(tmp_path / "a")
    provider.drip = True  # a byte every 50 ms: each read is in time, the whole never ends
    check = verifier(provider.url, timeout=0.2)
    started = time.monotonic()
    refused(check, mint(private, "usr_a"), "could not be fetched")
    for fetch in [t for t in threading.enumerate() if t.name == "jwks-fetch"]:
        fetch.join(10)
        assert not fetch.is_alive(), "the fetch never ends"
    # Given up at 5 timeouts (1 s), with the reason.
    assert time.monotonic() - started < 3
    assert check._remote is not None and "took longer than 1 s" in check._remote.problem
    # The next fetch, a cooldown later, is made (the stuck one no longer blocks it).
    provider.drip = False
    provider.publish(public)
    clock.advance(COOLDOWN)
    assert check.verify(mint(private, "usr_a")).user_id == "usr_a"
    assert provider.requests == 2


def test_a_fetch_stuck_before_its_answer_is_abandoned_at_its_deadline(
    tmp_path: Path, provider: Provider, clock: Clock
) -> None:
    private, public = keys(tmp_path / "a")
    provider.drip_status = True  # the status line never ends: no deadline check runs
    check = verifier(provider.url, timeout=0.2)
    refused(check, mint(private, "usr_a"), "could not be fetched")
    # A cooldown later (well past the 1 s deadline) the provider answers again: a new
    # fetch starts although the stuck one is still running.
    provider.drip_status = False
    provider.publish(public)
    clock.advance(COOLDOWN)
    token = mint(private, "usr_a")
    try:
        caller = check.verify(token)
    except Unauthenticated:
        for fetch in [t for t in threading.enumerate() if t.name == "jwks-fetch"]:
            fetch.join(0.5)  # a loaded machine: the new fetch's answer, used next call
        caller = check.verify(token)
    assert caller.user_id == "usr_a"
    # A new fetch, or none when the held answer still came within the fetch's own socket
    # timeout (a loaded machine starts the fetch's read late) and was kept: either way the
    # answer the provider gave is what verified, and nothing was fetched while it held.
    assert provider.requests in (1, 2)


def test_cache_control_max_age_is_honoured_within_bounds(
    tmp_path: Path, provider: Provider, clock: Clock
) -> None:
    private, public = keys(tmp_path / "a")
    provider.publish(public, **{"Cache-Control": "public, max-age=60"})
    check = verifier(provider.url)
    assert check.verify(mint(private, "usr_a")).user_id == "usr_a"
    clock.advance(59)
    assert check.verify(mint(private, "usr_b")).user_id == "usr_b"
    assert provider.requests == 1
    clock.advance(2)
    assert check.verify(mint(private, "usr_c")).user_id == "usr_c"
    assert provider.requests == 2

    remote = auth.RemoteKeys(check.settings)
    assert remote._lifetime_of("max-age=86400") == MAX_AGE  # never longer than the max age
    assert remote._lifetime_of("max-age=5") == COOLDOWN  # nor fetched more often
    assert remote._lifetime_of("no-cache") == COOLDOWN
    assert remote._lifetime_of("max-age=nan") == MAX_AGE
    assert remote._lifetime_of("") == MAX_AGE


def test_keys_for_encryption_or_other_algorithms_are_left_out(
    tmp_path: Path, provider: Provider, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    private, public = keys(tmp_path / "a")
    provider.publish({**public, "use": "enc"}, {"kty": "oct", "kid": "h", "k": "c2VjcmV0"})
    check = verifier(provider.url)
    refused(check, mint(private, "usr_a"), "could not be fetched")
    assert any("no ES256 or RS256 signing key" in r.getMessage() for r in caplog.records)


# -- configuration ------------------------------------------------------------------


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("JWT_JWKS_FILE", "JWT_JWKS_URL", "JWT_JWKS_COOLDOWN", "JWT_JWKS_MAX_AGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    return monkeypatch


def test_a_jwks_url_is_read_from_the_environment(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("JWT_JWKS_URL", "https://idp.example.com/realms/shop/certs")
    environment.setenv("JWT_JWKS_COOLDOWN", "10")
    settings = AuthSettings.from_env(Path("var"))
    assert settings.jwks_url == "https://idp.example.com/realms/shop/certs"
    assert not settings.development
    assert (settings.jwks_cooldown, settings.jwks_max_age, settings.jwks_timeout) == (
        10.0,
        300.0,
        2.0,
    )
    for local in ("http://127.0.0.1:8080/certs", "http://localhost/certs"):
        environment.setenv("JWT_JWKS_URL", local)
        assert AuthSettings.from_env(Path("var")).jwks_url == local


@pytest.mark.parametrize(
    ("variables", "problems"),
    [
        (
            {"JWT_JWKS_FILE": "/etc/jwks.json", "JWT_JWKS_URL": "https://idp/certs"},
            ["set JWT_JWKS_FILE or JWT_JWKS_URL, not both"],
        ),
        ({"JWT_JWKS_URL": "http://idp.internal/certs"}, ["must be an https:// URL"]),
        ({"JWT_JWKS_URL": "ftp://idp/certs"}, ["must be an https:// URL"]),
        ({"JWT_JWKS_URL": "https://idp:port/certs"}, ["must be an https:// URL"]),
        (
            {"JWT_JWKS_URL": "https://idp/certs", "JWT_JWKS_COOLDOWN": "0"},
            ["JWT_JWKS_COOLDOWN must be a number of seconds above 0"],
        ),
        (
            {"JWT_JWKS_URL": "http://10.0.0.1/certs", "JWT_JWKS_MAX_AGE": "soon"},
            ["must be an https:// URL", "JWT_JWKS_MAX_AGE must be a number"],
        ),
    ],
)
def test_a_bad_jwks_setting_stops_the_start_naming_it(
    environment: pytest.MonkeyPatch, variables: dict[str, str], problems: list[str]
) -> None:
    for name, value in variables.items():
        environment.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        ServiceConfig.from_env("user", 0)
    for problem in problems:
        assert problem in str(stopped.value)


def test_the_verifier_refuses_a_plain_http_url_to_another_host() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1 or localhost"):
        verifier("http://idp.internal/certs")
