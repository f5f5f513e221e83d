"""REST routes from the google.api.http rules, with curl against the running gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

from tests import tokens
from tests.e2e.conftest import Stack, curl
from tests.waits import eventually

JSON = "content-type: application/json"


async def rest(
    stack: Stack, verb: str, path: str, body: Any = None, *extra: str
) -> tuple[int, Any]:
    args = ["-X", verb, f"{stack.url}{path}", *extra]
    if body is not None:
        args += ["-H", JSON, "-d", body if isinstance(body, str) else json.dumps(body)]
    return await asyncio.to_thread(curl, *args)


async def seed(stack: Stack, stock: int = 10) -> tuple[str, str]:
    status, user = await rest(
        stack, "POST", "/v1/users", {"email": f"r{stock}@x.io", "displayName": "R"}
    )
    assert status == 200, user
    status, product = await rest(
        stack,
        "POST",
        "/v1/products",
        {"name": "Mug", "price": {"currencyCode": "EUR", "amountMinor": "500"}, "stock": stock},
    )
    assert status == 200, product
    return user["user"]["id"], product["product"]["id"]


async def test_an_order_over_rest(stack: Stack) -> None:
    user_id, product_id = await seed(stack)
    status, placed = await rest(
        stack,
        "POST",
        "/v1/orders",
        {
            "userId": user_id,
            "idempotencyKey": "rest-1",
            "items": [{"productId": product_id, "quantity": 3}],
        },
    )
    assert status == 200 and placed["order"]["total"] == {
        "currencyCode": "EUR",
        "amountMinor": "1500",
    }
    order_id = placed["order"]["id"]
    assert await rest(stack, "GET", f"/v1/orders/{order_id}") == (200, placed)
    for path in (
        f"/v1/users/{user_id}/orders?pageSize=5",
        f"/v1/orders?user_id={user_id}&page_size=5",
    ):
        status, listed = await rest(stack, "GET", path)  # the rule and its additional binding
        assert status == 200 and [o["id"] for o in listed["orders"]] == [order_id]
    status, product = await rest(stack, "GET", f"/v1/products/{product_id}")
    assert product["product"]["stock"] == 7
    status, cancelled = await rest(stack, "POST", f"/v1/orders/{order_id}:cancel", {"reason": "no"})
    assert status == 200 and cancelled["order"]["status"] == "ORDER_STATUS_CANCELLED"
    status, product = await rest(stack, "GET", f"/v1/products/{product_id}")
    assert product["product"]["stock"] == 10
    status, batch = await rest(stack, "GET", f"/v1/products:batchGet?ids={product_id}")
    assert [p["id"] for p in batch["products"]] == [product_id]


async def test_patch_changes_only_the_fields_it_sends(stack: Stack) -> None:
    _, product_id = await seed(stack)
    status, updated = await rest(stack, "PATCH", f"/v1/products/{product_id}", {"name": "Big mug"})
    assert status == 200
    assert (
        updated["product"]["name"],
        updated["product"]["stock"],
        updated["product"]["price"]["amountMinor"],
    ) == ("Big mug", 10, "500")
    # An explicit mask wins over the body's fields.
    status, updated = await rest(
        stack,
        "PATCH",
        f"/v1/products/{product_id}?updateMask=stock",
        {"stock": 3, "name": "ignored"},
    )
    assert (updated["product"]["name"], updated["product"]["stock"]) == ("Big mug", 3)


async def test_path_parameters_cannot_be_overridden(stack: Stack) -> None:
    user_id, product_id = await seed(stack)
    _, other_id = await seed(stack, stock=4)
    attempts = [
        ("PATCH", f"/v1/products/{product_id}", {"id": other_id, "name": "Hijacked"}),
        ("PATCH", f"/v1/products/{product_id}?product.id={other_id}", {"name": "Hijacked"}),
        ("GET", f"/v1/users/{user_id}?id=usr_other", None),
        ("POST", "/v1/orders/ord_a:cancel", {"id": "ord_b"}),
    ]
    for verb, path, body in attempts:
        status, error = await rest(stack, verb, path, body)
        assert (status, error["code"]) == (400, 3), (path, error)
        violations = error["details"][0]["fieldViolations"]
        assert violations[0]["field"] in {"id", "product.id"}
    for pid in (product_id, other_id):
        _, product = await rest(stack, "GET", f"/v1/products/{pid}")
        assert product["product"]["name"] == "Mug"


@pytest.mark.parametrize(
    ("verb", "path", "body", "status", "code"),
    [
        ("GET", "/v1/users/usr_missing", None, 404, 5),
        ("POST", "/v1/users", {"email": "bad", "displayName": ""}, 400, 3),
        ("POST", "/v1/users", '{"email": ', 400, 3),
        ("POST", "/v1/users", {"email": "a@b.io", "displayName": "A", "bogus": 1}, 400, 3),
        ("POST", "/v1/users", {"email": 5, "displayName": "A"}, 400, 3),
        ("GET", "/v1/users?page_size=0", None, 400, 3),
        ("GET", "/v1/users?page_size=abc", None, 400, 3),
        ("GET", "/v1/nothing-here", None, 404, 5),
        ("DELETE", "/v1/users/usr_1", None, 405, 12),
    ],
    ids=[
        "unknown_id",
        "invalid",
        "malformed_json",
        "unknown_field",
        "wrong_type",
        "page_size_0",
        "page_size_text",
        "no_route",
        "wrong_method",
    ],
)
async def test_errors_are_google_rpc_status_with_the_right_http_status(
    stack: Stack, verb: str, path: str, body: Any, status: int, code: int
) -> None:
    got_status, error = await rest(stack, verb, path, body)
    assert (got_status, error["code"]) == (status, code), error
    assert error["message"]
    _, listed = await rest(stack, "GET", "/v1/users")
    assert listed.get("users", []) == [], "nothing was written"


async def test_oversized_bodies_are_413(stack: Stack) -> None:
    big = json.dumps({"email": "a@b.io", "displayName": "x" * (2 << 20)})
    path = stack.mesh.data_dir / "big.json"
    path.write_text(big)
    status, error = await asyncio.to_thread(
        curl, "-X", "POST", f"{stack.url}/v1/users", "-H", JSON, "--data-binary", f"@{path}"
    )
    assert (status, error["code"]) == (413, 3)


async def test_server_sent_events_stream_new_notifications(stack: Stack) -> None:
    user_id, product_id = await seed(stack)
    sse = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-N",
        "-m",
        "10",
        "-H",
        tokens.ADMIN_HEADER,
        f"{stack.url}/v1/users/{user_id}/notifications:stream",
        stdout=subprocess.PIPE,
    )
    assert sse.stdout is not None
    hub = stack.mesh.services["notification"].parts.hub
    await eventually(lambda: hub.open_streams == 1, "the stream is open before the order")
    status, placed = await rest(
        stack,
        "POST",
        "/v1/orders",
        {
            "userId": user_id,
            "idempotencyKey": "sse-1",
            "items": [{"productId": product_id, "quantity": 1}],
        },
    )
    assert status == 200
    try:
        line = await asyncio.wait_for(sse.stdout.readline(), 5)
    finally:
        sse.kill()
        await sse.wait()
    assert line.startswith(b"data: ")
    event = json.loads(line[len(b"data: ") :])
    assert event["notification"]["orderId"] == placed["order"]["id"]
    assert event["cursor"]
