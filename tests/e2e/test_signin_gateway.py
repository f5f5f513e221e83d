"""Built-in sign-in through the gateway, with curl: sign up and in over REST, use the
access token, and 429 with Retry-After after too many failures."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from tests.e2e.conftest import Stack, curl

JSON = "content-type: application/json"
PASSWORD = "correct horse battery"


async def post(stack: Stack, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(
        curl, "-X", "POST", f"{stack.url}{path}", "-H", JSON, "-d", json.dumps(body), token=None
    )


def post_with_headers(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    result = subprocess.run(
        [
            "curl",
            "-s",
            "-m",
            "10",
            "-D",
            "-",
            "-X",
            "POST",
            url,
            "-H",
            JSON,
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    head, _, payload = result.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    return status, headers, json.loads(payload)


async def test_sign_up_sign_in_and_call_with_the_access_token(stack: Stack) -> None:
    status, signed_up = await post(
        stack,
        "/v1/auth:signUp",
        {"email": "ann@example.com", "displayName": "Ann", "password": PASSWORD},
    )
    assert status == 200, signed_up
    user_id = signed_up["user"]["id"]
    assert "password" not in json.dumps(signed_up)

    status, signed_in = await post(
        stack, "/v1/auth:signIn", {"email": "ann@example.com", "password": PASSWORD}
    )
    assert status == 200, signed_in
    access = signed_in["tokens"]["accessToken"]
    status, fetched = await asyncio.to_thread(curl, f"{stack.url}/v1/users/{user_id}", token=access)
    assert (status, fetched["user"]["id"]) == (200, user_id)
    status, _ = await asyncio.to_thread(curl, f"{stack.url}/v1/users", token=access)
    assert status == 403  # no admin

    status, refreshed = await post(
        stack, "/v1/auth:refresh", {"refreshToken": signed_in["tokens"]["refreshToken"]}
    )
    assert status == 200, refreshed
    status, reused = await post(
        stack, "/v1/auth:refresh", {"refreshToken": signed_in["tokens"]["refreshToken"]}
    )
    assert status == 401 and "REFRESH_TOKEN_REUSED" in json.dumps(reused)

    status, _ = await post(
        stack, "/v1/auth:signOut", {"refreshToken": refreshed["tokens"]["refreshToken"]}
    )
    assert status == 200


async def test_too_many_failures_are_429_with_retry_after(stack: Stack) -> None:
    await post(
        stack,
        "/v1/auth:signUp",
        {"email": "ann@example.com", "displayName": "Ann", "password": PASSWORD},
    )
    wrong = {"email": "ann@example.com", "password": "not the password"}
    for _ in range(5):
        status, body = await post(stack, "/v1/auth:signIn", wrong)
        assert status == 401 and "INVALID_CREDENTIALS" in json.dumps(body)
    right = {"email": "ann@example.com", "password": PASSWORD}
    for path in ("/v1/auth:signIn", "/shop.user.v1.AuthService/SignIn"):  # REST, Connect
        status, headers, body = await asyncio.to_thread(post_with_headers, stack.url + path, right)
        assert status == 429, body
        # REST spells the ErrorInfo out; Connect sends it packed, with its code.
        assert "TOO_MANY_ATTEMPTS" in json.dumps(body) or body["code"] == "resource_exhausted"
        assert 800 < int(headers["retry-after"]) <= 900
