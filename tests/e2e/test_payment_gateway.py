"""The payment service behind the gateway: the owner reads their payments over REST and
Connect, another user is refused, and PaymentInternalService is not exposed at all."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from shop.common.v1 import money_pb2
from shop.payment.v1 import payment_internal_pb2
from tests import tokens
from tests.e2e.conftest import Stack, curl


async def get(stack: Stack, path: str, token: str | None) -> tuple[int, Any]:
    return await asyncio.to_thread(curl, f"{stack.url}{path}", token=token)


async def test_owners_read_their_payments_through_the_gateway(stack: Stack) -> None:
    ann, bob = await stack.mesh.user(), await stack.mesh.user()
    reply = await stack.mesh.payment_internal.Authorize(
        payment_internal_pb2.AuthorizeRequest(
            order_id="ord_gateway",
            user_id=ann.id,
            amount=money_pb2.Money(currency_code="EUR", amount_minor=1299),
            payment_method="card_approve",
        )
    )
    payment = reply.payment
    as_ann, as_bob = tokens.token(ann.id), tokens.token(bob.id)

    status, body = await get(stack, f"/v1/payments/{payment.id}", as_ann)
    assert status == 200, body
    assert (body["payment"]["id"], body["payment"]["state"]) == (
        payment.id,
        "PAYMENT_STATE_AUTHORIZED",
    )
    assert body["payment"]["amount"] == {"currencyCode": "EUR", "amountMinor": "1299"}
    status, listed = await get(stack, f"/v1/users/{ann.id}/payments?orderId=ord_gateway", as_ann)
    assert status == 200 and [p["id"] for p in listed["payments"]] == [payment.id]
    connect = await asyncio.to_thread(
        curl,
        "-X",
        "POST",
        f"{stack.url}/shop.payment.v1.PaymentService/GetPayment",
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps({"id": payment.id}),
        token=as_ann,
    )
    assert connect == (200, body)

    # Another user's payment is refused; no token, no payment.
    status, refused = await get(stack, f"/v1/payments/{payment.id}", as_bob)
    assert status == 403, refused
    status, _ = await get(stack, f"/v1/users/{ann.id}/payments", as_bob)
    assert status == 403
    status, _ = await get(stack, f"/v1/payments/{payment.id}", None)
    assert status == 401

    # The internal service is not served at the edge, even to an administrator.
    status, _ = await asyncio.to_thread(
        curl,
        "-X",
        "POST",
        f"{stack.url}/shop.payment.v1.PaymentInternalService/Void",
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps({"orderId": "ord_gateway"}),
    )
    assert status == 404
    status, body = await get(stack, f"/v1/payments/{payment.id}", as_ann)
    assert body["payment"]["state"] == "PAYMENT_STATE_AUTHORIZED"
